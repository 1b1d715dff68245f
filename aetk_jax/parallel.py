"""Data-parallel training on several devices and several processes (hosts).

Four levels, from automatic to manual; none of them needs ``jax.pmap`` except
the last, which is kept for code that calls it:

1. ``aet.train.fit(..., mesh=mesh)`` shards every batch over ``mesh``'s first
   axis and keeps the parameters replicated. With ``mesh=None`` and more than
   one device, ``fit`` builds ``data_mesh()`` (every device) itself; with a
   single device nothing changes. This is ``jit`` with shardings.
2. ``aet.train.make_step(loss_fn, optimizer, mesh=mesh)`` in your own loop: the
   batch is constrained to ``batch_sharding(mesh)`` inside the jitted step;
   XLA (GSPMD) inserts the gradient all-reduce.
3. ``shard_map_step(loss_fn, optimizer, mesh)``: ``jax.shard_map`` of
   ``make_step(..., jit=False, axis_name=axis)``, jitted; the state is
   replicated (``P()``), the batch split over ``axis`` (``P(axis)``), and the
   collective is explicit: the step averages gradients and metrics with
   ``lax.pmean`` over ``axis``.
4. ``jax.pmap``: ``pmap_step(loss_fn, optimizer)`` (or ``jax.pmap`` of
   ``make_step(..., jit=False, axis_name="batch")``), the same per-device step
   as level 3, on states and batches with a leading device axis.

Levels 3 and 4 run one and the same step, ``make_step(..., axis_name=...)``
(both accept ``phases`` for multi-optimizer models), so for the same key they
give the same update (bit for bit in the tests).

The loss is the mean over the global batch in every case, so for a batch of
``B`` examples split over ``n`` devices the update is the one a single device
computes for the whole batch, up to the order of floating-point additions:
``mean_b loss_b = (1/n) sum_d mean_{b in shard d} loss_b`` for equal shards.

Random numbers. In levels 1 and 2 the step is one ``jit`` program over the
global batch and draws its noise with the single key it is given; ``jit``
guarantees that the values of ``jax.random`` draws do not depend on how the
result is sharded, so the noise, and hence the update, does not depend on the
device count. JAX's default ``jax_threefry_partitionable=True`` makes each
device generate only its own slice of the draw, with no communication (with
``False`` the values are the same but XLA gathers them). In levels 3 and 4
each device runs the loss on its own shard, so ``make_step(axis_name=...)``
folds the device's index into the key (``fold_in(key, axis_index)``): a key
broadcast to every device gives independent noise on each shard. That update
is then statistically, not bitwise, the same as the sharded one; with a
deterministic loss (an AE) all four levels give the single-device update.

Layering: the mesh primitives live in ``aet.training.devices`` (below the
training step, which uses them); this module re-exports them and adds the
multi-process set-up and the ``shard_map``/``pmap`` steps on top of ``aet.train``.

Several processes: call ``initialize()`` first (before any other JAX call),
give each process its rows (``process_shard``), and call ``fit`` as usual:
it gathers the per-process rows into one global data set (``gather_data``)
and trains on the global mesh of every process's devices.
"""
from __future__ import annotations

import os
from typing import Any, Callable, NamedTuple, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import Mesh, PartitionSpec

from . import train
from .training.devices import (  # noqa: F401  (the mesh primitives, re-exported)
    AXIS,
    batch_sharding,
    check_batch_size,
    data_axis,
    data_mesh,
    gather_data,
    num_shards,
    replicated,
)
from .training.step import Step
from .validation import check_int

ENV_COORDINATOR = "AETK_COORDINATOR"
ENV_NUM_PROCESSES = "AETK_NUM_PROCESSES"
ENV_PROCESS_ID = "AETK_PROCESS_ID"
ENV_LOCAL_DEVICE_IDS = "AETK_LOCAL_DEVICE_IDS"
_SLURM_VARS = ("SLURM_JOB_ID", "SLURM_STEP_NODELIST", "SLURM_NTASKS", "SLURM_PROCID", "SLURM_LOCALID")


