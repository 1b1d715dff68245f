"""The training state and the one training step every model uses.

``make_step(loss_fn, optimizer)`` returns ``step(state, batch, key) -> (state,
metrics)``: loss, gradient, optax update and metrics in one XLA computation.
A model trained by several optimizers (InfoMax-VAE's encoder/decoder and
critic) passes ``phases``: a sequence of :class:`Phase`, each a loss, an optax
transformation and the top-level parameter group it trains, applied in order
inside the same step (phase k's loss is evaluated at the parameters phase k−1
has just updated). ``TrainState.opt_state`` is then ``{phase.name: state}``.

The epoch: a loss with a keyword parameter ``epoch`` (e.g.
``aet.disentangledbetavae.loss``, whose capacity is annealed over epochs) is
called with the current epoch. ``step(state, batch, key, epoch)`` passes it
on; ``fit`` gives every epoch's index as an ``int32`` array, a traced value,
so the epoch's scan is compiled once for the whole run. Losses without the
parameter never see it, and ``epoch=None`` (the default) calls every loss as
``loss_fn(variables, x, key)``.

Training policies are optax-style: the non-finite guard (``accept``) decides
from the step's metrics before the update and runs the optax update under
``lax.cond`` (a multi-phase step selects the old or new state with
``optax.tree.where``); :func:`scale_by_lr_factor` is a
``GradientTransformation`` holding the learning-rate factor that
``fit(on_nonfinite="skip")`` lowers.
"""
from __future__ import annotations

import functools
import inspect
from typing import Any, Callable, NamedTuple, Optional, Sequence

import jax
import jax.numpy as jnp
import optax

from . import devices

Variables = Any
Metrics = dict[str, jax.Array]
LossFn = Callable[..., Any]
Step = Callable[..., tuple["TrainState", Metrics]]  # step(state, batch, key[, epoch])


class TrainState(NamedTuple):
    """Training state (a pytree).

    ``params``: the trainable ``"params"`` collection; ``opt_state``: the optax
    state (``{phase.name: state}`` for a multi-phase step); ``step``: the
    number of applied updates; ``collections``: every other variable
    collection (e.g. RHVAE's stored metric), or ``{}``.
    """

    params: Any
    opt_state: Any
    step: jax.Array
    collections: Any = None

    @property
    def variables(self) -> Variables:
        return {**(self.collections or {}), "params": self.params}


class Phase(NamedTuple):
    """One gradient update inside a training step of a multi-optimizer model.

    ``name``: the key of its optimizer state in ``TrainState.opt_state``; every
    phase after the first reports its loss and gradient norm as
    ``{name}_loss`` and ``{name}_grad_norm``. ``loss_fn(variables, x, key)``:
    its loss; ``optimizer``: its optax transformation; ``group``: the
    top-level key of ``params`` it trains (the gradient is taken w.r.t.
    ``params[group]`` only), or ``None`` for every key that no other phase names.
    """

    name: str
    loss_fn: LossFn
    optimizer: optax.GradientTransformation
    group: Optional[str] = None


def _claimed(phases: Sequence[Phase]) -> tuple[str, ...]:
    return tuple(p.group for p in phases if p.group is not None)


def _select(phase: Phase, claimed: tuple[str, ...], params: Any) -> Any:
    """The parameters ``phase`` trains (all of them when no phase names a group)."""
    if phase.group is not None:
        return params[phase.group]
    if not claimed:
        return params
    return {k: v for k, v in params.items() if k not in claimed}


def _merge(phase: Phase, claimed: tuple[str, ...], params: Any, sub: Any) -> Any:
    """``params`` with the part ``phase`` trains replaced by ``sub`` (inverse of :func:`_select`)."""
    if phase.group is not None:
        return {**params, phase.group: sub}
    if not claimed:
        return sub
    return {**sub, **{k: params[k] for k in claimed}}


