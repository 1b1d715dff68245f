"""Streaming ``fit``: data that do not fit in memory, fed to the compiled epoch chunk by chunk.

``fit(..., chunk_size=c)`` reads the training data as a :class:`Source` of ``n`` rows:

* an array with ``shape`` and ``dtype`` — a ``numpy.memmap`` or ``np.load(path, mmap_mode="r")``,
  a NumPy array or a JAX array (copied to the host once), or an ``aet.data.Dataset`` / pair
  ``(x, c)`` of such arrays for a conditional model;
* any random-access object with ``__len__`` and ``__getitem__(idx)``, where ``idx`` is a sorted
  1-D ``int64`` NumPy array of row numbers and the result is the rows ``(len(idx), *shape)`` as a
  NumPy array (the pair ``(x, c)`` of such arrays for a conditional model). A record source that
  takes one integer at a time (e.g. a ``grain`` random-access data source) needs a two-line
  adapter that stacks ``src[int(i)]`` over ``idx``; there is no dependency on ``grain``.

**One epoch** with key k = ``fold_in(train_key, e)``, ``b = batch_size``: ``k`` splits into a
permutation key and a chunk key. π = ``jax.random.permutation(perm_key, n)``; its first
``n − n mod b`` entries are kept (the last ``n mod b`` of the order are dropped, as in memory) and
cut into consecutive chunks of ``c`` rows; the last chunk has the rest, ``(n − n mod b) mod c``
rows, a multiple of ``b``. Chunk ``j`` reads the rows ``sort(π[j·c : (j+1)·c])`` from the source
(sorted for locality on disk), copies them to the device and runs :func:`aet.train.make_epoch`'s
compiled scan on them with the key ``fold_in(chunk_key, j)``, which shuffles the chunk's rows
again and scans ``c / b`` batches. **Shuffling guarantee**: the epoch's order is a uniformly
random permutation of the data, so every batch is a uniformly random draw of ``b`` examples
without replacement from the whole data set (not from one region of the file), every example is
visited at most once per epoch, and exactly ``n mod b`` are left out (a different set every
epoch). The chunk function compiles at most twice per run: once for ``c`` rows and once for the
last chunk's size (once if ``c`` divides ``n − n mod b``).

Between chunks the state, the divergence reference L₀, the first failed step and the metric sums
stay on the device: with ``on_nonfinite="stop"`` a chunk after a failed step leaves the state as
it was (the state is frozen for the rest of the epoch, as in memory); the failed step is reported
by its batch index within the epoch; the metrics are means over the epoch's good steps across
chunks (``skipped`` is summed). The host reads chunk ``j + 1`` while the device runs chunk ``j``
(dispatch is asynchronous); nothing inside a chunk goes back to the host. The epoch is a function
of ``(state, key, epoch)``, so checkpoint-per-epoch resume is bit-exact, and in-memory data with
the same ``chunk_size`` take this same path: the same parameters, bit for bit, as a memory map of
the same array.

**Data checks** (:func:`check_source`) read the source once before anything is compiled, chunk by
chunk in file order (never whole): the dtype and per-example shape, NaN/inf, the labels of a
conditional model and the decoder's support; an error names the rows of the chunk it was found in.
"""
from __future__ import annotations

from typing import Any, Callable, NamedTuple, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from ..base import check_condition, is_conditional
from ..decoders import check_support
from ..validation import check_array, check_int
from .epoch import EpochResult, make_epoch
from .step import Metrics, TrainState, guarded


def _is_array(a: Any) -> bool:
    return hasattr(a, "shape") and hasattr(a, "dtype")


def _canonical(dtype: Any) -> Any:
    """The dtype JAX stores ``dtype`` as (float64 → float32 without x64); non-numeric dtypes unchanged."""
    numeric = np.issubdtype(dtype, np.number) or dtype == bool
    return jax.dtypes.canonicalize_dtype(dtype) if numeric else dtype


def _host(a: Any) -> Any:
    """A host array of the dtype JAX would give it (float64 → float32 without x64); memory maps stay maps."""
    if isinstance(a, jax.Array):
        a = np.asarray(a)
    dtype = _canonical(a.dtype)
    return a if a.dtype == dtype else _CastRows(a, dtype)


