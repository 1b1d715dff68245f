"""Training: a jitted step, a whole epoch as one ``lax.scan``, and ``fit``.

``make_step(loss_fn, optimizer)`` returns ``step(state, batch, key) -> (state,
metrics)``: loss, gradients, optax update and metrics in one XLA computation.
``fit`` runs each epoch as a single compiled scan over shuffled batches and
keeps metrics on the device until the epoch ends, then syncs once (every
argument of the epoch keeps one pytree structure, so it compiles once). A
non-finite loss or gradient freezes the state at the last good step (inside the
scan, no host round-trip), and ``fit`` raises ``NonFiniteError`` at the end of
that epoch with the step and the terms that went non-finite. Data outside
the decoder's support are refused before training; Ctrl-C stops at the end of
the epoch with ``TrainingInterrupted``.

Model-specific training (RHVAE's metric update, InfoMaxVAE's second optimizer)
plugs in through ``make_trainer``, a single-dispatch function on the model's type.
"""
from __future__ import annotations

import functools
import inspect
import json
import math
import os
import signal
import threading
from typing import Any, Callable, NamedTuple, Optional, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from . import checkpoint as ckpt
from .decoders import check_support
from .validation import check_array, check_int, check_key, check_scalar

Variables = Any
Metrics = dict[str, jax.Array]
LossFn = Callable[..., Any]


class TrainState(NamedTuple):
    """Training state (a pytree).

    ``params``: the trainable ``"params"`` collection; ``opt_state``: the optax
    state; ``step``: the number of applied updates; ``collections``: every
    other variable collection (e.g. RHVAE's stored metric), or ``{}``.
    """

    params: Any
    opt_state: Any
    step: jax.Array
    collections: Any = None

    @property
    def variables(self) -> Variables:
        return {**(self.collections or {}), "params": self.params}


def init_state(variables: Variables, optimizer: optax.GradientTransformation) -> TrainState:
    """A fresh ``TrainState`` for ``variables`` (the output of ``model.init``)."""
    params = variables["params"]
    rest = {k: v for k, v in variables.items() if k != "params"}
    return TrainState(params, optimizer.init(params), jnp.zeros((), jnp.int32), rest)


def with_aux(loss_fn: LossFn) -> Callable[..., tuple[jax.Array, Metrics]]:
    """Wrap ``loss_fn(variables, x, key)`` so it returns ``(loss, metrics)``.

    A loss that accepts ``aux`` is called with ``aux=True``; its metrics dict is
    kept. Any other loss gives ``{"loss": loss}``.
    """
    try:
        takes_aux = "aux" in inspect.signature(loss_fn).parameters
    except (TypeError, ValueError):
        takes_aux = False
    fn = functools.partial(loss_fn, aux=True) if takes_aux else loss_fn

    def wrapped(variables: Variables, x: jax.Array, key: jax.Array) -> tuple[jax.Array, Metrics]:
        out = fn(variables, x, key)
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
    """``new`` where ``ok`` else ``old``, leaf by leaf (no host sync)."""
    return jax.tree_util.tree_map(lambda a, b: jnp.where(ok, a, b), new, old)


class LRScaleState(NamedTuple):
    """State of :func:`scale_by_lr_factor`: the current learning-rate factor (a scalar)."""

    scale: jax.Array


def scale_by_lr_factor() -> optax.GradientTransformation:
    """Multiply updates by a factor kept in the optimizer state (1 at the start).

    ``fit(..., on_nonfinite="skip")`` chains it after the user's optimizer and
    multiplies the factor by ``nonfinite_factor`` at every skipped step, which
    lowers the effective learning rate of any optax optimizer.
    """

    def init(params: Any) -> LRScaleState:
        return LRScaleState(jnp.ones((), jnp.float32))

    def update(updates: Any, state: LRScaleState, params: Any = None) -> tuple[Any, LRScaleState]:
        return jax.tree_util.tree_map(lambda u: u * state.scale.astype(u.dtype), updates), state

    return optax.GradientTransformation(init, update)


def _is_scale(node: Any) -> bool:
    return isinstance(node, LRScaleState)


def scale_lr(state: "TrainState", factor: Any) -> "TrainState":
    """``state`` with every :class:`LRScaleState` in its optimizer state multiplied by ``factor``."""
    opt_state = jax.tree_util.tree_map(
        lambda n: LRScaleState(n.scale * factor) if _is_scale(n) else n, state.opt_state, is_leaf=_is_scale
    )
    return state._replace(opt_state=opt_state)


def lr_scale(state: "TrainState") -> Optional[float]:
    """The smallest learning-rate factor in ``state`` (``None`` without ``scale_by_lr_factor``)."""
    found = [n.scale for n in jax.tree_util.tree_leaves(state.opt_state, is_leaf=_is_scale) if _is_scale(n)]
    return min(float(v) for v in jax.device_get(found)) if found else None


