"""Training: a jitted step, a whole epoch as one ``lax.scan``, and ``fit``.

``make_step(loss_fn, optimizer)`` returns ``step(state, batch, key) -> (state,
metrics)``: loss, gradients, optax update and metrics in one XLA computation.
``fit`` runs each epoch as a single compiled scan over shuffled batches and
keeps metrics on the device until the epoch ends, then syncs once. A
non-finite loss or gradient freezes the state at the last good step (inside the
scan, no host round-trip), and ``fit`` raises ``NonFiniteError`` at the end of
that epoch with the step and the terms that went non-finite.

Model-specific training (RHVAE's metric update, InfoMaxVAE's second optimizer)
plugs in through ``make_trainer``, a single-dispatch function on the model's type.
"""
from __future__ import annotations

import functools
import inspect
import json
import math
import os
from typing import Any, Callable, NamedTuple, Optional, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from . import checkpoint as ckpt
from .validation import check_array, check_int, check_key

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


def make_step(
    loss_fn: LossFn,
    optimizer: optax.GradientTransformation,
    *,
    jit: bool = True,
    guard: bool = True,
    axis_name: Optional[str] = None,
) -> Callable[[TrainState, jax.Array, jax.Array], tuple[TrainState, Metrics]]:
    """One training step: ``step(state, batch, key) -> (state, metrics)``.

    Computes the loss and its gradient with respect to ``state.params``,
    applies the optax update, and returns metrics (``loss``, the loss's aux
    terms, ``grad_norm`` and ``finite``). With ``guard`` a non-finite loss or
    gradient leaves the state unchanged (``finite`` is then 0). With
    ``axis_name`` (inside ``pmap``/``shard_map``) gradients and metrics are
    averaged over that axis with ``lax.pmean``.
    """
    loss_aux = with_aux(loss_fn)

    def objective(params: Any, collections: Any, x: jax.Array, key: jax.Array):
        return loss_aux({**(collections or {}), "params": params}, x, key)

    grad_fn = jax.value_and_grad(objective, has_aux=True)

    def step(state: TrainState, batch: jax.Array, key: jax.Array) -> tuple[TrainState, Metrics]:
        (_, metrics), grads = grad_fn(state.params, state.collections, batch, key)
        if axis_name is not None:
            grads = jax.lax.pmean(grads, axis_name)
            metrics = jax.lax.pmean(metrics, axis_name)
        updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        new = TrainState(params, opt_state, state.step + 1, state.collections)
        ok = jnp.isfinite(metrics["loss"]) & all_finite(grads)
        metrics = {**metrics, "grad_norm": optax.global_norm(grads), "finite": ok.astype(jnp.float32)}
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


