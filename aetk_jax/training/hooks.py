"""Which models change training, and how: ``make_trainer`` and its registrations.

``make_trainer(model, loss_fn, optimizer) -> Trainer`` is a single-dispatch
function on the model's type. The default trains every parameter with
``optimizer`` through ``make_step`` and does nothing after an epoch. The
models registered here, and only these, train differently:

* ``RHVAE`` — after every epoch the stored metric (centroids cᵢ and matrices
  Mᵢ) is recomputed from centroid data chosen on the whole training set
  (``rhvae.select_centroid_data`` then ``rhvae.update_metric``; for a conditional
  RHVAE the training set is the pair (x, y), and the centroids are chosen pairs).
* ``InfoMaxVAE`` — two phases of one step (:class:`aet.train.Phase`): the
  encoder/decoder on ``loss_fn`` with the ``"vae"`` optimizer, then the critic
  (``params["mi_network"]``) on ``infomaxvae.mi_loss`` with the ``"mi"``
  optimizer, at the encoder just updated.
* ``FactorVAE``, ``AAE`` — two phases: the autoencoder (``"autoencoder"``), then
  the discriminator (``params["discriminator"]``, ``"discriminator"``);
  ``VAEGAN`` — three: ``"encoder"``, ``"decoder"``, ``"discriminator"``
  (:func:`adversarial_phases`). A dict optimizer is keyed by the phase names
  (:func:`phase_optimizers`, shared with InfoMax-VAE).
* ``VQVAE``, ``HRQVAE`` with ``use_ema`` or ``restart_after`` — after every
  step the EMA codebook update and dead-code restarts of
  ``vqvae.codebook_update`` (non-trainable collections ``"vq_ema"``, ``"vq_usage"``).

The model modules never import the training layer: this module imports them.
A user's model registers its own with ``@aet.train.make_trainer.register(MyModel)``.
"""
from __future__ import annotations

import functools
from typing import Any, Mapping, Sequence

import flax.linen as nn
import jax

from .. import aae, factorvae, infomaxvae, rhvae, vaegan
from .step import LossFn, Phase, Trainer, TrainState, identity_end, init_state, make_step


@functools.singledispatch
def make_trainer(model: nn.Module, loss_fn: LossFn, optimizer: Any) -> Trainer:
    """The ``Trainer`` ``fit`` uses for ``model``.

    Args:
        model: the flax module (dispatched on its type).
        loss_fn: ``loss_fn(variables, x, key)``.
        optimizer: an optax transformation (a model with several phases may take a dict).

    Returns:
        ``Trainer(init, step, end_epoch)``; the step is not jitted and not guarded
        (``make_step(..., guard=False)``: ``make_epoch``'s non-finite policy keeps or
        skips each step by its ``finite`` metric, so the state is selected once per step).
    """
    return Trainer(
        init=lambda variables: init_state(variables, optimizer),
        step=make_step(loss_fn, optimizer, jit=False, guard=False),
        end_epoch=identity_end,
    )


@make_trainer.register(rhvae.RHVAE)
def _rhvae_trainer(model: rhvae.RHVAE, loss_fn: LossFn, optimizer: Any) -> Trainer:
    """The default trainer plus, after every epoch, the metric update from centroid data
    chosen by ``rhvae.select_centroid_data`` on the whole training set ``x`` (the pair ``(x, y)``
    for a conditional model: codes μ(x, y), factors L_ψ(x, y)); its k-means key is
    ``rhvae.centroid_key(variables, state.step)`` (the stored seed comes from the init key, so
    from ``fit``'s ``key``; a function of the state, so a resumed run picks the same centroids)."""
    base = make_trainer.dispatch(object)(model, loss_fn, optimizer)

    def end_epoch(state: TrainState, x: Any) -> TrainState:
        variables = state.variables
        key = rhvae.centroid_key(variables, state.step)
        new = rhvae.update_metric(model, variables, rhvae.select_centroid_data(model, variables, x, key))
        return state._replace(collections={k: v for k, v in new.items() if k != "params"})

    return Trainer(base.init, base.step, end_epoch)