def _phases(loss_fn: Optional[LossFn], optimizer: Any, phases: Optional[Sequence[Phase]]) -> tuple[Phase, ...]:
    """``phases``, or the single phase ``loss_fn`` with ``optimizer`` on every parameter."""
    if phases is None:
        return (Phase("", loss_fn, optimizer),)
    if loss_fn is not None or optimizer is not None:
        raise ValueError("pass either `loss_fn` and `optimizer` or `phases`, not both")
    phases = tuple(phases)
    if not phases or not all(isinstance(p, Phase) for p in phases):
        raise TypeError("`phases` must be a non-empty sequence of aet.train.Phase")
    return phases


def init_state(
    variables: Variables, optimizer: Optional[optax.GradientTransformation] = None, *,
    phases: Optional[Sequence[Phase]] = None,
) -> TrainState:
    """A fresh ``TrainState`` for ``variables`` (the output of ``model.init``).

    Args:
        variables: the model's variables; ``"params"`` are trained, every other
            collection is kept in ``collections``.
        optimizer: the optax transformation of a single-phase step.
        phases: instead of ``optimizer``, the phases of a multi-phase step; the
            optimizer state is then ``{phase.name: phase.optimizer.init(params of its group)}``.

    Returns:
        The state at step 0.
    """
    params = variables["params"]
    rest = {k: v for k, v in variables.items() if k != "params"}
    if phases is None:
        opt_state = optimizer.init(params)
    else:
        ps = _phases(None, None, phases)
        claimed = _claimed(ps)
        opt_state = {p.name: p.optimizer.init(_select(p, claimed, params)) for p in ps}
    return TrainState(params, opt_state, jnp.zeros((), jnp.int32), rest)


def takes_keyword(fn: Callable, name: str) -> bool:
    """Whether ``fn`` has a parameter called ``name`` (``False`` when its signature cannot be read).

    Args:
        fn: a callable (a function, a ``functools.partial``, a jitted function).
        name: the parameter's name, e.g. ``"aux"`` or ``"epoch"``.

    Returns:
        ``True`` when ``name`` is one of ``fn``'s named parameters (``**kwargs`` does not count).
    """
    try:
        return name in inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return False


def with_aux(loss_fn: LossFn) -> Callable[..., tuple[jax.Array, Metrics]]:
    """Wrap ``loss_fn(variables, x, key)`` so it returns ``(loss, metrics)``.

    A loss that accepts ``aux`` is called with ``aux=True``; its metrics dict is
    kept. Any other loss gives ``{"loss": loss}``. A loss with an ``epoch``
    parameter is called with ``epoch=epoch`` when the wrapper gets one.

    Args:
        loss_fn: ``loss_fn(variables, x, key)``, optionally with ``aux`` and ``epoch`` keywords.

    Returns:
        ``wrapped(variables, x, key, epoch=None) -> (loss, metrics)`` with ``metrics["loss"]`` the loss.
    """
    fn = functools.partial(loss_fn, aux=True) if takes_keyword(loss_fn, "aux") else loss_fn
    takes_epoch = takes_keyword(loss_fn, "epoch")

    def wrapped(variables: Variables, x: jax.Array, key: jax.Array, epoch: Any = None) -> tuple[jax.Array, Metrics]:
        out = fn(variables, x, key) if epoch is None or not takes_epoch else fn(variables, x, key, epoch=epoch)
        if isinstance(out, tuple):
            loss, metrics = out
            return loss, {"loss": loss, **dict(metrics)}
        return out, {"loss": out}

    return wrapped


def all_finite(tree: Any) -> jax.Array:
    """True when every leaf of ``tree`` is finite (a traced boolean)."""
    leaves = [jnp.all(jnp.isfinite(leaf)) for leaf in jax.tree_util.tree_leaves(tree)]
    return jnp.all(jnp.stack(leaves)) if leaves else jnp.array(True)


def guarded(new: TrainState, old: TrainState, ok: jax.Array) -> TrainState:
    """``new`` where ``ok`` else ``old``, leaf by leaf (``optax.tree.where``; no host sync)."""
    return optax.tree.where(ok, new, old)


class LRScaleState(NamedTuple):
    """State of :func:`scale_by_lr_factor`: the current learning-rate factor (a scalar)."""

    scale: jax.Array


