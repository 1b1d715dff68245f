"""Meshes and shardings for data-parallel training (the lowest part of the training layer).

A batch ``(B, ...)`` is split over the first axis of a ``jax.sharding.Mesh``
(``batch_sharding``); parameters, optimizer state and the data set are held
whole on every device (``replicated``). ``fit`` and ``make_step(mesh=...)`` use
these; ``aet.parallel`` re-exports them with the multi-process and ``pmap``
helpers.
"""
from __future__ import annotations

from typing import Any, Optional, Sequence

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

AXIS = "batch"


def data_mesh(devices: Optional[Sequence[Any]] = None, axis_name: str = AXIS) -> Mesh:
    """A one-axis ``Mesh`` named ``axis_name`` over ``devices`` (default: every device of every process)."""
    devices = jax.devices() if devices is None else list(devices)
    if len(devices) == 0:
        raise ValueError("`devices` is empty")
    if not isinstance(axis_name, str) or not axis_name:
        raise TypeError(f"`axis_name` must be a non-empty string, got {axis_name!r}")
    return Mesh(np.asarray(devices, dtype=object), (axis_name,))


def _check_mesh(mesh: Any) -> Mesh:
    if not isinstance(mesh, Mesh):
        raise TypeError(f"`mesh` must be a jax.sharding.Mesh (e.g. aet.parallel.data_mesh()), got {type(mesh).__name__}")
    return mesh


def data_axis(mesh: Mesh) -> str:
    """The mesh axis a batch is split over: its first axis."""
    return _check_mesh(mesh).axis_names[0]


def num_shards(mesh: Mesh) -> int:
    """How many pieces a batch is cut into: the size of the mesh's first axis."""
    return int(mesh.shape[data_axis(mesh)])


def batch_sharding(mesh: Mesh) -> NamedSharding:
    """``NamedSharding`` splitting the leading (batch) dimension over the mesh's first axis."""
    return NamedSharding(mesh, PartitionSpec(data_axis(mesh)))


def replicated(mesh: Mesh) -> NamedSharding:
    """``NamedSharding`` holding a full copy on every device of ``mesh``."""
    return NamedSharding(_check_mesh(mesh), PartitionSpec())


def check_batch_size(batch_size: int, mesh: Mesh, name: str = "batch_size", axis: Optional[str] = None) -> None:
    """``ValueError`` unless ``batch_size`` is a multiple of the size of the mesh axis the batch is split over.

    Args:
        batch_size: the number of examples in one (global) batch.
        mesh: the mesh.
        name: the argument's name in the error message.
        axis: the mesh axis the batch is split over (default: the first, ``data_axis(mesh)``).
    """
    axis = data_axis(mesh) if axis is None else axis
    n = int(mesh.shape[axis])
    if batch_size % n:
        lo, hi = (batch_size // n) * n, (batch_size // n + 1) * n
        hint = f"{lo} or {hi}" if lo else f"{hi}"
        raise ValueError(
            f"`{name}` ({batch_size}) must be divisible by the {n} devices of the mesh axis "
            f"{axis!r} (each device takes an equal share of the batch); use e.g. {hint}, "
            "or pass `mesh=aet.parallel.data_mesh(jax.devices()[:k])` for a divisor k"
        )


def gather_data(x: Any, mesh: Mesh) -> jax.Array:
    """The whole data set, replicated on every device of ``mesh``, from each process's rows.

    ``x`` is this process's shard ``(m, ...)``; every process must pass the
    same shape (``process_shard`` does). The result is the shards
    concatenated in process order, ``(num_processes·m, ...)``. With a single
    process this is ``jax.device_put(x, replicated(mesh))``.
    """
    rep = replicated(mesh)
    if jax.process_count() == 1:
        return jax.device_put(x, rep)
    from jax.experimental import multihost_utils

    x = np.asarray(x)
    ndims = np.asarray(multihost_utils.process_allgather(np.int64(x.ndim)))
    shapes = None
    if np.all(ndims == x.ndim):
        shapes = np.asarray(multihost_utils.process_allgather(np.asarray(x.shape, np.int64)))
    if shapes is None or not np.all(shapes == shapes[0]):
        got = ndims.tolist() if shapes is None else [tuple(s) for s in shapes.tolist()]
        raise ValueError(
            "every process must pass data of the same shape (use aet.parallel.process_shard); "
            f"got {'ranks' if shapes is None else 'shapes'} {got} on processes 0..{len(got) - 1}"
        )
    full = np.asarray(multihost_utils.process_allgather(x, tiled=True))
    return jax.device_put(full, rep)


__all__ = ["AXIS", "data_mesh", "data_axis", "num_shards", "batch_sharding", "replicated", "check_batch_size", "gather_data"]