def _check_transformation(opt: Any, name: str) -> None:
    if not (hasattr(opt, "init") and hasattr(opt, "update")):
        raise TypeError(f"`{name}` must be an optax.GradientTransformation, got {type(opt).__name__}")


def phase_optimizers(optimizer: Any, names: Sequence[str]) -> dict[str, Any]:
    """The optax transformation of each phase of a multi-optimizer model.

    Args:
        optimizer: one optax transformation (every phase uses it, each with its
            own state) or a dict with exactly the keys ``names``.
        names: the phases' names.

    Returns:
        ``{name: transformation}``; ``ValueError`` for a dict with other keys, ``TypeError`` for a non-transformation.
    """
    if isinstance(optimizer, Mapping):
        if set(optimizer) != set(names):
            wanted = ", ".join(repr(n) for n in names)
            raise ValueError(f"`optimizer` as a dict must have exactly the keys {wanted}, got {sorted(optimizer)}")
        opts = {n: optimizer[n] for n in names}
    else:
        opts = {n: optimizer for n in names}
    for n, o in opts.items():
        _check_transformation(o, f"optimizer[{n!r}]" if isinstance(optimizer, Mapping) else "optimizer")
    return opts


def phased_trainer(phases: Sequence[Phase]) -> Trainer:
    """The ``Trainer`` of a multi-optimizer model: its phases in one step, nothing after an epoch.

    Args:
        phases: the :class:`Phase` sequence of ``make_step(phases=...)``.

    Returns:
        ``Trainer(init, step, identity_end)`` (the step not jitted).
    """
    return Trainer(
        init=lambda variables: init_state(variables, phases=phases),
        step=make_step(phases=phases, jit=False, guard=False),
        end_epoch=identity_end,
    )


def infomax_optimizers(optimizer: Any, mi_optimizer: Any = None) -> tuple[Any, Any]:
    """The InfoMax-VAE's (encoder/decoder, critic) optimizers.

    Args:
        optimizer: one optax transformation (for both groups, separate states) or
            ``{"vae": opt, "mi": opt}``.
        mi_optimizer: the critic's, when ``optimizer`` is one transformation.

    Returns:
        ``(vae_optimizer, mi_optimizer)``; ``ValueError``/``TypeError`` for other arguments.
    """
    if isinstance(optimizer, Mapping) and mi_optimizer is not None:
        raise ValueError("give the critic's optimizer either in the `optimizer` dict or as `mi_optimizer`, not both")
    opts = phase_optimizers(optimizer, ("vae", "mi"))
    if mi_optimizer is not None:
        _check_transformation(mi_optimizer, "mi_optimizer")
        opts["mi"] = mi_optimizer
    return opts["vae"], opts["mi"]


def infomax_phases(model: infomaxvae.InfoMaxVAE, loss_fn: LossFn, optimizer: Any, mi_optimizer: Any = None
                   ) -> tuple[Phase, Phase]:
    """The two phases of an InfoMax-VAE step (the Julia package's order).

    Args:
        model: the InfoMax-VAE (its critic loss is ``infomaxvae.mi_loss``).
        loss_fn: the encoder/decoder loss, e.g. ``partial(infomaxvae.loss, model)``.
        optimizer: see :func:`infomax_optimizers`.
        mi_optimizer: see :func:`infomax_optimizers`.

    Returns:
        ``(Phase("vae", loss_fn, ...), Phase("mi", mi_loss, ..., group="mi_network"))``.
    """
    opt, mi_opt = infomax_optimizers(optimizer, mi_optimizer)
    critic_loss = functools.partial(infomaxvae.mi_loss, model)
    return Phase("vae", loss_fn, opt), Phase("mi", critic_loss, mi_opt, group=infomaxvae.MI_GROUP)


@make_trainer.register(infomaxvae.InfoMaxVAE)
def _infomax_trainer(model: infomaxvae.InfoMaxVAE, loss_fn: LossFn, optimizer: Any) -> Trainer:
    """``fit``'s trainer: ``loss_fn`` trains the encoder/decoder, ``mi_loss`` the critic."""
    return phased_trainer(infomax_phases(model, loss_fn, optimizer))