def scale_by_lr_factor() -> optax.GradientTransformation:
    """Multiply updates by a factor kept in the optimizer state (1 at the start).

    ``fit(..., on_nonfinite="skip")`` chains it after the user's optimizer and
    multiplies the factor by ``nonfinite_factor`` at every skipped step, which
    lowers the effective learning rate of any optax optimizer. (optax's
    ``inject_hyperparams`` needs the optimizer's factory, not an optimizer;
    ``scale_by_schedule`` scales by a function of the step count, not by an
    event-driven factor.)
    """

    def init(params: Any) -> LRScaleState:
        return LRScaleState(jnp.ones((), jnp.float32))

    def update(updates: Any, state: LRScaleState, params: Any = None) -> tuple[Any, LRScaleState]:
        return jax.tree_util.tree_map(lambda u: u * state.scale.astype(u.dtype), updates), state

    return optax.GradientTransformation(init, update)


def _is_scale(node: Any) -> bool:
    return isinstance(node, LRScaleState)


def scale_lr(state: TrainState, factor: Any) -> TrainState:
    """``state`` with every :class:`LRScaleState` in its optimizer state multiplied by ``factor``."""
    opt_state = jax.tree_util.tree_map(
        lambda n: LRScaleState(n.scale * factor) if _is_scale(n) else n, state.opt_state, is_leaf=_is_scale
    )
    return state._replace(opt_state=opt_state)


def lr_scales(state: TrainState) -> list[jax.Array]:
    """Every learning-rate factor of :func:`scale_by_lr_factor` in ``state``'s optimizer state (on the device)."""
    return [n.scale for n in jax.tree_util.tree_leaves(state.opt_state, is_leaf=_is_scale) if _is_scale(n)]


def lr_scale(state: TrainState) -> Optional[float]:
    """The smallest learning-rate factor in ``state`` (``None`` without ``scale_by_lr_factor``)."""
    found = jax.device_get(lr_scales(state))
    return min(float(v) for v in found) if found else None


class _PhaseOut(NamedTuple):
    loss: jax.Array
    metrics: Metrics
    grads: Any


class _Phases(NamedTuple):
    """A step's phases as two functions: ``gradient(i, ...)`` of phase i, and its update ``apply(i, ...)``."""

    gradient: Callable[..., _PhaseOut]
    apply: Callable[..., TrainState]


def _phase_fns(phases: tuple[Phase, ...], axis_name: Optional[str], plain: bool) -> _Phases:
    """The gradient and the optax update of each phase.

    ``gradient(i, state, batch, key, epoch) -> _PhaseOut``: phase i's loss, aux
    metrics and gradient (averaged over ``axis_name``) at ``state.params``.
    ``apply(i, state, grads) -> state``: phase i's optax update of its parameter group.
    ``plain``: the single phase of ``make_step(loss_fn, optimizer)``, whose optimizer
    state is ``opt_state`` itself rather than ``opt_state[name]``.
    """
    claimed = _claimed(phases)

    def grad_fn(phase: Phase) -> Callable:
        loss_aux = with_aux(phase.loss_fn)

        def objective(sub: Any, params: Any, collections: Any, x: jax.Array, key: jax.Array, epoch: Any):
            return loss_aux({**(collections or {}), "params": _merge(phase, claimed, params, sub)}, x, key, epoch)

        return jax.value_and_grad(objective, has_aux=True)

    grads_of = [grad_fn(p) for p in phases]

    def gradient(i: int, state: TrainState, batch: jax.Array, key: jax.Array, epoch: Any = None) -> _PhaseOut:
        sub = _select(phases[i], claimed, state.params)
        (loss, metrics), grads = grads_of[i](sub, state.params, state.collections, batch, key, epoch)
        if axis_name is not None:
            grads = jax.lax.pmean(grads, axis_name)
        return _PhaseOut(loss, metrics, grads)

    def apply(i: int, state: TrainState, grads: Any) -> TrainState:
        phase = phases[i]
        sub = _select(phase, claimed, state.params)
        opt_state = state.opt_state if plain else state.opt_state[phase.name]
        updates, opt_state = phase.optimizer.update(grads, opt_state, sub)
        params = _merge(phase, claimed, state.params, optax.apply_updates(sub, updates))
        return state._replace(params=params, opt_state=opt_state if plain else {**state.opt_state, phase.name: opt_state})

    return _Phases(gradient, apply)