def make_step(
    loss_fn: LossFn,
    optimizer: optax.GradientTransformation,
    *,
    jit: bool = True,
    guard: bool = True,
    axis_name: Optional[str] = None,
    mesh: Any = None,
) -> Callable[[TrainState, jax.Array, jax.Array], tuple[TrainState, Metrics]]:
    """One training step: ``step(state, batch, key) -> (state, metrics)``.

    Computes the loss and its gradient with respect to ``state.params``,
    applies the optax update, and returns metrics (``loss``, the loss's aux
    terms, ``grad_norm`` and ``finite``). With ``guard`` a non-finite loss or
    gradient leaves the state unchanged (``finite`` is then 0). With
    ``axis_name`` (inside ``pmap``/``shard_map``) the device's index along
    that axis is folded into ``key`` (independent noise on each shard) and
    gradients and metrics are averaged over the axis with ``lax.pmean``.
    With ``mesh`` (a ``jax.sharding.Mesh``) the batch is split over the
    mesh's first axis (``aet.parallel.batch_sharding``) and the loss is the
    mean over the global batch; a batch size not divisible by that axis
    raises ``ValueError``.
    """
    loss_aux = with_aux(loss_fn)
    if mesh is not None:
        from . import parallel

        batch_spec = parallel.batch_sharding(mesh)

    def objective(params: Any, collections: Any, x: jax.Array, key: jax.Array):
        return loss_aux({**(collections or {}), "params": params}, x, key)

    grad_fn = jax.value_and_grad(objective, has_aux=True)

    def step(state: TrainState, batch: jax.Array, key: jax.Array) -> tuple[TrainState, Metrics]:
        if mesh is not None:
            parallel.check_batch_size(int(jnp.shape(batch)[0]), mesh, "batch")
            batch = jax.lax.with_sharding_constraint(batch, batch_spec)
        if axis_name is not None:
            key = jax.random.fold_in(key, jax.lax.axis_index(axis_name))
        (_, metrics), grads = grad_fn(state.params, state.collections, batch, key)
        if axis_name is not None:
            grads = jax.lax.pmean(grads, axis_name)
            metrics = jax.lax.pmean(metrics, axis_name)
        updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        new = TrainState(params, opt_state, state.step + 1, state.collections)
        ok = jnp.isfinite(metrics["loss"]) & all_finite(grads)
        metrics = {**metrics, "grad_norm": optax.tree.norm(grads), "finite": ok.astype(jnp.float32)}
        if guard:
            new = guarded(new, state, ok)
        return new, metrics

    return jax.jit(step) if jit else step


class Trainer(NamedTuple):
    """How ``fit`` trains one kind of model.

    ``init(variables) -> TrainState``; ``step(state, batch, key) -> (state,
    metrics)`` (not jitted: ``fit`` compiles it inside the epoch scan);
    ``end_epoch(state, x) -> state`` runs after every epoch (e.g. RHVAE's
    metric update; identity by default).
    """

    init: Callable[[Variables], TrainState]
    step: Callable[[TrainState, jax.Array, jax.Array], tuple[TrainState, Metrics]]
    end_epoch: Callable[[TrainState, jax.Array], TrainState]


def _identity_end(state: TrainState, x: jax.Array) -> TrainState:
    return state


@functools.singledispatch
def make_trainer(model: nn.Module, loss_fn: LossFn, optimizer: Any) -> Trainer:
    """The ``Trainer`` for ``model``; models with extra training logic register their own."""
    return Trainer(
        init=lambda variables: init_state(variables, optimizer),
        step=make_step(loss_fn, optimizer, jit=False),
        end_epoch=_identity_end,
    )


class EpochResult(NamedTuple):
    state: TrainState
    metrics: Metrics  # mean over the epoch's good steps
    bad_step: jax.Array  # index within the epoch of the first non-finite step, or -1
    bad_metrics: Metrics  # the metrics of that step
    ref: Any = None  # the reference loss of the divergence check (NaN until the first good step)