class _CastRows:
    """Rows of ``a`` read with a dtype cast (so a float64 memory map is never converted whole)."""

    def __init__(self, a: Any, dtype: Any) -> None:
        self.a, self.dtype, self.shape = a, np.dtype(dtype), a.shape

    def __getitem__(self, idx: Any) -> np.ndarray:
        return np.asarray(self.a[idx], self.dtype)


class Source:
    """Training data read by rows: ``read(idx)`` gives the rows ``idx`` (the pair ``(x, c)`` when conditional).

    Args:
        read: ``read(idx) -> rows`` for a 1-D ``int64`` index array.
        n: the number of rows.
        name: the argument's name in messages.
        conditional: the rows are pairs ``(x, c)``.
    """

    def __init__(self, read: Callable[[np.ndarray], Any], n: int, name: str, conditional: bool) -> None:
        self._read, self.n, self.name, self.conditional = read, int(n), name, conditional

    def __len__(self) -> int:
        return self.n

    def read(self, idx: np.ndarray) -> Any:
        """The rows ``idx`` (a 1-D ``int64`` array): an array, or ``(x, c)`` for a conditional model."""
        out = self._read(np.asarray(idx, np.int64))
        parts = out if self.conditional else (out,)
        if self.conditional and not (isinstance(out, (tuple, list)) and len(out) == 2):
            raise TypeError(f"`{self.name}`: a conditional model needs rows as the pair (x, c), got {type(out).__name__}")
        for p in parts:
            if not _is_array(p) or p.shape[:1] != (len(idx),):
                got = tuple(p.shape) if _is_array(p) else type(p).__name__
                raise TypeError(f"`{self.name}`: reading {len(idx)} rows must give arrays with {len(idx)} rows, got {got}")
        parts = tuple(np.asarray(p, _canonical(p.dtype)) for p in parts)
        return parts if self.conditional else parts[0]


def is_random_access(data: Any) -> bool:
    """True for an object that is not an array but has ``__len__`` and ``__getitem__`` (a row source).

    Args:
        data: what ``fit`` was given as ``data``.

    Returns:
        Whether ``data`` is read through its ``__getitem__`` (tuples, lists, dicts and strings are not).
    """
    return not _is_array(data) and hasattr(data, "__len__") and hasattr(data, "__getitem__") and not isinstance(
        data, (tuple, list, dict, str))


def as_source(model: nn.Module, data: Any, name: str = "data") -> Source:
    """``data`` (an array, memory map, ``Dataset``, pair ``(x, c)`` or random-access object) as a :class:`Source`.

    Args:
        model: the model (a conditional one reads pairs ``(x, c)``).
        data: the training data.
        name: the argument's name in messages.

    Returns:
        A :class:`Source`; nothing is read yet.
    """
    conditional = is_conditional(model)
    if is_random_access(data):
        return Source(lambda idx: data[idx], len(data), name, conditional)
    if conditional:
        if isinstance(data, (tuple, list)) and not hasattr(data, "x") and len(data) == 2:
            x, c = data
        else:
            x, c = getattr(data, "x", data), getattr(data, "y", None)
        if c is None:
            raise ValueError(f"`{name}` has no labels, but {type(model).__name__} is conditional: pass "
                             "aet.data.Dataset(x, y), the pair (x, y) or a source whose rows are pairs")
        parts = (x, c)
    else:
        parts = (getattr(data, "x", data),)
    for p, what in zip(parts, (name, f"{name}'s labels y")):
        if not _is_array(p):
            raise TypeError(f"`{what}` must be an array, a memory map or a random-access source, got {type(p).__name__}")
        if len(p.shape) == 0 or p.shape[0] != parts[0].shape[0]:
            raise ValueError(f"`{what}` must have {parts[0].shape[0]} rows, got shape {tuple(p.shape)}")
    hosts = tuple(_host(p) for p in parts)
    read = (lambda idx: tuple(h[idx] for h in hosts)) if conditional else (lambda idx: hosts[0][idx])
    return Source(read, parts[0].shape[0], name, conditional)


def check_chunk_size(chunk_size: Any, batch_size: int, n: int) -> None:
    """``TypeError``/``ValueError`` naming ``chunk_size`` unless it is a multiple of ``batch_size`` within the data.

    Args:
        chunk_size: examples per chunk.
        batch_size: examples per step.
        n: the number of training examples.
    """
    check_int(chunk_size, "chunk_size", minimum=1)
    if chunk_size % batch_size:
        raise ValueError(f"`chunk_size` ({chunk_size}) must be a multiple of `batch_size` ({batch_size}); "
                         f"e.g. {max(1, chunk_size // batch_size) * batch_size}")
    if chunk_size > n:
        raise ValueError(f"`chunk_size` ({chunk_size}) is larger than the data ({n} examples)")