def adversarial_phases(model: nn.Module, loss_fn: LossFn, optimizer: Any) -> tuple[Phase, ...]:
    """The phases of a FactorVAE, AAE or VAE-GAN step (each model module's docstring has the equations).

    FactorVAE and AAE: ``("autoencoder", loss_fn)`` on every parameter group but the
    discriminator's, then ``("discriminator", <module>.discriminator_loss)`` on
    ``params["discriminator"]``. VAE-GAN: ``("encoder", loss_fn)`` (the encoder and
    any prior), ``("decoder", loss_fn)`` on ``params["decoder"]`` (``vaegan.loss`` has
    each network's own gradient), then ``("discriminator", vaegan.discriminator_loss)``.

    Args:
        model: a ``FactorVAE``, ``AAE`` or ``VAEGAN``.
        loss_fn: the model's loss with its hyper-parameters bound, e.g. ``partial(aet.aae.loss, model)``.
        optimizer: one optax transformation or a dict keyed by the phase names (:func:`phase_optimizers`).

    Returns:
        The phases, in the order they run.
    """
    disc = aae.DISCRIMINATOR_GROUP
    if isinstance(model, vaegan.VAEGAN):
        opts = phase_optimizers(optimizer, ("encoder", "decoder", "discriminator"))
        return (Phase("encoder", loss_fn, opts["encoder"]),
                Phase("decoder", loss_fn, opts["decoder"], group="decoder"),
                Phase("discriminator", functools.partial(vaegan.discriminator_loss, model), opts["discriminator"],
                      group=disc))
    if not isinstance(model, (factorvae.FactorVAE, aae.AAE)):
        raise TypeError(f"`model` must be a FactorVAE, AAE or VAEGAN, got {type(model).__name__}")
    module = factorvae if isinstance(model, factorvae.FactorVAE) else aae
    opts = phase_optimizers(optimizer, ("autoencoder", "discriminator"))
    critic_loss = functools.partial(module.discriminator_loss, model)
    return Phase("autoencoder", loss_fn, opts["autoencoder"]), Phase("discriminator", critic_loss, opts["discriminator"],
                                                                      group=disc)


@make_trainer.register(factorvae.FactorVAE)
@make_trainer.register(aae.AAE)
@make_trainer.register(vaegan.VAEGAN)
def _adversarial_trainer(model: nn.Module, loss_fn: LossFn, optimizer: Any) -> Trainer:
    """``fit``'s trainer for FactorVAE, AAE and VAE-GAN: :func:`adversarial_phases` in one step."""
    return phased_trainer(adversarial_phases(model, loss_fn, optimizer))


# --------------------------------------------------------------------------- VQ-VAE / HRQ-VAE (@vq)
from .. import vqvae  # noqa: E402
from .step import guarded  # noqa: E402


@make_trainer.register(vqvae.VQVAE)
def _vq_trainer(model: vqvae.VQVAE, loss_fn: LossFn, optimizer: Any) -> Trainer:
    """The default step, then (with ``use_ema`` or ``restart_after``) the codebook update of
    ``vqvae.codebook_update`` from the step's batch at the variables before the step (skipped,
    like the gradient update, when the step is not finite); the restarts' key is folded from the step's."""
    base = make_trainer.dispatch(object)(model, loss_fn, optimizer)
    if not vqvae.has_codebook_updates(model):
        return base

    def step(state: TrainState, batch: jax.Array, key: jax.Array):
        new, metrics = base.step(state, batch, key)
        params, collections = vqvae.codebook_update(
            model, state.variables, new.params, batch, jax.random.fold_in(key, 0x5651))
        updated = new._replace(params=params, collections=collections)
        return guarded(updated, new, metrics["finite"] > 0), metrics

    return Trainer(base.init, step, base.end_epoch)


__all__ = ["make_trainer", "infomax_optimizers", "infomax_phases", "phase_optimizers", "phased_trainer",
           "adversarial_phases"]