def make_epoch(
    step: Callable,
    batch_size: int,
    sharding: Any = None,
    *,
    skip_nonfinite: bool = False,
    skip_factor: float = 0.5,
    divergence_factor: Optional[float] = None,
) -> Callable:
    """``epoch(state, x, key, ref=None) -> EpochResult``: shuffle, then ``lax.scan`` the step over batches.

    The last ``len(x) % batch_size`` examples of each shuffled order are
    dropped (a different remainder every epoch), so every batch has the same
    shape and the whole epoch is one compiled computation.

    By default the first non-finite step freezes the state for the rest of the
    epoch. With ``skip_nonfinite`` a non-finite step is skipped instead (the
    state keeps its previous value, with the learning-rate factor of
    :func:`scale_by_lr_factor` multiplied by ``skip_factor``) and training goes
    on; the metrics then also hold ``skipped``, the number of skipped steps.

    With ``divergence_factor`` f a step whose finite loss L exceeds the
    reference loss L₀ by more than f·max(|L₀|, 1) counts as failed like a
    non-finite one (a blow-up that has not reached inf yet). L₀ is ``ref``, or,
    while ``ref`` is NaN or None, the first good step's loss; the result's
    ``ref`` carries it to the next epoch.
    """

    def epoch(state: TrainState, x: jax.Array, key: jax.Array, ref: Any = None) -> EpochResult:
        perm_key, step_key = jax.random.split(key)
        n_batches = x.shape[0] // batch_size
        idx = jax.random.permutation(perm_key, x.shape[0])[: n_batches * batch_size]
        idx = idx.reshape(n_batches, batch_size)
        keys = jax.random.split(step_key, n_batches)

        def body(carry, inp):
            state, bad_step, bad_metrics, sums, n_good, i, ref = carry
            batch_idx, k = inp
            batch = x[batch_idx]
            if sharding is not None:
                batch = jax.lax.with_sharding_constraint(batch, sharding)
            new, metrics = step(state, batch, k)
            if divergence_factor is not None:
                loss = metrics["loss"].astype(jnp.float32)
                limit = ref + divergence_factor * jnp.maximum(jnp.abs(ref), 1.0)
                diverged = jnp.isfinite(ref) & (loss > limit)
                finite = metrics["finite"] * (1.0 - diverged.astype(jnp.float32))
                metrics = {**metrics, "finite": finite, "diverged": diverged.astype(jnp.float32)}
                ref = jnp.where(jnp.isnan(ref) & (finite > 0), loss, ref)
            first_bad = (metrics["finite"] == 0) & (bad_step < 0)
            if skip_nonfinite:  # skip the step and lower the learning rate
                ok = metrics["finite"] > 0
                state = guarded(new, scale_lr(state, skip_factor), ok)
            else:  # once a step has failed, freeze the state for the rest of the epoch
                ok = (metrics["finite"] > 0) & (bad_step < 0)
                state = guarded(new, state, ok)
            bad_metrics = jax.tree_util.tree_map(
                lambda m, b: jnp.where(first_bad, m, b), metrics, bad_metrics
            )
            bad_step = jnp.where(first_bad, i, bad_step)
            sums = jax.tree_util.tree_map(lambda s, m: s + jnp.where(ok, m, 0.0), sums, metrics)
            return (state, bad_step, bad_metrics, sums, n_good + ok, i + 1, ref), None

        metrics_shape = dict(jax.eval_shape(step, state, x[idx[0]], keys[0])[1])
        if divergence_factor is not None:
            metrics_shape["diverged"] = metrics_shape["finite"]
        zeros = jax.tree_util.tree_map(lambda s: jnp.zeros(s.shape, jnp.float32), metrics_shape)
        ref = jnp.asarray(jnp.nan if ref is None else ref, jnp.float32)
        init = (state, jnp.int32(-1), zeros, zeros, jnp.int32(0), jnp.int32(0), ref)
        (state, bad_step, bad_metrics, sums, n_good, _, ref), _ = jax.lax.scan(body, init, (idx, keys))
        means = jax.tree_util.tree_map(lambda s: s / jnp.maximum(n_good, 1), sums)
        if skip_nonfinite:
            means = {**means, "skipped": (n_batches - n_good).astype(jnp.float32)}
        return EpochResult(state, means, bad_step, bad_metrics, ref)

    return epoch


def make_evaluator(loss_fn: LossFn, batch_size: int) -> Callable[[Variables, jax.Array, jax.Array], Metrics]:
    """``evaluate(variables, x, key) -> metrics``: the loss's metrics averaged over ``x``.

    Runs full batches as one ``lax.map`` and the remainder as one more call.
    """
    loss_aux = with_aux(loss_fn)

    @jax.jit
    def chunked(variables, xb, keys):
        out = jax.lax.map(lambda a: loss_aux(variables, a[0], a[1])[1], (xb, keys))
        return jax.tree_util.tree_map(lambda m: jnp.sum(m, axis=0), out)

    one = jax.jit(lambda variables, xb, key: loss_aux(variables, xb, key)[1])

    def evaluate(variables: Variables, x: jax.Array, key: jax.Array) -> Metrics:
        n = x.shape[0]
        nb, rem = divmod(n, batch_size)
        keys = jax.random.split(key, nb + 1)
        total: Optional[Metrics] = None
        if nb:
            xb = x[: nb * batch_size].reshape(nb, batch_size, *x.shape[1:])
            sums = chunked(variables, xb, keys[:nb])
            total = jax.tree_util.tree_map(lambda s: s * batch_size, sums)
        if rem:
            last = one(variables, x[nb * batch_size :], keys[nb])
            last = jax.tree_util.tree_map(lambda m: m * rem, last)
            total = last if total is None else jax.tree_util.tree_map(jnp.add, total, last)
        return jax.tree_util.tree_map(lambda s: s / n, total)

    return evaluate