class ProcessInfo(NamedTuple):
    """Where this process stands: its index, the process count and the device counts."""

    process_id: int
    num_processes: int
    local_device_count: int
    device_count: int


def process_info() -> ProcessInfo:
    """The current ``ProcessInfo`` (initialises the JAX backend)."""
    return ProcessInfo(jax.process_index(), jax.process_count(), jax.local_device_count(), jax.device_count())


def replicate(tree: Any, mesh: Mesh) -> Any:
    """``tree`` copied onto every device of ``mesh`` (parameters, optimiser state).

    With several processes every process must pass the same values (e.g. the
    parameters initialised from the same key).
    """
    return jax.device_put(tree, replicated(mesh))


def shard_batch(batch: Any, mesh: Mesh) -> jax.Array:
    """One global batch, split over the mesh's first axis, from each process's local rows.

    ``batch`` is this process's part ``(b_local, ...)``; the result has shape
    ``(num_processes * b_local, ...)`` with process ``p``'s rows at
    ``[p * b_local, (p + 1) * b_local)``. With one process this is
    ``jax.device_put(batch, batch_sharding(mesh))``. Built with
    ``jax.make_array_from_process_local_data``.
    """
    batch = np.asarray(batch)
    sharding = batch_sharding(mesh)
    if batch.ndim == 0:
        raise ValueError("`batch` must have a leading batch dimension")
    local = sum(1 for d in mesh.devices.flat if d.process_index == jax.process_index())
    if local == 0 or batch.shape[0] % local:
        raise ValueError(
            f"`batch` has {batch.shape[0]} rows on this process, which must be divisible by its "
            f"{local} devices in the mesh"
        )
    if jax.process_count() == 1:
        return jax.device_put(batch, sharding)
    return jax.make_array_from_process_local_data(sharding, batch)


# ---------------------------------------------------------------------------
# several processes


def _env(name: str) -> Optional[str]:
    value = os.environ.get(name, "").strip()
    return value or None


def _env_int(name: str) -> Optional[int]:
    value = _env(name)
    if value is None:
        return None
    try:
        return int(value)
    except ValueError:
        raise ValueError(f"environment variable {name}={value!r} is not an integer") from None


def _cluster_detected() -> bool:
    """True inside a SLURM step (``srun``) or an Open MPI launch, which JAX detects itself."""
    return all(v in os.environ for v in _SLURM_VARS) or "OMPI_COMM_WORLD_SIZE" in os.environ


def _enable_cpu_collectives() -> None:
    """Use gloo for cross-process collectives on CPU where the option exists and is off."""
    try:
        current = jax.config.values.get("jax_cpu_collectives_implementation")
    except AttributeError:  # pragma: no cover - very old jax
        return
    if current in (None, "none"):
        jax.config.update("jax_cpu_collectives_implementation", "gloo")


