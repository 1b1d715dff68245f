"""Utilities: triangular factors, log-determinants, Gaussian draws in canonical form,
β annealing, and centroid selection for the RHVAE."""
from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np

from .validation import check_int, check_scalar


def vec_to_ltri(v: jax.Array, d: int) -> jax.Array:
    """Lower-triangular ``(..., d, d)`` from ``v`` ``(..., d(d+1)/2)``.

    The first ``d`` entries are the diagonal; the remaining ``d(d−1)/2`` fill the
    strictly lower triangle row by row (L[1,0], L[2,0], L[2,1], …), as the
    Julia package lays them out.
    """
    n = d * (d + 1) // 2
    if v.shape[-1] != n:
        raise ValueError(f"`v` must have {n} entries on its last axis for d={d}, got {v.shape[-1]}")
    rows, cols = np.tril_indices(d, -1)  # row-major order of the strict lower triangle
    L = jnp.zeros(v.shape[:-1] + (d, d), v.dtype)
    L = L.at[..., np.arange(d), np.arange(d)].set(v[..., :d])
    return L.at[..., rows, cols].set(v[..., d:])


def slogdet(A: jax.Array) -> jax.Array:
    """log det A for symmetric positive-definite ``A`` ``(..., d, d)`` via Cholesky:
    2 Σᵢ log Lᵢᵢ with A = L Lᵀ."""
    L = jnp.linalg.cholesky(A)
    return 2.0 * jnp.sum(jnp.log(jnp.diagonal(L, axis1=-2, axis2=-1)), axis=-1)


def sample_mvnormal_canon(key: jax.Array, mu: jax.Array, precision: jax.Array) -> jax.Array:
    """Draw from N(μ, Λ⁻¹) given the precision Λ ``(..., d, d)`` without forming Λ⁻¹:
    with Λ = L Lᵀ, x = μ + L⁻ᵀ ε, ε ~ N(0, I) (a triangular solve)."""
    L = jnp.linalg.cholesky(precision)
    eps = jax.random.normal(key, mu.shape, mu.dtype)
    y = jax.scipy.linalg.solve_triangular(jnp.swapaxes(L, -1, -2), eps[..., None], lower=False)[..., 0]
    return mu + y


def cycle_anneal(
    epoch: int, n_epoch: int, n_cycles: int, *, frac: float = 0.5, beta_max: float = 1.0, beta_min: float = 0.0
) -> float:
    """Cyclical β schedule (Fu et al. 2019), as the Julia package defines it (1-based ``epoch``):

    τ = ((epoch − 1) mod ⌈n_epoch / n_cycles⌉) / (n_epoch / n_cycles);
    β = β_min + (β_max − β_min)·τ/frac if τ ≤ frac, else β_max.
    """
    check_int(epoch, "epoch", minimum=1)
    check_int(n_epoch, "n_epoch", minimum=1)
    check_int(n_cycles, "n_cycles", minimum=1)
    check_scalar(frac, "frac", low=0.0, high=1.0)
    period = n_epoch / n_cycles
    tau = ((epoch - 1) % math.ceil(period)) / period
    if tau <= frac:
        return beta_min + (beta_max - beta_min) * (tau / frac if frac > 0 else 1.0)
    return beta_max