class NonFiniteError(FloatingPointError):
    """Training produced a non-finite loss or gradient.

    Attributes: ``variables`` (the last good parameters), ``history``,
    ``epoch``, ``step`` (global step index of the failure), ``terms`` (the
    metrics that were non-finite) and ``checkpoint`` (the last good
    checkpoint's path, or ``None``).
    """

    def __init__(self, message: str, *, variables, history, epoch, step, terms, checkpoint):
        super().__init__(message)
        self.variables, self.history, self.epoch = variables, history, epoch
        self.step, self.terms, self.checkpoint = step, terms, checkpoint


class TrainingInterrupted(KeyboardInterrupt):
    """``fit`` was stopped by Ctrl-C (SIGINT).

    After one Ctrl-C ``fit`` finishes the current epoch (and its checkpoint)
    and raises this; after a second one it abandons the epoch at once. Being a
    ``KeyboardInterrupt``, it ends a script as Ctrl-C always did unless caught.

    Attributes: ``variables`` and ``history`` of the last completed epoch,
    ``epoch`` (its index, ``-1`` if none completed), ``checkpoint`` (the last
    checkpoint's path, or ``None``; pass ``resume=True`` to continue from it)
    and ``abandoned`` (``True`` when an epoch was cut short by a second Ctrl-C).
    """

    def __init__(self, message: str, *, variables, history, epoch, checkpoint, abandoned=False):
        super().__init__(message)
        self.variables, self.history, self.epoch = variables, history, epoch
        self.checkpoint, self.abandoned = checkpoint, abandoned


class _DeferredSigint:
    """While installed, the first SIGINT only sets ``requested``; a second one raises ``KeyboardInterrupt``.

    Installed only in the main thread (the only one Python delivers signals
    to) and only where SIGINT is not ignored; the previous handler is restored
    on exit.
    """

    def __init__(self) -> None:
        self.requested = False
        self._old: Any = None

    def _handle(self, signum: int, frame: Any) -> None:
        self.requested = True
        signal.signal(signal.SIGINT, signal.default_int_handler)  # a second Ctrl-C interrupts at once

    def install(self) -> "_DeferredSigint":
        """Install the handler (where allowed); returns ``self``."""
        if threading.current_thread() is threading.main_thread():
            old = signal.getsignal(signal.SIGINT)
            if old not in (signal.SIG_IGN, None):  # None: a handler installed outside Python; leave it
                self._old = old
                signal.signal(signal.SIGINT, self._handle)
        return self

    def restore(self) -> None:
        """Put the previous handler back."""
        if self._old is not None:
            signal.signal(signal.SIGINT, self._old)
            self._old = None


def _interrupted(done: tuple[Any, int, str], checkpoint: Optional[str], epochs: int, abandoned: bool):
    """The ``TrainingInterrupted`` for the last completed epoch ``done = (state, epoch, history_json)``."""
    state, epoch, history_json = done
    where = checkpoint or "none written (pass checkpoint_dir to keep one)"
    what = f"epoch {epoch + 1} abandoned by a second Ctrl-C" if abandoned else "stopped by Ctrl-C"
    msg = f"training {what} after {epoch + 1} of {epochs} epochs; last checkpoint: {where}"
    return TrainingInterrupted(
        msg, variables=jax.device_get(state.variables), history=json.loads(history_json), epoch=epoch,
        checkpoint=checkpoint, abandoned=abandoned,
    )


def _check_data_support(model: nn.Module, x: Any, x_val: Any) -> None:
    """``ValueError`` (one line) when ``x`` or ``x_val`` lie outside the support of ``model.decoder``'s likelihood.

    Models without a ``decoder`` attribute, and decoders with no registered
    :func:`aet.decoders.decoder_support` (deterministic or the user's own), are not checked.
    """
    decoder = getattr(model, "decoder", None)
    if not isinstance(decoder, nn.Module):
        return
    check_support(decoder, jax.device_get(x), name="data")
    if x_val is not None:
        check_support(decoder, jax.device_get(x_val), name="val_data")