def initialize(
    coordinator_address: Optional[str] = None,
    num_processes: Optional[int] = None,
    process_id: Optional[int] = None,
    local_device_ids: Optional[int | Sequence[int]] = None,
    *,
    initialization_timeout: int = 300,
) -> ProcessInfo:
    """Join a multi-process (multi-host) JAX run; call it before any other JAX computation.

    Each argument left ``None`` is read from the environment:
    ``AETK_COORDINATOR`` (``"host:port"`` of process 0), ``AETK_NUM_PROCESSES``,
    ``AETK_PROCESS_ID`` and ``AETK_LOCAL_DEVICE_IDS`` (comma-separated). If none
    is set and the process runs inside a SLURM step (``srun``) or under Open
    MPI, ``jax.distributed.initialize`` reads the cluster's own variables
    (``SLURM_NTASKS``, ``SLURM_PROCID``, ``SLURM_STEP_NODELIST``, ...). If
    nothing is configured at all, this is a single-process run and nothing is
    done. On CPU, cross-process collectives use gloo.

    Returns the ``ProcessInfo`` after joining.
    """
    if coordinator_address is None:
        coordinator_address = _env(ENV_COORDINATOR)
    if num_processes is None:
        num_processes = _env_int(ENV_NUM_PROCESSES)
    if process_id is None:
        process_id = _env_int(ENV_PROCESS_ID)
    if local_device_ids is None and _env(ENV_LOCAL_DEVICE_IDS) is not None:
        try:
            local_device_ids = [int(s) for s in _env(ENV_LOCAL_DEVICE_IDS).split(",") if s.strip()]
        except ValueError:
            raise ValueError(f"{ENV_LOCAL_DEVICE_IDS} must be comma-separated integers") from None

    if coordinator_address is not None and (not isinstance(coordinator_address, str) or ":" not in coordinator_address):
        raise ValueError(f"`coordinator_address` must be 'host:port', got {coordinator_address!r}")
    if num_processes is not None:
        check_int(num_processes, "num_processes", minimum=1)
    if process_id is not None:
        check_int(process_id, "process_id", minimum=0)
        if num_processes is not None and process_id >= num_processes:
            raise ValueError(f"`process_id` ({process_id}) must be smaller than `num_processes` ({num_processes})")
    check_int(initialization_timeout, "initialization_timeout", minimum=1)

    if getattr(jax.distributed, "is_initialized", lambda: False)():
        return process_info()
    given = {"coordinator_address": coordinator_address, "num_processes": num_processes, "process_id": process_id}
    if all(v is None for v in given.values()):
        if not _cluster_detected():
            return process_info()  # a plain single-process run
    elif num_processes == 1 and coordinator_address is None:
        return process_info()
    elif not _cluster_detected():
        missing = [k for k, v in given.items() if v is None]
        if missing:
            env = {"coordinator_address": ENV_COORDINATOR, "num_processes": ENV_NUM_PROCESSES, "process_id": ENV_PROCESS_ID}
            raise ValueError(
                "multi-process setup is incomplete: missing "
                + ", ".join(f"`{k}` (or {env[k]})" for k in missing)
            )
    _enable_cpu_collectives()
    jax.distributed.initialize(
        coordinator_address=coordinator_address,
        num_processes=num_processes,
        process_id=process_id,
        local_device_ids=local_device_ids,
        initialization_timeout=initialization_timeout,
    )
    return process_info()


def _shard_rows(x: Any, i: int, p: int, mode: str) -> Any:
    n = x.shape[0] // p
    if mode == "contiguous":
        return x[i * n : (i + 1) * n]
    return x[i::p][:n]


def process_shard(
    data: Any,
    *,
    process_id: Optional[int] = None,
    num_processes: Optional[int] = None,
    mode: str = "contiguous",
) -> Any:
    """This process's rows of ``data`` (an array ``(n, ...)`` or an ``aet.data.Dataset``).

    Every process gets ``n // num_processes`` rows (the last ``n % num_processes``
    are dropped so that all shards have the same shape, which ``fit`` needs):
    ``mode="contiguous"`` gives rows ``[i·m, (i+1)·m)`` of process ``i`` (``m`` the
    shard size), so the shards in process order are the data in its original
    order, and ``fit`` on the shards equals ``fit`` on ``data[:num_processes·m]``;
    ``mode="strided"`` gives rows ``i, i+P, i+2P, …``. Defaults: the current
    process and process count.
    """
    p = jax.process_count() if num_processes is None else num_processes
    i = jax.process_index() if process_id is None else process_id
    check_int(p, "num_processes", minimum=1)
    check_int(i, "process_id", minimum=0)
    if i >= p:
        raise ValueError(f"`process_id` ({i}) must be smaller than `num_processes` ({p})")
    if mode not in ("contiguous", "strided"):
        raise ValueError(f"`mode` must be 'contiguous' or 'strided', got {mode!r}")
    x = getattr(data, "x", data)
    if np.ndim(x) < 1:
        raise ValueError("`data` must have a leading example dimension")
    if x.shape[0] < p:
        raise ValueError(f"`data` has {x.shape[0]} examples, fewer than the {p} processes")
    if hasattr(data, "x") and hasattr(data, "_replace"):  # an aet.data.Dataset
        y = getattr(data, "y", None)
        return data._replace(x=_shard_rows(x, i, p, mode), y=None if y is None else _shard_rows(y, i, p, mode))
    return _shard_rows(x, i, p, mode)


