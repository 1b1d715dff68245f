"""Tempering of the momentum along a Hamiltonian flow (Caterini, Doucet & Sejdinovic 2018).

A schedule is a function ``tempering(beta0, k, K) -> β_k`` of inverse temperatures
β_0 = β₀, …, β_K. After leapfrog step k the momentum is cooled,

    ρ ← ρ·√(β_{k−1}/β_k),

which multiplies the phase-space volume by (β_{k−1}/β_k)^{d/2}, so the K coolings
together have log-determinant ½·d·log(β₀/β_K) (:func:`tempering_logdet`).
"""
from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

from ..validation import check_scalar, is_concrete

Tempering = Callable[[Any, Any, int], Any]


def check_K(K: Any) -> None:
    """Refuse a number of steps that is not an integer ≥ 1.

    Args:
        K: the number of leapfrog steps (a Python, NumPy or concrete JAX integer; a
            traced value is not checked).

    Returns:
        ``None``; ``TypeError`` for a non-integer, ``ValueError`` for K < 1.
    """
    if not is_concrete(K):
        return
    arr = np.asarray(K)
    if isinstance(K, bool) or arr.ndim != 0 or not np.issubdtype(arr.dtype, np.integer):
        raise TypeError(f"`K` must be an int, got {K!r}")
    if int(arr) < 1:
        raise ValueError(f"`K` must be >= 1, got {int(arr)}")


def check_beta0(beta0: Any) -> None:
    """Refuse an initial inverse temperature outside (0, 1].

    Args:
        beta0: β₀.

    Returns:
        ``None``; ``ValueError`` naming ``beta0`` otherwise.
    """
    check_scalar(beta0, "beta0", low=0.0, low_inclusive=False, high=1.0)


def quadratic_tempering(beta0: Any, k: Any, K: int) -> jax.Array:
    """Quadratic inverse-temperature schedule of Caterini et al. (2018):

        β_k = [(1 − 1/√β₀)·(k/K)² + 1/√β₀]⁻²,

    so β_0 = β₀ and β_K = 1.

    Computed as √β_k = √β₀·K² / [(K − k)(K + k) + √β₀·k²] (the same formula
    multiplied through by √β₀·K²): the denominator lies in [√β₀·K², K²], so
    nothing is divided by a tiny number and 1/√β₀ never appears (in float32 it
    made β_K inf for β₀ = 1e-30), and 1 − (k/K)² is formed from integers without
    cancellation. β_K = 1 exactly (numerator and denominator are the same
    product); β_0 is β₀ itself (not the rounded square of √β₀).

    Args:
        beta0: β₀ ∈ (0, 1].
        k: the step index, an integer or an array of them.
        K: the number of steps (≥ 1).

    Returns:
        β_k with ``k``'s shape; ``ValueError`` for K < 1 or β₀ ∉ (0, 1].
    """
    check_K(K)
    check_beta0(beta0)
    k = jnp.asarray(k)
    beta0 = jnp.asarray(beta0, jnp.result_type(beta0, float))
    s = jnp.sqrt(beta0)
    kf = k.astype(beta0.dtype)
    sqrt_beta = (s * K**2) / ((K - kf) * (K + kf) + s * kf**2)
    return jnp.where(k == 0, beta0, sqrt_beta**2)


def null_tempering(beta0: Any, k: Any, K: int) -> jax.Array:
    """Constant schedule: β_k = β₀ for every k (no tempering).

    Args:
        beta0: β₀ ∈ (0, 1].
        k: the step index (integer or array).
        K: the number of steps (≥ 1).

    Returns:
        β₀ broadcast to ``k``'s shape (same checks as :func:`quadratic_tempering`).
    """
    check_K(K)
    check_beta0(beta0)
    return jnp.broadcast_to(jnp.asarray(beta0, dtype=jnp.result_type(float)), jnp.shape(k))


def temper_schedule(tempering: Tempering, beta0: Any, K: int) -> jax.Array:
    """The whole schedule (β_0, …, β_K).

    Args:
        tempering: ``(beta0, k, K) -> β_k`` (vmapped over k, so one written for a
            scalar ``k`` works).
        beta0: β₀.
        K: the number of steps.

    Returns:
        ``(K+1,)`` array of ``tempering(beta0, k, K)`` for k = 0..K.
    """
    if not callable(tempering):
        raise TypeError(f"`tempering` must be a callable (beta0, k, K) -> beta_k, got {tempering!r}")
    check_K(K)
    ks = jnp.arange(int(K) + 1)
    return jax.vmap(lambda k: jnp.asarray(tempering(beta0, k, K)))(ks)


def tempered_momentum(rho: jax.Array, beta_prev: Any, beta_next: Any) -> jax.Array:
    """Cool the momentum after a leapfrog step: ρ ← ρ·√(β_{k−1}/β_k).

    Args:
        rho: the momentum ``(..., d)``.
        beta_prev: β_{k−1}.
        beta_next: β_k.

    Returns:
        The cooled momentum, ``rho``'s shape.
    """
    return rho * jnp.sqrt(beta_prev / beta_next)


def tempering_logdet(betas: jax.Array, d: int) -> jax.Array:
    """log |det| of all the coolings of a d-dimensional momentum: Σ_k ½·d·log(β_{k−1}/β_k).

    Args:
        betas: the schedule ``(K+1,)``.
        d: the latent dimension.

    Returns:
        ½·d·log(β_0/β_K), a scalar.
    """
    return 0.5 * d * (jnp.log(betas[0]) - jnp.log(betas[-1]))


__all__ = [
    "Tempering", "check_K", "check_beta0", "quadratic_tempering", "null_tempering", "temper_schedule",
    "tempered_momentum", "tempering_logdet",
]