def _failure_detail(terms: dict[str, float], nonfinite: list[str], ref: float, factor: Optional[float]) -> str:
    """What went wrong at a failed step, from its metrics (for ``fit``'s messages)."""
    parts = []
    if terms.get("diverged", 0.0) > 0:
        parts.append(
            f"the loss diverged to {terms['loss']:.4g}, more than divergence_factor={factor:g} × max(|L0|, 1) "
            f"above the run's first loss L0={ref:.4g}"
        )
    else:
        parts.append(f"non-finite terms: {', '.join(nonfinite) or 'gradient only'}")
    if "converged" in terms and not terms["converged"] > 0:
        res = terms.get("fixed_point_residual", math.nan)
        parts.append(
            f"the leapfrog's fixed-point iterations did not converge (fixed_point_residual={res:.3g}); "
            "lower eps or the learning rate, raise n_fixed_point, or for an RHVAE pass flow_gradient='detached'"
        )
    return "; ".join(parts)


def _as_array(data: Any, name: str) -> jax.Array:
    x = getattr(data, "x", data)  # an aet.data.Dataset or an array
    check_array(x, name)
    return jnp.asarray(x)


def _to_host(tree: Any) -> dict[str, float]:
    return {k: float(v) for k, v in jax.device_get(tree).items()}


def _append(history: dict[str, Any], split: str, metrics: dict[str, float]) -> None:
    for k, v in metrics.items():
        history.setdefault(split, {}).setdefault(k, []).append(v)