def make_epoch(step: Callable, batch_size: int, sharding: Any = None) -> Callable:
    """``epoch(state, x, key) -> EpochResult``: shuffle, then ``lax.scan`` the step over batches.

    The last ``len(x) % batch_size`` examples of each shuffled order are
    dropped (a different remainder every epoch), so every batch has the same
    shape and the whole epoch is one compiled computation.
    """

    def epoch(state: TrainState, x: jax.Array, key: jax.Array) -> EpochResult:
        perm_key, step_key = jax.random.split(key)
        n_batches = x.shape[0] // batch_size
        idx = jax.random.permutation(perm_key, x.shape[0])[: n_batches * batch_size]
        idx = idx.reshape(n_batches, batch_size)
        keys = jax.random.split(step_key, n_batches)

        def body(carry, inp):
            state, bad_step, bad_metrics, sums, n_good, i = carry
            batch_idx, k = inp
            batch = x[batch_idx]
            if sharding is not None:
                batch = jax.lax.with_sharding_constraint(batch, sharding)
            new, metrics = step(state, batch, k)
            ok = (metrics["finite"] > 0) & (bad_step < 0)
            first_bad = (metrics["finite"] == 0) & (bad_step < 0)
            # once a step has failed, freeze the state for the rest of the epoch
            state = guarded(new, state, ok)
            bad_metrics = jax.tree_util.tree_map(
                lambda m, b: jnp.where(first_bad, m, b), metrics, bad_metrics
            )
            bad_step = jnp.where(first_bad, i, bad_step)
            sums = jax.tree_util.tree_map(lambda s, m: s + jnp.where(ok, m, 0.0), sums, metrics)
            return (state, bad_step, bad_metrics, sums, n_good + ok, i + 1), None

        metrics_shape = jax.eval_shape(step, state, x[idx[0]], keys[0])[1]
        zeros = jax.tree_util.tree_map(lambda s: jnp.zeros(s.shape, jnp.float32), metrics_shape)
        init = (state, jnp.int32(-1), zeros, zeros, jnp.int32(0), jnp.int32(0))
        (state, bad_step, bad_metrics, sums, n_good, _), _ = jax.lax.scan(body, init, (idx, keys))
        means = jax.tree_util.tree_map(lambda s: s / jnp.maximum(n_good, 1), sums)
        return EpochResult(state, means, bad_step, bad_metrics)

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
    each batch is sharded over the mesh's first axis (data parallel).
    """
    check_key(key)
    check_int(epochs, "epochs", minimum=0)
    check_int(batch_size, "batch_size", minimum=1)
    x = _as_array(data, "data")
    if batch_size > x.shape[0]:
        raise ValueError(f"`batch_size` ({batch_size}) is larger than the data ({x.shape[0]} examples)")
    x_val = None if val_data is None else _as_array(val_data, "val_data")
    if x_val is not None and x_val.shape[1:] != x.shape[1:]:
        raise ValueError(f"`val_data` has per-example shape {x_val.shape[1:]}, `data` has {x.shape[1:]}")
    optimizer = optax.adam(1e-3) if optimizer is None else optimizer

    init_key, train_key, val_key = jax.random.split(key, 3)
    if variables is None:
        variables = model.init(init_key, x[:1])
    trainer = make_trainer(model, loss_fn, optimizer)
    state = trainer.init(variables)

    batch_sharding = None
    if mesh is not None:
        from jax.sharding import NamedSharding, PartitionSpec

        n_dev = mesh.shape[mesh.axis_names[0]]
        if batch_size % n_dev:
            raise ValueError(f"`batch_size` ({batch_size}) must be divisible by the {n_dev} devices of `mesh`")
        batch_sharding = NamedSharding(mesh, PartitionSpec(mesh.axis_names[0]))
        replicated = NamedSharding(mesh, PartitionSpec())
        state = jax.device_put(state, replicated)
        x = jax.device_put(x, replicated)

    run_epoch = jax.jit(make_epoch(trainer.step, batch_size, batch_sharding))
    end_epoch = jax.jit(trainer.end_epoch)
    evaluate = make_evaluator(loss_fn, batch_size) if x_val is not None else None

    history: dict[str, Any] = {"epoch": [], "train": {}, "val": {}}
    start = 0
    last_ckpt: Optional[str] = None
    sig = json.dumps({"model": type(model).__name__, **ckpt.signature(state)}, sort_keys=True)
    if checkpoint_dir is not None and resume:
        template = {"state": state, "epoch": 0, "history": "", "signature": sig}
        found = ckpt.latest_valid(checkpoint_dir, template)
        if found is not None:
            last_ckpt, restored = found
            state = restored["state"]
            if mesh is not None:
                state = jax.device_put(state, replicated)
            start = int(restored["epoch"]) + 1
            history = json.loads(restored["history"])

    bar = None
    if progress and epochs > start:
        from tqdm.auto import tqdm

        bar = tqdm(total=epochs, initial=start, desc=type(model).__name__, unit="epoch")
    try:
        for epoch in range(start, epochs):
            res = run_epoch(state, x, jax.random.fold_in(train_key, epoch))
            bad = int(res.bad_step)
            if bad >= 0:
                good = res.state
                terms = {k: float(v) for k, v in jax.device_get(res.bad_metrics).items()}
                nonfinite = sorted(k for k, v in terms.items() if k != "finite" and not math.isfinite(v))
                gstep = int(good.step)
                where = last_ckpt or "none written (pass checkpoint_dir to keep one)"
                msg = (
                    f"non-finite loss or gradient at epoch {epoch}, batch {bad} (update {gstep}); "
                    f"non-finite terms: {', '.join(nonfinite) or 'gradient only'}. Training stopped; "
                    f"the returned parameters are the last good ones. Last good checkpoint: {where}"
                )
                raise NonFiniteError(
                    msg, variables=good.variables, history=history, epoch=epoch, step=gstep,
                    terms=terms, checkpoint=last_ckpt,
                )
            state = end_epoch(res.state, x)
            train_metrics = _to_host(res.metrics)
            train_metrics.pop("finite", None)
            history["epoch"].append(epoch)
            _append(history, "train", train_metrics)
            if evaluate is not None:
                val_metrics = _to_host(evaluate(state.variables, x_val, jax.random.fold_in(val_key, epoch)))
                _append(history, "val", val_metrics)
            stop = False
            for cb in callbacks:
                stop = bool(cb(epoch, state.variables, history)) or stop
            if checkpoint_dir is not None:
                payload = {"state": state, "epoch": epoch, "history": json.dumps(history), "signature": sig}
                last_ckpt = ckpt.save(checkpoint_dir, epoch, payload, keep=keep_checkpoints)
            if bar is not None:
                post = {"loss": f"{train_metrics['loss']:.4g}"}
                if history["val"]:
                    post["val_loss"] = f"{history['val']['loss'][-1]:.4g}"
                bar.set_postfix(post)
                bar.update(1)
            if stop:
                break
    finally:
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

    template = model.init(jax.random.key(0) if key is None else key, jnp.asarray(x_example))
    for path in reversed(ckpt.list_checkpoints(checkpoint_dir)):
        try:
            raw = ckpt.read_raw(path)
        except Exception as err:  # corrupt or truncated: try the previous one
            import warnings

            warnings.warn(f"skipping unreadable checkpoint {path}: {err}", RuntimeWarning, stacklevel=2)
            continue
        state = raw["state"]
        stored = {**(state.get("collections") or {}), "params": state["params"]}
        want, have = ckpt.signature(template), ckpt.signature(stored)
        if want != have:
            diffs = [k for k in sorted(set(want) | set(have)) if want.get(k) != have.get(k)]
            raise ValueError(f"{path} does not match this model; it differs in {', '.join(diffs[:6])}")
        return serialization.from_state_dict(template, stored)
    raise ValueError(f"{checkpoint_dir}: no readable checkpoint")


def save_history(history: dict[str, Any], path: str) -> None:
    """Write ``history`` as JSON."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w") as f:
        json.dump(history, f, indent=1)


__all__ = [
    "TrainState",
    "Trainer",
    "NonFiniteError",
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
