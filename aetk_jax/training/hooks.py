"""Which models change training, and how: ``make_trainer`` and its registrations.

``make_trainer(model, loss_fn, optimizer) -> Trainer`` is a single-dispatch
function on the model's type. The default trains every parameter with
``optimizer`` through ``make_step`` and does nothing after an epoch. The
models registered here, and only these, train differently:

* ``RHVAE`` — after every epoch the stored metric (centroids cᵢ and matrices
  Mᵢ) is recomputed from centroid data chosen on the whole training set
  (``rhvae.select_centroid_data`` then ``rhvae.update_metric``).
* ``InfoMaxVAE`` — two phases of one step (:class:`aet.train.Phase`): the
  encoder/decoder on ``loss_fn`` with the ``"vae"`` optimizer, then the critic
  (``params["mi_network"]``) on ``infomaxvae.mi_loss`` with the ``"mi"``
  optimizer, at the encoder just updated.

The model modules never import the training layer: this module imports them.
A user's model registers its own with ``@aet.train.make_trainer.register(MyModel)``.
"""
from __future__ import annotations

import functools
from typing import Any, Mapping

import flax.linen as nn
import jax

from .. import infomaxvae, rhvae
from .step import LossFn, Phase, Trainer, TrainState, identity_end, init_state, make_step


@functools.singledispatch
def make_trainer(model: nn.Module, loss_fn: LossFn, optimizer: Any) -> Trainer:
    """The ``Trainer`` ``fit`` uses for ``model``.

    Args:
        model: the flax module (dispatched on its type).
        loss_fn: ``loss_fn(variables, x, key)``.
        optimizer: an optax transformation (a model with several phases may take a dict).

    Returns:
        ``Trainer(init, step, end_epoch)``; the step is not jitted.
    """
    return Trainer(
        init=lambda variables: init_state(variables, optimizer),
        step=make_step(loss_fn, optimizer, jit=False),
        end_epoch=identity_end,
    )


@make_trainer.register(rhvae.RHVAE)
def _rhvae_trainer(model: rhvae.RHVAE, loss_fn: LossFn, optimizer: Any) -> Trainer:
    """The default trainer plus, after every epoch, the metric update from centroid data
    chosen by ``rhvae.select_centroid_data`` on the whole training set ``x``."""
    base = make_trainer.dispatch(object)(model, loss_fn, optimizer)

    def end_epoch(state: TrainState, x: jax.Array) -> TrainState:
        variables = state.variables
        new = rhvae.update_metric(model, variables, rhvae.select_centroid_data(model, variables, x))
        return state._replace(collections={k: v for k, v in new.items() if k != "params"})

    return Trainer(base.init, base.step, end_epoch)


def infomax_optimizers(optimizer: Any, mi_optimizer: Any = None) -> tuple[Any, Any]:
    """The InfoMax-VAE's (encoder/decoder, critic) optimizers.

    Args:
        optimizer: one optax transformation (for both groups, separate states) or
            ``{"vae": opt, "mi": opt}``.
        mi_optimizer: the critic's, when ``optimizer`` is one transformation.

    Returns:
        ``(vae_optimizer, mi_optimizer)``; ``ValueError``/``TypeError`` for other arguments.
    """
    if isinstance(optimizer, Mapping):
        if set(optimizer) != {"vae", "mi"}:
            raise ValueError(
                f"`optimizer` as a dict must have exactly the keys 'vae' and 'mi', got {sorted(optimizer)}"
            )
        if mi_optimizer is not None:
            raise ValueError(
                "give the critic's optimizer either in the `optimizer` dict or as `mi_optimizer`, not both"
            )
        opt, mi_opt = optimizer["vae"], optimizer["mi"]
    else:
        opt, mi_opt = optimizer, (optimizer if mi_optimizer is None else mi_optimizer)
    for name, o in (("optimizer", opt), ("mi_optimizer", mi_opt)):
        if not (hasattr(o, "init") and hasattr(o, "update")):
            raise TypeError(f"`{name}` must be an optax.GradientTransformation, got {type(o).__name__}")
    return opt, mi_opt


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
    phases = infomax_phases(model, loss_fn, optimizer)
    return Trainer(
        init=lambda variables: init_state(variables, phases=phases),
        step=make_step(phases=phases, jit=False),
        end_epoch=identity_end,
    )


__all__ = ["make_trainer", "infomax_optimizers", "infomax_phases"]