# ---------------------------------------------------------------------------
# the per-device step (shard_map and pmap)


def _axis_step(
    loss_fn: Optional[train.LossFn],
    optimizer: Optional[optax.GradientTransformation],
    axis_name: str,
    guard: bool,
    phases: Optional[Sequence[train.Phase]],
) -> Step:
    """The one step both mapped levels run on each device: ``make_step(..., jit=False, axis_name=axis_name)``."""
    if phases is None and (loss_fn is None or optimizer is None):
        raise TypeError("`loss_fn` and `optimizer` are required unless `phases` is given")
    return train.make_step(loss_fn, optimizer, jit=False, guard=guard, axis_name=axis_name, phases=phases)


def _mesh_axis(mesh: Any, axis_name: Optional[str]) -> str:
    """``axis_name`` (default: ``mesh``'s first axis), checked to be one of ``mesh``'s axes."""
    if axis_name is None:
        return data_axis(mesh)  # TypeError naming `mesh` when it is not a Mesh
    data_axis(mesh)
    if not isinstance(axis_name, str):
        raise TypeError(f"`axis_name` must be a string (a mesh axis name), got {type(axis_name).__name__}")
    if axis_name not in mesh.axis_names:
        raise ValueError(f"`axis_name` {axis_name!r} is not an axis of `mesh`, whose axes are {tuple(mesh.axis_names)}")
    return axis_name


def _check_global_batch(batch: Any, mesh: Mesh, axis: str) -> None:
    """``ValueError`` naming ``batch`` unless every leaf has the same leading size, divisible by ``axis``'s size."""
    leaves = jax.tree_util.tree_leaves(batch)
    if not leaves or any(jnp.ndim(a) == 0 for a in leaves):
        raise ValueError("`batch` must be an array (or a pytree of arrays) with a leading batch dimension")
    sizes = {int(jnp.shape(a)[0]) for a in leaves}
    if len(sizes) > 1:
        raise ValueError(f"every array in `batch` must have the same leading (batch) size, got {sorted(sizes)}")
    check_batch_size(sizes.pop(), mesh, "batch", axis=axis)


def shard_map_step(
    loss_fn: Optional[train.LossFn] = None,
    optimizer: Optional[optax.GradientTransformation] = None,
    mesh: Optional[Mesh] = None,
    axis_name: Optional[str] = None,
    *,
    guard: bool = True,
    phases: Optional[Sequence[train.Phase]] = None,
) -> Step:
    """``jax.jit`` of ``jax.shard_map`` of ``make_step(loss_fn, optimizer, jit=False, axis_name=axis)``.

    Call it as ``step(state, batch, key, epoch=None) -> (state, metrics)``,
    like ``make_step``'s step: ``state`` is one (unreplicated) ``TrainState``,
    ``batch`` the global batch ``(B, ...)`` (or a pytree of such arrays),
    ``key`` one key. Inside, the state, key and epoch are replicated (``P()``)
    and the batch is split over ``axis`` (``P(axis)``): each device runs the
    step on its ``B / n`` examples with the key ``fold_in(key, axis_index)``,
    and the gradients and metrics are averaged with ``lax.pmean``, so the
    returned state is replicated on ``mesh``. This is the step ``pmap_step``
    maps, so the two give the same update for the same key.

    ``check_vma=False``: with JAX's varying-value checks on, the gradient of
    the replicated parameters would already be summed over the axis before
    the step's own ``pmean``, an update ``n`` times too large.

    Args:
        loss_fn: ``loss_fn(variables, x, key)`` (``None`` with ``phases``).
        optimizer: an optax transformation (``None`` with ``phases``).
        mesh: a ``jax.sharding.Mesh`` (default: ``data_mesh()``, every device).
        axis_name: the mesh axis to split the batch over and average across
            (default: the mesh's first axis); any other axis holds copies.
        guard: keep the old state when a loss or gradient is non-finite.
        phases: instead of ``loss_fn`` and ``optimizer``, a multi-optimizer
            model's ``aet.train.Phase`` sequence (as ``make_step``).

    Returns:
        The jitted step; a batch whose size is not divisible by the size of
        ``axis`` raises ``ValueError`` when it is first traced.
    """
    mesh = data_mesh() if mesh is None else mesh
    axis = _mesh_axis(mesh, axis_name)
    rep, split = PartitionSpec(), PartitionSpec(axis)
    mapped = jax.shard_map(
        _axis_step(loss_fn, optimizer, axis, guard, phases),
        mesh=mesh, in_specs=(rep, split, rep, rep), out_specs=rep, check_vma=False,
    )

    def step(state: train.TrainState, batch: Any, key: jax.Array, epoch: Any = None):
        _check_global_batch(batch, mesh, axis)
        return mapped(state, batch, key, epoch)

    return jax.jit(step)