def _rows(a: int, b: int, c: int, n: int) -> str:
    return f"rows {a}–{b - 1} (chunk {a // c + 1} of {-(-n // c)})"


def check_source(model: nn.Module, source: Source, chunk_size: int) -> tuple[int, ...]:
    """Check every row of ``source``, one chunk at a time in file order; returns the per-example shape.

    Raises ``TypeError``/``ValueError`` naming the source and the chunk's rows: a non-floating dtype,
    a per-example shape that changes, NaN/inf, labels outside the model's conditions, data outside
    the support of ``model.decoder``'s likelihood (:func:`aet.decoders.check_support`).

    Args:
        model: the model (its decoder's support and conditions are checked).
        source: the training data.
        chunk_size: rows read at a time.

    Returns:
        The shape of one example, ``x.shape[1:]``.
    """
    decoder = getattr(model, "decoder", None)
    n, shape = len(source), None
    for a in range(0, n, chunk_size):
        b = min(a + chunk_size, n)
        where = _rows(a, b, chunk_size, n)
        rows = source.read(np.arange(a, b))
        x, c = rows if source.conditional else (rows, None)
        check_array(x, source.name, check_finite=False)
        shape = x.shape[1:] if shape is None else shape
        if x.shape[1:] != shape:
            raise ValueError(f"`{source.name}` {where}: per-example shape {x.shape[1:]}, the first rows have {shape}")
        bad = ~np.isfinite(x).reshape(len(x), -1).all(axis=1)
        if bad.any():
            raise ValueError(f"`{source.name}` {where}: {int(bad.sum())} row(s) with NaN or inf values, the first "
                             f"at row {a + int(np.argmax(bad))}; remove or impute them")
        if c is not None:
            check_condition(model, c, b - a, name=f"{source.name}'s labels y, {where}")
        if isinstance(decoder, nn.Module):
            check_support(decoder, x, name=f"{source.name} {where}")
    return tuple(shape)


class _Acc(NamedTuple):
    """What the epoch carries from chunk to chunk (on the device)."""

    state: TrainState
    bad_step: jax.Array  # batch index within the epoch of the first failed step, or -1
    bad_metrics: Metrics
    sums: Metrics  # Σ over chunks of (mean over the chunk's good steps) × (its good steps)
    n_good: jax.Array
    skipped: jax.Array
    ref: jax.Array