def fit(
    model: nn.Module,
    loss_fn: LossFn,
    data: Any,
    *,
    key: jax.Array,
    optimizer: Optional[optax.GradientTransformation] = None,
    epochs: int = 10,
    batch_size: int = 128,
    val_data: Any = None,
    progress: bool = True,
    checkpoint_dir: Optional[str] = None,
    resume: bool = False,
    mesh: Any = None,
    callbacks: Sequence[Callable[[int, Variables, dict], Any]] = (),
    variables: Optional[Variables] = None,
    keep_checkpoints: int = 3,
    on_nonfinite: str = "stop",
    nonfinite_factor: float = 0.5,
    divergence_factor: Optional[float] = 1e3,
) -> tuple[Variables, dict[str, Any]]:
    """Train ``model`` on ``data`` and return ``(variables, history)``.

    ``loss_fn(variables, x, key)`` is a pure loss (a model's loss with the
    model and hyper-parameters bound by ``functools.partial``). ``data`` and
    ``val_data`` are arrays ``(n, *data_shape)`` or ``aet.data.Dataset``.
    Each epoch is one compiled ``lax.scan`` over ``n // batch_size`` shuffled
    batches. ``history`` is ``{"epoch": [...], "train": {metric: [...]},
    "val": {metric: [...]}}`` with one entry per epoch.

    The run is a function of ``key``: epoch ``e`` uses ``fold_in(key, e)``, so
    a run resumed from a checkpoint (``resume=True``) ends with bit-identical
    parameters to an uninterrupted one. With ``checkpoint_dir`` a checkpoint is
    written atomically after every epoch (after the callbacks).

    A callback ``cb(epoch, variables, history)`` runs after every epoch; if it
    returns ``True`` training stops. With ``mesh`` (a ``jax.sharding.Mesh``)
    each batch is sharded over the mesh's first axis (data parallel; the
    parameters and the data set are replicated on every device, and
    ``batch_size`` must be divisible by the axis size, else ``ValueError``).
    With ``mesh=None`` and more than one device, ``aet.parallel.data_mesh()``
    (every device) is used; with one device nothing is sharded. In a
    multi-process run (``aet.parallel.initialize``) ``data`` and ``val_data``
    are this process's shards (``aet.parallel.process_shard``), gathered in
    process order; only process 0 shows progress and writes checkpoints.

    Checkpoints (``ckpt_EEEEEE.msgpack``, msgpack + sha256, never pickle) hold
    the training state (parameters, optimizer state, step), the epoch, the
    history, ``key`` and the model's configuration (every field of the module
    tree, :func:`aet.checkpoint.model_config`) with the shapes of every leaf.
    ``resume=True`` continues from the newest checkpoint that reads back
    intact (a truncated or corrupt one is skipped with a ``RuntimeWarning``),
    or starts afresh if there is none; a checkpoint of another configuration
    raises ``ValueError`` listing what differs. Resuming uses the stored key
    (with a warning if ``key`` differs), so the run continues as it began.

    Non-finite loss or gradient: with ``on_nonfinite="stop"`` (default) the
    epoch freezes at the last good step and ``NonFiniteError`` is raised with
    the epoch, batch and update index, the metric names (the loss's aux terms,
    e.g. ``loglikelihood``, ``kl``, ``mmd``) that were non-finite, and the last
    good checkpoint. With ``on_nonfinite="skip"`` the step is skipped, the
    learning rate is multiplied by ``nonfinite_factor`` (a factor kept in the
    optimizer state, :func:`scale_by_lr_factor`, so it is checkpointed) and a
    ``RuntimeWarning`` names the terms; ``history["train"]`` then also records
    ``skipped`` steps and ``lr_scale`` per epoch. ``NonFiniteError`` is still
    raised when a whole epoch is skipped or the factor falls below 1e-6.

    Divergence: a step whose loss is finite but exceeds the run's first loss L₀
    by more than ``divergence_factor``·max(|L₀|, 1) is treated the same way
    (a blow-up is caught before it reaches inf; ``None`` turns the check off).
    A loss that reports ``converged`` = 0 (RHVAE's fixed-point iterations) is
    named in the message.

    Data: before anything is compiled, ``data`` and ``val_data`` are checked
    against the support of ``model.decoder``'s likelihood
    (:func:`aet.decoders.check_support`): e.g. a Bernoulli decoder on
    standardised data raises ``ValueError`` naming the decoder, the data's
    range and the fix. Models without a ``decoder`` and decoders with no
    registered ``decoder_support`` are not checked.

    Ctrl-C (SIGINT, handled in the main thread only; the previous handler is
    restored when ``fit`` returns): the first Ctrl-C lets the current epoch
    (during the setup and the first compilation: the first epoch) finish and
    write its checkpoint, then raises :class:`TrainingInterrupted`
    (a ``KeyboardInterrupt``) carrying the variables, history, epoch and
    checkpoint of the last completed epoch; ``resume=True`` continues from it.
    A second Ctrl-C abandons the epoch at once (the last checkpoint stays
    intact; during the setup, before the first epoch, a plain ``KeyboardInterrupt``). A
    Ctrl-C during the last epoch lets the run finish normally.
    """
    check_key(key)
    check_int(epochs, "epochs", minimum=0)
    check_int(batch_size, "batch_size", minimum=1)
    check_int(keep_checkpoints, "keep_checkpoints", minimum=1)
    if not isinstance(model, nn.Module):
        raise TypeError(f"`model` must be a flax module, got {type(model).__name__}")
    if not callable(loss_fn):
        raise TypeError(f"`loss_fn` must be a callable loss_fn(variables, x, key), got {type(loss_fn).__name__}")
    if on_nonfinite not in ("stop", "skip"):
        raise ValueError(f"`on_nonfinite` must be 'stop' or 'skip', got {on_nonfinite!r}")
    check_scalar(nonfinite_factor, "nonfinite_factor", low=0.0, high=1.0, low_inclusive=False, high_inclusive=False)
    if divergence_factor is not None:
        check_scalar(divergence_factor, "divergence_factor", positive=True)
    if resume and checkpoint_dir is None:
        raise ValueError("`resume=True` needs `checkpoint_dir` (the folder to resume from)")
    if checkpoint_dir is not None and not isinstance(checkpoint_dir, (str, os.PathLike)):
        raise TypeError(f"`checkpoint_dir` must be a path, got {type(checkpoint_dir).__name__}")
    if not callable(getattr(callbacks, "__iter__", None)) or not all(callable(cb) for cb in callbacks):
        raise TypeError("`callbacks` must be a sequence of callables cb(epoch, variables, history)")
    x = _as_array(data, "data")
    if batch_size > x.shape[0] * jax.process_count():  # with several processes `data` is one shard
        raise ValueError(f"`batch_size` ({batch_size}) is larger than the data ({x.shape[0] * jax.process_count()} examples)")
    x_val = None if val_data is None else _as_array(val_data, "val_data")
    if x_val is not None and x_val.shape[1:] != x.shape[1:]:
        raise ValueError(f"`val_data` has per-example shape {x_val.shape[1:]}, `data` has {x.shape[1:]}")
    _check_data_support(model, x, x_val)
    optimizer = optax.adam(1e-3) if optimizer is None else optimizer
    if on_nonfinite == "skip":  # a learning-rate factor in the optimizer state, lowered at each skip
        if isinstance(optimizer, dict):
            optimizer = {k: optax.chain(o, scale_by_lr_factor()) for k, o in optimizer.items()}
        else:
            optimizer = optax.chain(optimizer, scale_by_lr_factor())
    skip = on_nonfinite == "skip"

    sigint = _DeferredSigint().install()  # from here on the first Ctrl-C stops at the end of an epoch
    bar = None
    done = None  # (state, epoch, history_json) of the last completed epoch, once there is a state
    try:
        init_key, train_key, val_key = jax.random.split(key, 3)
        if variables is None:
            variables = model.init(init_key, x[:1])
        trainer = make_trainer(model, loss_fn, optimizer)
        state = trainer.init(variables)

        batch_sharding = None
        if mesh is None and jax.device_count() > 1:
            from . import parallel

            mesh = parallel.data_mesh()  # data parallel over every device (of every process)
        if mesh is not None:
            from . import parallel

            parallel.check_batch_size(batch_size, mesh)
            batch_sharding = parallel.batch_sharding(mesh)
            replicated = parallel.replicated(mesh)
            state = jax.device_put(state, replicated)
            # the data set, replicated on every device; with several processes
            # `data` is this process's shard and the shards are concatenated
            x = parallel.gather_data(x, mesh)
            if x_val is not None and jax.process_count() > 1:
                x_val = parallel.gather_data(x_val, mesh)

        run_epoch = jax.jit(
            make_epoch(
                trainer.step, batch_size, batch_sharding, skip_nonfinite=skip, skip_factor=nonfinite_factor,
                divergence_factor=divergence_factor,
            )
        )
        # trace the end-of-epoch update now, so that its argument errors (e.g. an RHVAE
        # with more centroids than data) surface before the first epoch is trained
        jax.eval_shape(trainer.end_epoch, state, x)
        end_epoch = jax.jit(trainer.end_epoch)
        evaluate = make_evaluator(loss_fn, batch_size) if x_val is not None else None

        history: dict[str, Any] = {"epoch": [], "train": {}, "val": {}}
        start = 0
        last_ckpt: Optional[str] = None
        sig = json.dumps({**ckpt.model_config(model), **ckpt.signature(state)}, sort_keys=True)
        key_data = np.asarray(jax.random.key_data(key))
        if checkpoint_dir is not None and resume:
            template = {"state": state, "epoch": 0, "history": "", "signature": sig, "key": key_data}
            found = ckpt.latest_valid(checkpoint_dir, template)
            if found is not None:
                last_ckpt, restored = found
                state = restored["state"]
                stored_key = np.asarray(restored["key"], key_data.dtype)
                if not np.array_equal(stored_key, key_data):
                    import warnings

                    warnings.warn(
                        f"`key` differs from the key {last_ckpt} was written with; resuming with the "
                        "checkpoint's key so that the run continues as it began",
                        RuntimeWarning,
                        stacklevel=2,
                    )
                    key_data = stored_key
                    if jnp.issubdtype(key.dtype, jax.dtypes.prng_key):
                        key = jax.random.wrap_key_data(stored_key, impl=jax.random.key_impl(key))
                    else:
                        key = jnp.asarray(stored_key)
                    init_key, train_key, val_key = jax.random.split(key, 3)
                if mesh is not None:
                    state = jax.device_put(state, replicated)
                start = int(restored["epoch"]) + 1
                history = json.loads(restored["history"])
        elif checkpoint_dir is not None and jax.process_index() == 0:
            old = ckpt.list_checkpoints(checkpoint_dir)
            if old:  # a fresh run must not mix its checkpoints with a previous run's
                import warnings

                for path in old:
                    os.unlink(path)
                warnings.warn(
                    f"starting a new run in {checkpoint_dir}: removed {len(old)} checkpoint(s) of a previous run "
                    "(pass resume=True to continue it instead)",
                    RuntimeWarning,
                    stacklevel=2,
                )

        if progress and epochs > start and jax.process_index() == 0:
            from tqdm.auto import tqdm

            bar = tqdm(total=epochs, initial=start, desc=type(model).__name__, unit="epoch")
        # NaN until the first good step: the same pytree in every epoch, so the epoch compiles once
        ref = jnp.full((), jnp.nan, jnp.float32)
        done = (state, start - 1, json.dumps(history))  # the last completed epoch, for an interrupt
        for epoch in range(start, epochs):
            res = run_epoch(state, x, jax.random.fold_in(train_key, epoch), ref)
            ref = res.ref
            bad = int(res.bad_step)
            n_skipped = int(res.metrics["skipped"]) if skip else 0
            scale = lr_scale(res.state) if skip else None
            if bad >= 0:
                good = res.state
                terms = {k: float(v) for k, v in jax.device_get(res.bad_metrics).items()}
                nonfinite = sorted(k for k, v in terms.items() if k != "finite" and not math.isfinite(v))
                detail = _failure_detail(terms, nonfinite, float(ref), divergence_factor)
                gstep = int(good.step)
                where = last_ckpt or "none written (pass checkpoint_dir to keep one)"
                n_batches = x.shape[0] // batch_size
                if skip and n_skipped < n_batches and scale >= 1e-6:
                    import warnings

                    warnings.warn(
                        f"epoch {epoch}: skipped {n_skipped} of {n_batches} steps with a non-finite or diverged "
                        f"loss or gradient (first at batch {bad}); {detail}; "
                        f"learning-rate factor now {scale:.3g}",
                        RuntimeWarning,
                        stacklevel=2,
                    )
                else:
                    why = (
                        f"every step of epoch {epoch} was non-finite" if skip and n_skipped >= n_batches
                        else f"the learning-rate factor fell to {scale:.3g} after skipping" if skip
                        else "Training stopped"
                    )
                    msg = (
                        f"non-finite or diverged loss or gradient at epoch {epoch}, batch {bad} (update {gstep}); "
                        f"{detail}. {why}; "
                        f"the returned parameters are the last good ones. Last good checkpoint: {where}"
                    )
                    raise NonFiniteError(
                        msg, variables=jax.device_get(good.variables), history=history, epoch=epoch, step=gstep,
                        terms=terms, checkpoint=last_ckpt,
                    )
            state = end_epoch(res.state, x)
            train_metrics = _to_host(res.metrics)
            train_metrics.pop("finite", None)
            train_metrics.pop("diverged", None)
            if skip:
                train_metrics["lr_scale"] = scale
            history["epoch"].append(epoch)
            _append(history, "train", train_metrics)
            if evaluate is not None:
                val_metrics = _to_host(evaluate(state.variables, x_val, jax.random.fold_in(val_key, epoch)))
                _append(history, "val", val_metrics)
            stop = False
            for cb in callbacks:
                stop = bool(cb(epoch, state.variables, history)) or stop
            history_json = json.dumps(history)
            if checkpoint_dir is not None and jax.process_index() == 0:  # one writer per run
                payload = {"state": state, "epoch": epoch, "history": history_json, "signature": sig, "key": key_data}
                last_ckpt = ckpt.save(checkpoint_dir, epoch, payload, keep=keep_checkpoints)
            if bar is not None:
                post = {"loss": f"{train_metrics['loss']:.4g}"}
                if history["val"]:
                    post["val_loss"] = f"{history['val']['loss'][-1]:.4g}"
                bar.set_postfix(post)
                bar.update(1)
            done = (state, epoch, history_json)
            if stop:
                break
            if sigint.requested and epoch < epochs - 1:  # Ctrl-C: stop after this epoch's checkpoint
                raise _interrupted(done, last_ckpt, epochs, abandoned=False)
    except KeyboardInterrupt as err:
        if isinstance(err, TrainingInterrupted) or done is None:  # done is None: still setting up
            raise
        raise _interrupted(done, last_ckpt, epochs, abandoned=True) from None  # a second Ctrl-C
    finally:
        sigint.restore()
        if bar is not None:
            bar.close()
    return jax.device_get(state.variables), history


