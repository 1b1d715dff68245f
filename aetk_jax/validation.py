"""Argument checks shared by every public entry point.

Checks on values (NaN, sign, range) run only when the value is concrete; under
``jit`` or ``vmap`` the value is a tracer and only its shape and dtype are
checked, so validation never forces a host round-trip inside compiled code.
"""
from __future__ import annotations

import numbers
from typing import Any, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np


def is_concrete(value: Any) -> bool:
    """True when ``value`` holds data (not an abstract tracer)."""
    leaves = jax.tree_util.tree_leaves(value)
    return not any(isinstance(leaf, jax.core.Tracer) for leaf in leaves)


def check_array(
    x: Any,
    name: str = "x",
    *,
    min_ndim: int = 2,
    data_shape: Optional[Sequence[int]] = None,
    allow_int: bool = False,
    check_finite: bool = True,
) -> None:
    """Check a batch-first data array ``(batch, *data_shape)``.

    Raises ``TypeError`` for non-arrays and integer/bool dtypes (unless
    ``allow_int``), ``ValueError`` for too few axes, an empty batch, a data
    shape other than ``data_shape``, or NaN/inf entries (when concrete).
    """
    if not hasattr(x, "shape") or not hasattr(x, "dtype"):
        raise TypeError(f"`{name}` must be an array, got {type(x).__name__}")
    dtype = jnp.dtype(x.dtype)
    if not jnp.issubdtype(dtype, jnp.floating):
        if not (allow_int and jnp.issubdtype(dtype, jnp.integer)):
            raise TypeError(
                f"`{name}` must have a floating dtype, got {dtype}; convert it "
                f"explicitly, e.g. `{name}.astype(jnp.float32) / 255` for 8-bit images"
            )
    if x.ndim < min_ndim:
        raise ValueError(
            f"`{name}` must be batch-first with at least {min_ndim} axes "
            f"(batch, ...), got shape {tuple(x.shape)}"
        )
    if x.shape[0] == 0:
        raise ValueError(f"`{name}` is empty (batch size 0)")
    if data_shape is not None and tuple(x.shape[1:]) != tuple(data_shape):
        raise ValueError(
            f"`{name}` has per-example shape {tuple(x.shape[1:])}, but the model "
            f"expects {tuple(data_shape)}"
        )
    if check_finite and is_concrete(x):
        if not bool(np.all(np.isfinite(np.asarray(x)))):
            raise ValueError(f"`{name}` contains NaN or inf values")


def check_scalar(
    value: Any,
    name: str,
    *,
    positive: bool = False,
    nonnegative: bool = False,
    low: Optional[float] = None,
    high: Optional[float] = None,
    low_inclusive: bool = True,
    high_inclusive: bool = True,
    allow_vector: bool = False,
) -> None:
    """Check a hyper-parameter (a Python or array scalar; a vector if allowed).

    Skipped when ``value`` is a tracer. Raises ``ValueError`` naming ``name``.
    """
    if not is_concrete(value):
        return
    arr = np.asarray(value)
    if arr.ndim > 0 and not allow_vector:
        raise ValueError(f"`{name}` must be a scalar, got shape {arr.shape}")
    if not np.issubdtype(arr.dtype, np.number) or np.issubdtype(arr.dtype, np.complexfloating):
        raise TypeError(f"`{name}` must be a real number, got {value!r}")
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"`{name}` must be finite, got {value!r}")
    if positive and not np.all(arr > 0):
        raise ValueError(f"`{name}` must be > 0, got {value!r}")
    if nonnegative and not np.all(arr >= 0):
        raise ValueError(f"`{name}` must be >= 0, got {value!r}")
    if low is not None:
        bad = np.any(arr < low) if low_inclusive else np.any(arr <= low)
        if bad:
            op = ">=" if low_inclusive else ">"
            raise ValueError(f"`{name}` must be {op} {low}, got {value!r}")
    if high is not None:
        bad = np.any(arr > high) if high_inclusive else np.any(arr >= high)
        if bad:
            op = "<=" if high_inclusive else "<"
            raise ValueError(f"`{name}` must be {op} {high}, got {value!r}")


def check_int(value: Any, name: str, *, minimum: int) -> None:
    """Check a static integer argument (a step count, a sample count)."""
    if isinstance(value, bool) or not isinstance(value, (numbers.Integral, np.integer)):
        raise TypeError(f"`{name}` must be an int, got {value!r}")
    if value < minimum:
        raise ValueError(f"`{name}` must be >= {minimum}, got {value}")


def check_key(key: Any, name: str = "key") -> None:
    """Check that ``key`` looks like a ``jax.random`` key."""
    if key is None:
        raise TypeError(f"`{name}` must be a jax.random key, got None")
    if not hasattr(key, "dtype"):
        raise TypeError(f"`{name}` must be a jax.random key, got {type(key).__name__}")
    if jnp.issubdtype(key.dtype, jax.dtypes.prng_key):
        return
    if key.dtype != jnp.uint32 or key.shape[-1:] != (2,):
        raise TypeError(
            f"`{name}` must be a jax.random key (jax.random.key(0) or PRNGKey(0)), "
            f"got dtype {key.dtype} and shape {tuple(key.shape)}"
        )