def pmap_step(
    loss_fn: Optional[train.LossFn] = None,
    optimizer: Optional[optax.GradientTransformation] = None,
    *,
    axis_name: str = AXIS,
    guard: bool = True,
    devices: Optional[Sequence[Any]] = None,
    phases: Optional[Sequence[train.Phase]] = None,
) -> Callable[[train.TrainState, jax.Array, jax.Array], tuple[train.TrainState, train.Metrics]]:
    """``jax.pmap`` of ``make_step(loss_fn, optimizer, jit=False, axis_name=axis_name)``.

    Call it as ``step(states, batches, key)``: ``states`` has a leading device
    axis (``pmap_replicate(state)``), ``batches`` is ``(n_devices, b, ...)``
    (``split_for_pmap(batch, n_devices)``), and ``key`` is one key, broadcast
    (each device folds in its index). Gradients and metrics are averaged
    with ``lax.pmean``, so the returned states are identical on every device.
    ``jax.pmap`` is in maintenance mode; ``shard_map_step`` runs the same
    step on a mesh without it.

    Args:
        loss_fn: ``loss_fn(variables, x, key)`` (``None`` with ``phases``).
        optimizer: an optax transformation (``None`` with ``phases``).
        axis_name: the name of the mapped axis.
        guard: keep the old state when a loss or gradient is non-finite.
        devices: the devices to map over (default: every local device).
        phases: instead of ``loss_fn`` and ``optimizer``, a multi-optimizer
            model's ``aet.train.Phase`` sequence (as ``make_step``).

    Returns:
        The ``pmap``-ed step.
    """
    step = _axis_step(loss_fn, optimizer, axis_name, guard, phases)
    return jax.pmap(step, axis_name=axis_name, in_axes=(0, 0, None), devices=devices)


def pmap_replicate(tree: Any, n_devices: Optional[int] = None) -> Any:
    """``tree`` with a new leading axis of ``n_devices`` identical copies (default: local device count)."""
    n = jax.local_device_count() if n_devices is None else n_devices
    check_int(n, "n_devices", minimum=1)
    return jax.tree_util.tree_map(lambda a: jnp.broadcast_to(a, (n, *jnp.shape(a))), tree)


def unreplicate(tree: Any) -> Any:
    """The first copy of a ``pmap``-replicated ``tree`` (drops the device axis)."""
    return jax.tree_util.tree_map(lambda a: a[0], tree)


def split_for_pmap(batch: jax.Array, n_devices: Optional[int] = None) -> jax.Array:
    """``(B, ...)`` → ``(n_devices, B / n_devices, ...)``; ``ValueError`` if ``B`` is not divisible."""
    n = jax.local_device_count() if n_devices is None else n_devices
    check_int(n, "n_devices", minimum=1)
    b = jnp.shape(batch)[0]
    if b % n:
        raise ValueError(f"the batch size ({b}) must be divisible by `n_devices` ({n})")
    return jnp.reshape(batch, (n, b // n, *jnp.shape(batch)[1:]))


__all__ = [
    "AXIS",
    "ProcessInfo",
    "process_info",
    "data_mesh",
    "data_axis",
    "num_shards",
    "batch_sharding",
    "replicated",
    "check_batch_size",
    "replicate",
    "shard_batch",
    "initialize",
    "process_shard",
    "gather_data",
    "shard_map_step",
    "pmap_step",
    "pmap_replicate",
    "unreplicate",
    "split_for_pmap",
]