def load_variables(model: nn.Module, checkpoint_dir: str, x_example: Any, *, key: Optional[jax.Array] = None) -> Variables:
    """The variables stored in the newest valid checkpoint of ``checkpoint_dir``.

    ``x_example`` (one batch of data) builds the template with ``model.init``;
    only the parameters and other variable collections are read (not the
    optimizer state). ``ValueError`` when there is no readable checkpoint or it
    belongs to another model configuration.
    """
    from flax import serialization

    import warnings

    template = model.init(jax.random.key(0) if key is None else key, jnp.asarray(x_example))
    skipped = 0
    for path in reversed(ckpt.list_checkpoints(checkpoint_dir)):
        try:
            raw = ckpt.read_raw(path)
            state = raw["state"]
            stored = {**(state.get("collections") or {}), "params": state["params"]}
            stored_sig = json.loads(raw["signature"]) if "signature" in raw else {}
        except Exception as err:  # corrupt or truncated: try the previous one
            warnings.warn(f"skipping unreadable checkpoint {path}: {err}", RuntimeWarning, stacklevel=2)
            skipped += 1
            continue
        want = {**ckpt.model_config(model), **ckpt.signature(template)}
        have = {**{k: v for k, v in stored_sig.items() if k.startswith("model")}, **ckpt.signature(stored)}
        keys = sorted(set(want) | set(have), key=lambda k: (not k.startswith("model"), k))
        diffs = [f"{k}: checkpoint {have.get(k)} vs model {want.get(k)}" for k in keys if want.get(k) != have.get(k)]
        if diffs:
            raise ValueError(
                f"{path} was written for a different model configuration; it differs in "
                + "; ".join(diffs[:8]) + (" …" if len(diffs) > 8 else "")
            )
        return serialization.from_state_dict(template, stored)
    extra = f" ({skipped} unreadable checkpoint(s) skipped)" if skipped else ""
    raise ValueError(f"{checkpoint_dir}: no readable checkpoint{extra}")


def save_history(history: dict[str, Any], path: str) -> None:
    """Write ``history`` as JSON."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w") as f:
        json.dump(history, f, indent=1)


__all__ = [
    "TrainState",
    "Trainer",
    "NonFiniteError",
    "TrainingInterrupted",
    "init_state",
    "make_step",
    "make_trainer",
    "make_epoch",
    "make_evaluator",
    "fit",
    "with_aux",
    "save_history",
    "load_variables",
]
