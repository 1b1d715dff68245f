"""``fit``: the training loop, as a short function over named helpers.

``fit`` = check the arguments and data (``_check_fit_args``, ``_check_data``) →
build the state, mesh placement and compiled epoch (``_setup``) → resume or
clear old checkpoints (``_resume``, ``_clear_old_run``) → for every epoch
(``_train_epochs``): run and check it (``_run_epoch``, ``_check_failure``),
record its metrics (``_record``), then callbacks, checkpoint and progress bar
(``_finish_epoch``). Ctrl-C is handled by ``_DeferredSigint``.

``loss_fn(variables, x, key)`` is a pure loss (a model's loss with the
model and hyper-parameters bound by ``functools.partial``). ``data`` and
``val_data`` are arrays ``(n, *data_shape)`` or ``aet.data.Dataset``.
Each epoch is one compiled ``lax.scan`` over ``n // batch_size`` shuffled
batches. ``history`` is ``{"epoch": [...], "train": {metric: [...]},
"val": {metric: [...]}}`` with one entry per epoch.

The run is a function of ``key``: epoch ``e`` uses ``fold_in(key, e)``, so
a run resumed from a checkpoint (``resume=True``) ends with bit-identical
parameters to an uninterrupted one. With ``checkpoint_dir`` a checkpoint is
written atomically after every epoch (after the callbacks), in orbax's background
thread while the next epoch trains; ``fit`` waits for the last one before it
returns or raises, so the checkpoint it reports is complete.

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

Checkpoints (orbax folders ``ckpt_EEEEEE/`` verified by a SHA-256 digest, never
pickle; :mod:`aet.checkpoint`, which also reads the older ``.msgpack`` files) hold
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
registered ``decoder_support`` are not checked. A conditional model
(``n_conditions`` or ``condition_dim`` > 0) is fed the pairs ``(x, y)`` of
``aet.data.Dataset(x, y)`` (or of a tuple ``(x, y)``): the labels are checked
against ``n_conditions`` here, on the host; each epoch's shuffle permutes x and
y together and a mesh shards both.

Streaming: with ``chunk_size`` ``data`` (a memory map, an array or a random-access source with
``__len__`` and ``__getitem__(index array)``) is read and trained ``chunk_size`` examples at a time by
:class:`aet.training.streaming.ChunkedEpoch` (a global permutation per epoch, read chunk by chunk; the
data checked chunk by chunk before compiling; ``val_data`` in memory; an end-of-epoch update sees the
epoch's last full chunk); see :mod:`aet.training.streaming`.

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
from __future__ import annotations

import json
import math
import os
import signal
import threading
import warnings
from typing import Any, Callable, NamedTuple, Optional, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from .. import checkpoint as ckpt
from ..base import check_condition, is_conditional
from ..decoders import check_support
from ..validation import check_array, check_int, check_key, check_scalar
from . import devices, streaming
from .epoch import EpochResult, make_epoch, make_evaluator
from .hooks import make_trainer
from .step import LossFn, Trainer, TrainState, Variables, identity_end, lr_scales, scale_by_lr_factor


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
    if x is not None:  # None: a streamed source, checked chunk by chunk (streaming.check_source)
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


def _as_inputs(model: nn.Module, data: Any, name: str) -> Any:
    """What the loss is fed: the data array, or for a conditional model the pair ``(x, c)``.

    A conditional model takes ``aet.data.Dataset(x, y)`` (or a tuple ``(x, y)``); its
    labels or covariates are checked here, on the host, before anything is compiled.
    """
    if not is_conditional(model):
        return _as_array(data, name)
    if isinstance(data, (tuple, list)) and not hasattr(data, "x") and len(data) == 2:
        x, c = data
    else:
        x, c = getattr(data, "x", data), getattr(data, "y", None)
    if c is None:
        raise ValueError(
            f"`{name}` has no labels, but {type(model).__name__} is conditional (n_conditions={model.n_conditions}, "
            f"condition_dim={model.condition_dim}): pass aet.data.Dataset(x, y) or the pair (x, y)"
        )
    x = _as_array(x, name)
    check_condition(model, np.asarray(c), x.shape[0], name=f"{name}'s labels y")
    return x, jnp.asarray(c)


def _data_part(x: Any) -> jax.Array:
    """The data array of ``x`` or of the pair ``(x, c)``."""
    return x[0] if isinstance(x, tuple) else x


def _n_train(x: Any) -> int:
    """The number of training examples of the placed data or of a streamed source."""
    return len(x) if isinstance(x, streaming.Source) else _data_part(x).shape[0]


def _to_host(tree: Any) -> dict[str, float]:
    return {k: float(v) for k, v in jax.device_get(tree).items()}


def _append(history: dict[str, Any], split: str, metrics: dict[str, float]) -> None:
    for k, v in metrics.items():
        history.setdefault(split, {}).setdefault(k, []).append(v)


class _Setup(NamedTuple):
    """What ``fit`` builds once before the first epoch."""

    trainer: Trainer
    state: TrainState
    x: jax.Array
    x_val: Optional[jax.Array]
    run_epoch: Callable
    end_epoch: Optional[Callable]  # None: the model has no end-of-epoch update
    evaluate: Optional[Callable]
    replicated: Any  # the sharding of the state on the mesh, or None
    signature: str  # the model configuration and leaf shapes, stored in every checkpoint


class _Run:
    """The mutable bookkeeping of one ``fit`` call (state, history, keys, checkpoints)."""

    def __init__(self, setup: _Setup, key: jax.Array) -> None:
        self.setup, self.state = setup, setup.state
        self.history: dict[str, Any] = {"epoch": [], "train": {}, "val": {}}
        self.start, self.last_ckpt = 0, None
        self.writer: Optional[ckpt.Writer] = None  # the checkpoint writer, made at the first checkpoint
        self.set_key(key)
        # NaN until the first good step: the same pytree in every epoch, so the epoch compiles once
        self.ref = jnp.full((), jnp.nan, jnp.float32)
        self.done: Optional[tuple[TrainState, int, str]] = None  # the last completed epoch, for an interrupt

    def set_key(self, key: jax.Array) -> None:
        """Use ``key`` for the run: its raw data goes into checkpoints, its splits drive the epochs."""
        self.key, self.key_data = key, np.asarray(jax.random.key_data(key))
        _, self.train_key, self.val_key = jax.random.split(key, 3)

    def payload(self, epoch: int, history_json: str) -> dict[str, Any]:
        """The checkpoint contents after ``epoch`` (and the template ``resume`` restores into)."""
        return {"state": self.state, "epoch": epoch, "history": history_json, "signature": self.setup.signature,
                "key": self.key_data}


def _check_fit_args(model: Any, loss_fn: Any, key: Any, epochs: Any, batch_size: Any, opts: dict[str, Any]) -> None:
    """``TypeError``/``ValueError`` for arguments of ``fit`` that cannot work (before anything is traced)."""
    check_key(key)
    check_int(epochs, "epochs", minimum=0)
    check_int(batch_size, "batch_size", minimum=1)
    check_int(opts["keep_checkpoints"], "keep_checkpoints", minimum=1)
    check_int(opts["metric_update_every"], "metric_update_every", minimum=1)
    if not isinstance(model, nn.Module):
        raise TypeError(f"`model` must be a flax module, got {type(model).__name__}")
    if not callable(loss_fn):
        raise TypeError(f"`loss_fn` must be a callable loss_fn(variables, x, key), got {type(loss_fn).__name__}")
    if opts["on_nonfinite"] not in ("stop", "skip"):
        raise ValueError(f"`on_nonfinite` must be 'stop' or 'skip', got {opts['on_nonfinite']!r}")
    check_scalar(opts["nonfinite_factor"], "nonfinite_factor", low=0.0, high=1.0, low_inclusive=False,
                 high_inclusive=False)
    if opts["divergence_factor"] is not None:
        check_scalar(opts["divergence_factor"], "divergence_factor", positive=True)
    checkpoint_dir, callbacks = opts["checkpoint_dir"], opts["callbacks"]
    if opts["resume"] and checkpoint_dir is None:
        raise ValueError("`resume=True` needs `checkpoint_dir` (the folder to resume from)")
    if checkpoint_dir is not None and not isinstance(checkpoint_dir, (str, os.PathLike)):
        raise TypeError(f"`checkpoint_dir` must be a path, got {type(checkpoint_dir).__name__}")
    if not callable(getattr(callbacks, "__iter__", None)) or not all(callable(cb) for cb in callbacks):
        raise TypeError("`callbacks` must be a sequence of callables cb(epoch, variables, history)")


def _check_data(model: nn.Module, data: Any, val_data: Any, batch_size: int,
                chunk_size: Optional[int] = None) -> tuple[Any, Any]:
    """``data`` and ``val_data`` as arrays (pairs ``(x, c)`` for a conditional model), checked
    (shapes, batch size, labels, the decoder's support); with ``chunk_size`` ``data`` is a
    :class:`streaming.Source`, checked chunk by chunk (``val_data`` stays in memory)."""
    if chunk_size is None and streaming.is_random_access(data):
        raise TypeError(f"`data` is a random-access source ({type(data).__name__}), not an array: pass "
                        "`chunk_size` to stream it chunk by chunk")
    if chunk_size is not None and jax.process_count() > 1:
        raise ValueError("`chunk_size`: streaming is single-process only; in a multi-process run pass each "
                         "process's shard in memory without chunk_size")
    x = _as_inputs(model, data, "data") if chunk_size is None else streaming.as_source(model, data, "data")
    n_total = _n_train(x) * jax.process_count()  # with several processes `data` is one shard
    if batch_size > n_total:
        raise ValueError(f"`batch_size` ({batch_size}) is larger than the data ({n_total} examples)")
    if chunk_size is not None:
        streaming.check_chunk_size(chunk_size, batch_size, n_total)
    x_val = None if val_data is None else _as_inputs(model, val_data, "val_data")
    xv = None if x_val is None else _data_part(x_val)
    shape = _data_part(x).shape[1:] if chunk_size is None else streaming.check_source(model, x, chunk_size)
    if xv is not None and xv.shape[1:] != shape:
        raise ValueError(f"`val_data` has per-example shape {xv.shape[1:]}, `data` has {shape}")
    _check_data_support(model, None if chunk_size is not None else _data_part(x), xv)
    return x, x_val


def _with_skip_factor(optimizer: Any, skip: bool) -> Any:
    """The optimizer ``fit`` trains with: Adam(1e-3) by default; with ``skip`` each
    transformation (each value of a dict) is followed by :func:`scale_by_lr_factor`."""
    optimizer = optax.adam(1e-3) if optimizer is None else optimizer
    if not skip:
        return optimizer
    if isinstance(optimizer, dict):
        return {k: optax.chain(o, scale_by_lr_factor()) for k, o in optimizer.items()}
    return optax.chain(optimizer, scale_by_lr_factor())


def _place(state: TrainState, x: jax.Array, x_val: Optional[jax.Array], mesh: Any, batch_size: int):
    """Put the state and data on ``mesh`` (every device when ``mesh`` is None and there are several).

    Returns ``(state, x, x_val, batch_sharding, replicated)``; the shardings are ``None`` without a mesh.
    """
    if mesh is None and jax.device_count() > 1:
        mesh = devices.data_mesh()  # data parallel over every device (of every process)
    if mesh is None:
        return state, x, x_val, None, None
    devices.check_batch_size(batch_size, mesh)
    replicated = devices.replicated(mesh)
    # the data set, replicated on every device; with several processes
    # `data` is this process's shard and the shards are concatenated
    gather = lambda t: jax.tree_util.tree_map(lambda a: devices.gather_data(a, mesh), t)  # noqa: E731  (x, c) too
    if not isinstance(x, streaming.Source):  # a source's chunks are replicated as they are read
        x = gather(x)
    if x_val is not None and jax.process_count() > 1:
        x_val = gather(x_val)
    return jax.device_put(state, replicated), x, x_val, devices.batch_sharding(mesh), replicated


def _end_data_shape(x: Any, chunk_size: Optional[int]) -> Any:
    """What the end-of-epoch update sees: the data, or for a source one chunk (its shape only)."""
    if chunk_size is None:
        return x
    first = x.read(np.arange(chunk_size))
    return jax.tree_util.tree_map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype), first)


def _setup(model: nn.Module, loss_fn: LossFn, x: Any, x_val: Optional[jax.Array], key: jax.Array,
           variables: Optional[Variables], optimizer: Any, mesh: Any, batch_size: int, policy: dict[str, Any],
           chunk_size: Optional[int] = None) -> _Setup:
    """Initialise the state, place it on the mesh and compile-ready the epoch, end-of-epoch and evaluator."""
    if variables is None:
        first = x.read(np.arange(1)) if chunk_size else jax.tree_util.tree_map(lambda a: a[:1], x)
        variables = model.init(jax.random.split(key, 3)[0], jax.tree_util.tree_map(jnp.asarray, first))
    trainer = make_trainer(model, loss_fn, optimizer)
    state, x, x_val, batch_spec, replicated = _place(trainer.init(variables), x, x_val, mesh, batch_size)
    has_end = trainer.end_epoch is not identity_end
    if chunk_size is None:
        run_epoch = jax.jit(make_epoch(trainer.step, batch_size, batch_spec, **policy))
    else:
        run_epoch = streaming.ChunkedEpoch(trainer.step, batch_size, chunk_size, len(x), sharding=batch_spec,
                                           placement=replicated, keep_sample=has_end, **policy)
    end_epoch = None
    if has_end:
        # trace the end-of-epoch update now, so that its argument errors (e.g. an RHVAE
        # with more centroids than data, or than a chunk) surface before the first epoch is trained
        try:
            jax.eval_shape(trainer.end_epoch, state, _end_data_shape(x, chunk_size))
        except ValueError as err:
            if chunk_size is None:
                raise
            raise ValueError(f"`chunk_size` ({chunk_size}): the end-of-epoch update of {type(model).__name__} "
                             f"sees one chunk of the data when streaming: {err}") from None
        end_epoch = jax.jit(trainer.end_epoch)
    evaluate = make_evaluator(loss_fn, batch_size) if x_val is not None else None
    sig = json.dumps({**ckpt.model_config(model), **ckpt.signature(state)}, sort_keys=True)
    return _Setup(trainer, state, x, x_val, run_epoch, end_epoch, evaluate, replicated, sig)


def _resume(run: _Run, checkpoint_dir: str) -> None:
    """Continue ``run`` from the newest readable checkpoint in ``checkpoint_dir`` (if any)."""
    found = ckpt.latest_valid(checkpoint_dir, run.payload(0, ""))
    if found is None:
        return
    run.last_ckpt, restored = found
    stored_key = np.asarray(restored["key"], run.key_data.dtype)
    if not np.array_equal(stored_key, run.key_data):
        warnings.warn(
            f"`key` differs from the key {run.last_ckpt} was written with; resuming with the "
            "checkpoint's key so that the run continues as it began",
            RuntimeWarning,
            stacklevel=4,
        )
        if jnp.issubdtype(run.key.dtype, jax.dtypes.prng_key):
            run.set_key(jax.random.wrap_key_data(stored_key, impl=jax.random.key_impl(run.key)))
        else:
            run.set_key(jnp.asarray(stored_key))
    state = restored["state"]
    run.state = state if run.setup.replicated is None else jax.device_put(state, run.setup.replicated)
    run.start = int(restored["epoch"]) + 1
    run.history = json.loads(restored["history"])


def _clear_old_run(checkpoint_dir: str) -> None:
    """A fresh run must not mix its checkpoints with a previous run's: remove them (process 0 only)."""
    if jax.process_index() != 0:
        return
    old = ckpt.list_checkpoints(checkpoint_dir)
    for path in old + ckpt.unfinished(checkpoint_dir):
        ckpt.remove(path)
    if old:
        warnings.warn(
            f"starting a new run in {checkpoint_dir}: removed {len(old)} checkpoint(s) of a previous run "
            "(pass resume=True to continue it instead)",
            RuntimeWarning,
            stacklevel=4,
        )


def _check_failure(run: _Run, res: EpochResult, host: dict[str, Any], epoch: int, policy: dict[str, Any]) -> None:
    """After an epoch with a failed step: warn (``skip`` while it can go on) or raise ``NonFiniteError``."""
    skip, bad = policy["skip_nonfinite"], int(host["bad_step"])
    n_skipped = int(host["metrics"]["skipped"]) if skip else 0
    scale = host["lr_scale"]
    terms = {k: float(v) for k, v in jax.device_get(res.bad_metrics).items()}
    nonfinite = sorted(k for k, v in terms.items() if k != "finite" and not math.isfinite(v))
    detail = _failure_detail(terms, nonfinite, float(run.ref), policy["divergence_factor"])
    n_batches = _n_train(run.setup.x) // policy["batch_size"]
    if skip and n_skipped < n_batches and scale >= 1e-6:
        warnings.warn(
            f"epoch {epoch}: skipped {n_skipped} of {n_batches} steps with a non-finite or diverged "
            f"loss or gradient (first at batch {bad}); {detail}; learning-rate factor now {scale:.3g}",
            RuntimeWarning,
            stacklevel=4,
        )
        return
    why = (
        f"every step of epoch {epoch} was non-finite" if skip and n_skipped >= n_batches
        else f"the learning-rate factor fell to {scale:.3g} after skipping" if skip
        else "Training stopped"
    )
    gstep = int(res.state.step)
    where = run.last_ckpt or "none written (pass checkpoint_dir to keep one)"
    msg = (
        f"non-finite or diverged loss or gradient at epoch {epoch}, batch {bad} (update {gstep}); {detail}. {why}; "
        f"the returned parameters are the last good ones. Last good checkpoint: {where}"
    )
    raise NonFiniteError(msg, variables=jax.device_get(res.state.variables), history=run.history, epoch=epoch,
                         step=gstep, terms=terms, checkpoint=run.last_ckpt)


def _record(run: _Run, host: dict[str, Any], epoch: int, skip: bool) -> dict[str, float]:
    """Append the epoch's train (and validation) metrics to ``run.history``; returns the train metrics."""
    train_metrics = {k: float(v) for k, v in host["metrics"].items() if k not in ("finite", "diverged")}
    if skip:
        train_metrics["lr_scale"] = host["lr_scale"]
    run.history["epoch"].append(epoch)
    _append(run.history, "train", train_metrics)
    setup = run.setup
    if setup.evaluate is not None:
        val = setup.evaluate(run.state.variables, setup.x_val, jax.random.fold_in(run.val_key, epoch), jnp.int32(epoch))
        _append(run.history, "val", _to_host(val))
    return train_metrics


def _run_epoch(run: _Run, epoch: int, policy: dict[str, Any]) -> dict[str, float]:
    """Train one epoch, check it, apply the end-of-epoch update and record it; returns its train metrics."""
    setup = run.setup
    # the epoch as an int32 array: a loss with an `epoch` parameter sees it, traced (compiled once)
    res = setup.run_epoch(run.state, setup.x, jax.random.fold_in(run.train_key, epoch), run.ref, jnp.int32(epoch))
    run.ref = res.ref
    # one transfer per epoch: the failure flag, the metrics and (with skip) the learning-rate factors
    host = jax.device_get({"bad_step": res.bad_step, "metrics": res.metrics,
                           "scales": lr_scales(res.state) if policy["skip_nonfinite"] else []})
    host["lr_scale"] = min(float(v) for v in host["scales"]) if host["scales"] else None
    if host["bad_step"] >= 0:
        _check_failure(run, res, host, epoch, policy)
    every = policy["metric_update_every"]
    if setup.end_epoch is not None and ((epoch + 1) % every == 0 or epoch == policy["epochs"] - 1):
        # streamed: the epoch's last full chunk (streaming.ChunkedEpoch.sample)
        end_x = setup.run_epoch.sample if isinstance(setup.x, streaming.Source) else setup.x
        run.state = setup.end_epoch(res.state, end_x)
    else:
        run.state = res.state
    return _record(run, host, epoch, policy["skip_nonfinite"])


def _finish_epoch(run: _Run, epoch: int, callbacks: Sequence[Callable], checkpoint_dir: Optional[str],
                  keep: int, bar: Any, train_metrics: dict[str, float]) -> bool:
    """Callbacks, checkpoint and progress bar after ``epoch``; ``True`` when a callback asks to stop."""
    stop = False
    for cb in callbacks:
        stop = bool(cb(epoch, run.state.variables, run.history)) or stop
    history_json = json.dumps(run.history)
    if checkpoint_dir is not None and jax.process_index() == 0:  # one writer per run
        if run.writer is None:
            run.writer = ckpt.Writer(checkpoint_dir, keep=keep, asynchronous=True)
        run.last_ckpt = run.writer.save(epoch, run.payload(epoch, history_json))
    if bar is not None:
        post = {"loss": f"{train_metrics['loss']:.4g}"}
        if run.history["val"]:
            post["val_loss"] = f"{run.history['val']['loss'][-1]:.4g}"
        bar.set_postfix(post)
        bar.update(1)
    run.done = (run.state, epoch, history_json)
    return stop


def _progress_bar(model: nn.Module, progress: bool, start: int, epochs: int) -> Any:
    """A tqdm bar over the epochs (process 0, when there is something to train), else ``None``."""
    if not (progress and epochs > start and jax.process_index() == 0):
        return None
    from tqdm.auto import tqdm

    return tqdm(total=epochs, initial=start, desc=type(model).__name__, unit="epoch")


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
    chunk_size: Optional[int] = None,
    metric_update_every: int = 1,
) -> tuple[Variables, dict[str, Any]]:
    """Train ``model`` on ``data`` and return ``(variables, history)``.

    Each epoch is one compiled ``lax.scan`` over ``n // batch_size`` shuffled
    batches; epoch ``e`` uses ``fold_in(key, e)``, so a resumed run is
    bit-identical to an uninterrupted one. Checkpoints, non-finite losses,
    divergence, the data-support check, meshes and Ctrl-C: see this module's
    documentation (:mod:`aet.training.fit`).

    Args:
        model: a flax module (its type selects the trainer, :func:`make_trainer`).
        loss_fn: a pure loss ``loss_fn(variables, x, key)``; one with an ``epoch`` parameter is given
            the epoch's index (a traced ``int32``, e.g. ``aet.disentangledbetavae.loss``).
        data: an array ``(n, *data_shape)`` or an ``aet.data.Dataset`` (with ``y`` for a conditional model).
        key: the run's ``jax.random`` key.
        optimizer: an optax transformation (default Adam 1e-3), or a dict keyed by a multi-phase model's phases.
        epochs: the total number of epochs (a resumed run continues up to it).
        batch_size: examples per step.
        val_data: validation data, evaluated after every epoch.
        progress: show a progress bar with the running loss.
        checkpoint_dir: write a checkpoint there after every epoch.
        resume: continue from the newest readable checkpoint in ``checkpoint_dir``.
        mesh: a ``jax.sharding.Mesh`` to shard every batch over (data parallel).
        callbacks: ``cb(epoch, variables, history)`` after every epoch; ``True`` stops training.
        variables: the initial variables (default ``model.init``).
        keep_checkpoints: how many checkpoints to keep.
        on_nonfinite: ``"stop"`` or ``"skip"`` a step with a non-finite loss or gradient.
        nonfinite_factor: the learning-rate factor applied at every skipped step.
        divergence_factor: a finite loss above L₀ + f·max(|L₀|, 1) fails like a non-finite one (``None``: off).
        chunk_size: stream ``data`` (a memory map, array or random-access source) to the device this many
            examples at a time, a multiple of ``batch_size`` (:mod:`aet.training.streaming`); ``None``: in memory.
        metric_update_every: run the trainer's end-of-epoch update (the RHVAE's stored metric:
            k-means selection of centroid data on the training set, then cᵢ and Mᵢ) after every
            k-th epoch and after the last one (``epochs − 1``); other models have none. With the
            RHVAE's default ``metric_source="batch"`` the loss never reads the stored metric, so
            the trained parameters and the final metric do not depend on k.

    Returns:
        ``(variables, history)`` with ``history = {"epoch": [...], "train": {metric: [...]}, "val": {...}}``.
    """
    opts = dict(checkpoint_dir=checkpoint_dir, resume=resume, callbacks=callbacks, keep_checkpoints=keep_checkpoints,
                on_nonfinite=on_nonfinite, nonfinite_factor=nonfinite_factor, divergence_factor=divergence_factor,
                metric_update_every=metric_update_every)
    _check_fit_args(model, loss_fn, key, epochs, batch_size, opts)
    x, x_val = _check_data(model, data, val_data, batch_size, chunk_size)
    skip = on_nonfinite == "skip"
    policy = dict(skip_nonfinite=skip, skip_factor=nonfinite_factor, divergence_factor=divergence_factor)
    optimizer = _with_skip_factor(optimizer, skip)
    sigint = _DeferredSigint().install()  # from here on the first Ctrl-C stops at the end of an epoch
    bar, run = None, None
    try:
        run = _Run(_setup(model, loss_fn, x, x_val, key, variables, optimizer, mesh, batch_size, policy, chunk_size), key)
        if checkpoint_dir is not None and resume:
            _resume(run, checkpoint_dir)
        elif checkpoint_dir is not None:
            _clear_old_run(checkpoint_dir)
        bar = _progress_bar(model, progress, run.start, epochs)
        _train_epochs(run, epochs, {**policy, "batch_size": batch_size, "epochs": epochs,
                                    "metric_update_every": metric_update_every}, callbacks, checkpoint_dir,
                      keep_checkpoints, bar, sigint)
    except KeyboardInterrupt as err:
        if isinstance(err, TrainingInterrupted) or run is None or run.done is None:  # still setting up
            raise
        raise _interrupted(run.done, run.last_ckpt, epochs, abandoned=True) from None  # a second Ctrl-C
    finally:
        sigint.restore()
        if bar is not None:
            bar.close()
        if run is not None and run.writer is not None:
            run.writer.close()  # the last background save is complete before fit returns or raises
    return jax.device_get(run.state.variables), run.history