def _step_metrics(phases: tuple[Phase, ...], outs: list[_PhaseOut], axis_name: Optional[str]) -> Metrics:
    """The first phase's loss and aux terms, ``{name}_loss`` of the others (averaged over ``axis_name``),
    every phase's gradient norm (``grad_norm``, ``{name}_grad_norm``) and ``finite``."""
    metrics = dict(outs[0].metrics)
    for phase, out in zip(phases[1:], outs[1:]):
        metrics[f"{phase.name}_loss"] = out.loss
    if axis_name is not None:
        metrics = jax.lax.pmean(metrics, axis_name)
    ok = jnp.isfinite(metrics["loss"])
    for i, (p, o) in enumerate(zip(phases, outs)):
        norm = optax.tree.norm(o.grads)
        ok = ok & jnp.isfinite(norm) & (jnp.isfinite(metrics[f"{p.name}_loss"]) if i else True)
        metrics[f"{p.name}_grad_norm" if i else "grad_norm"] = norm
    metrics["finite"] = ok.astype(jnp.float32)
    return metrics


Accept = Callable[[Metrics], tuple[jax.Array, Metrics]]


def accept_finite(metrics: Metrics) -> tuple[jax.Array, Metrics]:
    """The guard's decision: apply the update when the step's ``finite`` metric is 1."""
    return metrics["finite"] > 0, metrics