class ChunkedEpoch:
    """``epoch(state, source, key, ref, epoch) -> EpochResult``: one epoch over ``source``, chunk by chunk.

    The epoch of this module's documentation: the same ``EpochResult`` as :func:`aet.train.make_epoch`
    (the metrics are means over the good steps of every chunk, ``bad_step`` is the batch index within
    the epoch). With ``keep_sample`` the last full chunk of the epoch stays on the device as ``sample``
    (the bounded data an end-of-epoch update such as the RHVAE's metric sees).

    Args:
        step: ``step(state, batch, key) -> (state, metrics)`` (``make_step``).
        batch_size: examples per step.
        chunk_size: examples per chunk, a multiple of ``batch_size``.
        n: the number of training examples.
        sharding: the batch sharding (data parallel), or ``None``.
        placement: the sharding each chunk is put on (e.g. replicated on a mesh), or ``None``.
        keep_sample: keep the epoch's last full chunk as ``sample``.
        **policy: ``skip_nonfinite``, ``skip_factor``, ``divergence_factor`` of ``make_epoch``.
    """

    def __init__(self, step: Callable, batch_size: int, chunk_size: int, n: int, *, sharding: Any = None,
                 placement: Any = None, keep_sample: bool = False, **policy: Any) -> None:
        self.batch_size, self.chunk_size, self.n = batch_size, chunk_size, n
        self.placement, self.keep_sample = placement, keep_sample
        self.skip = bool(policy.get("skip_nonfinite", False))
        self._epoch = make_epoch(step, batch_size, sharding, **policy)
        self._merge = jax.jit(self._merge_chunk)
        self._finish = jax.jit(self._finish_epoch)
        self.sample: Any = None

    def starts(self) -> range:
        """The first position of every chunk in the epoch's order (the kept ``n − n mod b`` entries)."""
        return range(0, self.n - self.n % self.batch_size, self.chunk_size)

    def _merge_chunk(self, acc: _Acc, chunk: Any, key: jax.Array, epoch: Any, offset: jax.Array) -> _Acc:
        """Run ``make_epoch``'s scan on one chunk and fold its result into ``acc``."""
        res = self._epoch(acc.state, chunk, key, acc.ref, epoch)
        nb = jax.tree_util.tree_leaves(chunk)[0].shape[0] // self.batch_size
        failed = acc.bad_step >= 0
        if self.skip:  # skipped steps leave the state as it was; the run goes on
            n_good = nb - res.metrics["skipped"].astype(jnp.int32)
            state, ref = res.state, res.ref
        else:  # after a failed step the state stays frozen for the rest of the epoch
            n_good = jnp.where(failed, 0, jnp.where(res.bad_step >= 0, res.bad_step, nb))
            state, ref = guarded(acc.state, res.state, failed), jnp.where(failed, acc.ref, res.ref)
        first_bad = ~failed & (res.bad_step >= 0)
        bad_metrics = jax.tree_util.tree_map(lambda m, o: jnp.where(first_bad, m, o), res.bad_metrics, acc.bad_metrics)
        sums = {k: s + res.metrics[k] * n_good for k, s in acc.sums.items()}
        skipped = acc.skipped + res.metrics.get("skipped", jnp.float32(0))
        return _Acc(state, jnp.where(first_bad, offset + res.bad_step, acc.bad_step), bad_metrics, sums,
                    acc.n_good + n_good, skipped, ref)

    def _finish_epoch(self, acc: _Acc) -> EpochResult:
        means = {k: s / jnp.maximum(acc.n_good, 1) for k, s in acc.sums.items()}
        if self.skip:
            means["skipped"] = acc.skipped
        return EpochResult(acc.state, means, acc.bad_step, acc.bad_metrics, acc.ref)

    def _start(self, state: TrainState, chunk: Any, key: jax.Array, ref: Any, epoch: Any) -> _Acc:
        """The carry before the first chunk (zeros shaped like ``make_epoch``'s metrics)."""
        ref = jnp.asarray(jnp.nan if ref is None else ref, jnp.float32)
        shapes = jax.eval_shape(self._epoch, state, chunk, key, ref, epoch)
        zeros = jax.tree_util.tree_map(lambda s: jnp.zeros(s.shape, jnp.float32), shapes.bad_metrics)
        sums = {k: v for k, v in zeros.items() if k != "skipped"}
        return _Acc(state, jnp.int32(-1), zeros, sums, jnp.int32(0), jnp.float32(0), ref)

    def _load(self, source: Source, order: np.ndarray, start: int) -> Any:
        rows = source.read(np.sort(order[start : start + self.chunk_size]))
        return jax.device_put(rows, self.placement) if self.placement is not None else jax.device_put(rows)

    def __call__(self, state: TrainState, source: Source, key: jax.Array, ref: Any = None,
                 epoch: Any = None) -> EpochResult:
        """One epoch over ``source`` with ``key``; see the class documentation.

        Args:
            state: the training state.
            source: the training data.
            key: the epoch's key.
            ref: the divergence reference L₀ (NaN or ``None`` until the first good step).
            epoch: the epoch's index, given to a step that takes it.

        Returns:
            The epoch's ``EpochResult``.
        """
        perm_key, chunk_key = jax.random.split(key)
        starts = self.starts()
        kept = self.n - self.n % self.batch_size
        order = np.asarray(jax.random.permutation(perm_key, self.n))[:kept]
        chunk = self._load(source, order, starts[0])
        acc = self._start(state, chunk, jax.random.fold_in(chunk_key, 0), ref, epoch)
        for j, start in enumerate(starts):
            acc = self._merge(acc, chunk, jax.random.fold_in(chunk_key, j), epoch, jnp.int32(start // self.batch_size))
            if self.keep_sample and start + self.chunk_size <= kept:
                self.sample = chunk
            if j + 1 < len(starts):  # read the next chunk on the host while the device runs this one
                chunk = self._load(source, order, starts[j + 1])
        return self._finish(acc)


__all__ = ["Source", "ChunkedEpoch", "as_source", "check_chunk_size", "check_source", "is_random_access"]