def _train_epochs(run: _Run, epochs: int, policy: dict[str, Any], callbacks: Sequence[Callable],
                  checkpoint_dir: Optional[str], keep: int, bar: Any, sigint: _DeferredSigint) -> None:
    """Epochs ``run.start`` … ``epochs − 1``; a callback's ``True`` or a first Ctrl-C ends them early."""
    run.done = (run.state, run.start - 1, json.dumps(run.history))
    for epoch in range(run.start, epochs):
        train_metrics = _run_epoch(run, epoch, policy)
        if _finish_epoch(run, epoch, callbacks, checkpoint_dir, keep, bar, train_metrics):
            break
        if sigint.requested and epoch < epochs - 1:  # Ctrl-C: stop after this epoch's checkpoint
            raise _interrupted(run.done, run.last_ckpt, epochs, abandoned=False)


def load_variables(model: nn.Module, checkpoint_dir: str, x_example: Any, *, key: Optional[jax.Array] = None) -> Variables:
    """The variables stored in the newest valid checkpoint of ``checkpoint_dir``.

    ``x_example`` (one batch of data) builds the template with ``model.init``;
    only the parameters and other variable collections are read (not the
    optimizer state). ``ValueError`` when there is no readable checkpoint or it
    belongs to another model configuration.

    Args:
        model: the flax module the checkpoints were written for.
        checkpoint_dir: the folder ``fit`` wrote them to.
        x_example: one batch of data (builds the template; the pair ``(x, c)`` for a conditional model).
        key: the key of the template's ``model.init`` (its values are overwritten).

    Returns:
        The stored variables (``params`` and every other collection).
    """
    from flax import serialization

    template = model.init(jax.random.key(0) if key is None else key, jax.tree_util.tree_map(jnp.asarray, x_example))
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
    """Write ``history`` as JSON.

    Args:
        history: ``fit``'s history (or any JSON-serialisable dict).
        path: the file to write (its folder is created).
    """
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w") as f:
        json.dump(history, f, indent=1)


__all__ = ["NonFiniteError", "TrainingInterrupted", "fit", "load_variables", "save_history"]