def make_step(
    loss_fn: Optional[LossFn] = None,
    optimizer: Optional[optax.GradientTransformation] = None,
    *,
    jit: bool = True,
    guard: bool = True,
    axis_name: Optional[str] = None,
    mesh: Any = None,
    phases: Optional[Sequence[Phase]] = None,
) -> Step:
    """One training step: ``step(state, batch, key, epoch=None) -> (state, metrics)``.

    Computes the loss and its gradient with respect to ``state.params``,
    applies the optax update, and returns metrics (``loss``, the loss's aux
    terms, ``grad_norm`` and ``finite``). ``finite`` is 1 when the loss and the
    gradient's global norm ‖g‖₂ are finite (a NaN or inf in any gradient leaf
    makes the norm NaN or inf; a finite gradient whose Σg² overflows float32,
    |g| ≳ 1.8e19, counts as non-finite too). With ``guard`` a non-finite step
    leaves the state unchanged. With
    ``axis_name`` (inside ``pmap``/``shard_map``) the device's index along
    that axis is folded into ``key`` (independent noise on each shard) and
    gradients and metrics are averaged over the axis with ``lax.pmean``.
    With ``mesh`` (a ``jax.sharding.Mesh``) the batch is split over the
    mesh's first axis (``aet.parallel.batch_sharding``) and the loss is the
    mean over the global batch; a batch size not divisible by that axis
    raises ``ValueError``. ``epoch`` (an int or a traced integer) reaches every
    loss that has an ``epoch`` parameter (:func:`with_aux`).

    The unjitted step (``jit=False``) also takes ``accept``, a function
    ``accept(metrics) -> (ok, metrics)`` called with the step's metrics before
    the update (``make_epoch`` passes its non-finite and divergence policy this
    way); ``guard`` alone is ``accept=accept_finite``. A single-phase step
    decides first and runs the optax update under ``lax.cond(ok, ...)``: the
    rejected branch returns the state itself, so no per-parameter selection of
    the old or new state is computed (at MNIST size that selection, a pass over
    the parameters and both Adam moments, made a bare step 1.25× as long on one
    CPU core; ``benchmarks/guard_cost.py``). With several phases (each phase's loss is evaluated after the
    previous update) the phases all run and the state is then selected by ``ok``.

    Args:
        loss_fn: ``loss_fn(variables, x, key)``, a scalar (or ``(loss, metrics)`` with ``aux=True``).
        optimizer: an optax transformation of every parameter.
        jit: return the step jitted (the jitted step has no ``accept`` parameter).
        guard: keep the old state when a loss or gradient is non-finite.
        axis_name: the mapped axis to average over (``pmap``).
        mesh: shard the batch over this mesh's first axis.
        phases: instead of ``loss_fn`` and ``optimizer``, a multi-optimizer
            model's :class:`Phase` sequence, run in order. With two or more
            phases ``key`` is split into one key per phase; the metrics are the first phase's, plus
            ``{name}_loss`` and ``{name}_grad_norm`` of the others, and
            ``finite`` covers every phase's loss and gradient.

    Returns:
        ``step(state, batch, key, epoch=None) -> (state, metrics)``.
    """
    ps, plain = _phases(loss_fn, optimizer, phases), phases is None
    fns = _phase_fns(ps, axis_name, plain)
    batch_spec = None if mesh is None else devices.batch_sharding(mesh)

    def gated(state: TrainState, batch: jax.Array, key: jax.Array, epoch: Any, accept: Accept):
        out = fns.gradient(0, state, batch, key, epoch)
        ok, metrics = accept(_step_metrics(ps, [out], axis_name))

        def update(s: TrainState) -> TrainState:
            return fns.apply(0, s, out.grads)._replace(step=s.step + 1)

        return jax.lax.cond(ok, update, lambda s: s, state), metrics

    def step(state: TrainState, batch: jax.Array, key: jax.Array, epoch: Any = None, *,
             accept: Optional[Accept] = None) -> tuple[TrainState, Metrics]:
        if mesh is not None:
            devices.check_batch_size(int(jnp.shape(batch)[0]), mesh, "batch")
            batch = jax.lax.with_sharding_constraint(batch, batch_spec)
        if axis_name is not None:
            key = jax.random.fold_in(key, jax.lax.axis_index(axis_name))
        accept = accept_finite if accept is None and guard else accept
        if len(ps) == 1 and accept is not None:
            return gated(state, batch, key, epoch, accept)
        keys = [key] if len(ps) == 1 else list(jax.random.split(key, len(ps)))
        new, outs = state, []
        for i, k in enumerate(keys):
            outs.append(fns.gradient(i, new, batch, k, epoch))
            new = fns.apply(i, new, outs[-1].grads)
        new = new._replace(step=state.step + 1)
        metrics = _step_metrics(ps, outs, axis_name)
        if accept is not None:
            ok, metrics = accept(metrics)
            new = guarded(new, state, ok)
        return new, metrics

    if not jit:
        return step
    return jax.jit(lambda state, batch, key, epoch=None: step(state, batch, key, epoch))


class Trainer(NamedTuple):
    """How ``fit`` trains one kind of model.

    ``init(variables) -> TrainState``; ``step(state, batch, key) -> (state,
    metrics)`` (not jitted: ``fit`` compiles it inside the epoch scan; a step
    with an ``epoch`` parameter, as ``make_step``'s has, gets the epoch; not
    guarded itself: a step with an ``accept`` parameter, as ``make_step``'s has,
    gets the epoch's non-finite policy through it and applies only accepted
    updates; the epoch selects the old or new state of any other step by its
    ``finite`` metric);
    ``end_epoch(state, x) -> state`` runs after every epoch (e.g. RHVAE's
    metric update; :func:`identity_end` by default, which ``fit`` skips).
    """

    init: Callable[[Variables], TrainState]
    step: Step
    end_epoch: Callable[[TrainState, jax.Array], TrainState]


def identity_end(state: TrainState, x: jax.Array) -> TrainState:
    """The end-of-epoch update of a model that has none: ``state`` unchanged."""
    return state


__all__ = [
    "TrainState",
    "Phase",
    "Trainer",
    "init_state",
    "with_aux",
    "takes_keyword",
    "all_finite",
    "guarded",
    "LRScaleState",
    "scale_by_lr_factor",
    "scale_lr",
    "lr_scale",
    "lr_scales",
    "make_step",
    "accept_finite",
    "identity_end",
]
