"""Momentum metrics: the distribution of the momentum ρ given the position z.

A :class:`Metric` is a NamedTuple of functions (the shape of blackjax's
``mcmc.metrics``): ``sample_momentum(key, z)``, ``kinetic_energy(z, ρ)``,
``log_density(z, ρ)`` and, for a Gaussian momentum, ``inverse_mass(z)``. Two
families are built here, both Gaussian, ρ | z ~ N(0, G(z)):

* :func:`gaussian_euclidean` — a constant metric G = diag(1/m) (identity by
  default): K(ρ) = ½ ρᵀ diag(m) ρ. The HVAE uses the identity.
* :func:`gaussian_riemannian` — a position-dependent metric given by its
  inverse G⁻¹(z) (the RHVAE's): K(z, ρ) = ½ ρᵀ G⁻¹(z) ρ and

      log N(ρ; 0, G(z)) = −½(d log 2π + log det G(z) + ρᵀ G⁻¹(z) ρ),

  with log det G = −log det G⁻¹ from a pivoted Cholesky factorisation of G⁻¹
  (:func:`logdet_inverse`), never an explicit inverse.

Shapes: positions and momenta ``(..., d)``; energies and log-densities ``(...)``.
Examples are independent: the integrators differentiate batch sums.
"""
from __future__ import annotations

from typing import Any, Callable, NamedTuple, Optional

import jax
import jax.numpy as jnp

from ..distributions import LOG_2PI, gaussian_logdensity
from ..utils import sample_mvnormal_canon


class Metric(NamedTuple):
    """The momentum's distribution as functions of the position (blackjax's metric shape).

    Attributes:
        sample_momentum: ``(key, z) -> ρ ~ N(0, G(z))``, ``z``'s shape; ``None`` where unknown.
        kinetic_energy: ``(z, ρ) -> K(z, ρ)``, ``(...)``.
        log_density: ``(z, ρ) -> log p(ρ | z)``, ``(...)``; ``None`` where unknown.
        inverse_mass: ``z -> G⁻¹(z)`` ``(..., d, d)`` when K = ½ ρᵀ G⁻¹(z) ρ (the
            implicit integrator then computes ∇_z K from one linearisation of G⁻¹ per
            sweep), or ``None`` for any other kinetic energy (plain autodiff).
        inverse_mass_jacobian: ``z -> (G⁻¹(z), J)`` with ``J[..., i, j, k] = ∂G⁻¹_ij/∂z_k``
            ``(..., d, d, d)`` in closed form, used instead of that linearisation; or ``None``.
    """

    sample_momentum: Optional[Callable[[jax.Array, jax.Array], jax.Array]]
    kinetic_energy: Callable[[jax.Array, jax.Array], jax.Array]
    log_density: Optional[Callable[[jax.Array, jax.Array], jax.Array]]
    inverse_mass: Optional[Callable[[jax.Array], jax.Array]] = None
    inverse_mass_jacobian: Optional[Callable[[jax.Array], tuple[jax.Array, jax.Array]]] = None


def quadratic_form(rho: jax.Array, ginv: jax.Array) -> jax.Array:
    """ρᵀ G⁻¹ ρ over the last axes.

    Args:
        rho: ``(..., d)``.
        ginv: ``(..., d, d)``.

    Returns:
        ``(...)``.
    """
    return jnp.einsum("...i,...ij,...j->...", rho, ginv, rho)


def logdet_inverse(ginv: jax.Array, floor: Any = 0.0) -> jax.Array:
    """log det G⁻¹ of a symmetric positive-definite ``(..., d, d)``; log det G is its negative.

    A Cholesky factorisation with symmetric pivoting (largest remaining diagonal
    first, d steps of one ``lax.fori_loop``): log det = Σₖ log pₖ over the pivots.
    Every pivot of a positive-definite matrix is at least its smallest
    eigenvalue, so pivots are taken no lower than ``floor``, a known lower bound
    on the eigenvalues (λ for G⁻¹ = Σᵢ wᵢMᵢ + λI; the RHVAE passes it): when
    float32 rounding of a near-singular G⁻¹ (a near-rank-1 Mᵢ with a tiny λ)
    leaves a last pivot at or below 0, where the unpivoted Cholesky gives NaN,
    the pivot is λ, its exact value up to a factor 1 + O(off-diagonal ratios), so the
    result is finite. float32 cannot hold eigenvalues of G⁻¹ below about
    ε_mach·‖G⁻¹‖ (the matrix itself rounds them away), so the log-determinant of
    such a G⁻¹ keeps an error of up to log(1 + 4·ε_mach·‖G⁻¹‖/λ); use float64 or a
    larger λ for metrics that near-singular. With ``floor=0`` a matrix that is not
    positive-definite gives −inf.

    Args:
        ginv: the matrices ``(..., d, d)``.
        floor: a lower bound on their eigenvalues (the smallest pivot used).

    Returns:
        log det, ``(...)``.
    """
    d = ginv.shape[-1]
    idx = jnp.arange(d)
    floor = jnp.asarray(floor, ginv.dtype)

    def body(_, carry):
        S, used, acc = carry
        diag = jnp.diagonal(S, axis1=-2, axis2=-1)
        p = jnp.argmax(jnp.where(used, -jnp.inf, diag), axis=-1)
        e = (idx == p[..., None]).astype(S.dtype)  # one-hot of the pivot
        col = jnp.einsum("...ij,...j->...i", S, e)
        piv = jnp.maximum(jnp.sum(col * e, axis=-1), floor)
        keep = 1.0 - e
        S = (S - col[..., :, None] * col[..., None, :] / piv[..., None, None]) * keep[..., :, None] * keep[..., None, :]
        return S, used | (e > 0), acc + jnp.log(piv)

    init = (ginv, jnp.zeros(ginv.shape[:-1], bool), jnp.zeros(ginv.shape[:-2], ginv.dtype))
    return jax.lax.fori_loop(0, d, body, init, unroll=True)[2]


def riemannian_logprior(rho: jax.Array, ginv: jax.Array, logdet_ginv: Optional[jax.Array] = None) -> jax.Array:
    """log N(ρ; 0, G) = −½(d log 2π + log det G + ρᵀ G⁻¹ ρ) given G⁻¹.

    Args:
        rho: ``(..., d)``.
        ginv: G⁻¹ ``(..., d, d)``.
        logdet_ginv: log det G⁻¹ if known (default: :func:`logdet_inverse` with no floor).

    Returns:
        ``(...)``; log det G = −log det G⁻¹ (Cholesky, no inverse).
    """
    d = rho.shape[-1]
    if logdet_ginv is None:
        logdet_ginv = logdet_inverse(ginv)
    return -0.5 * (d * LOG_2PI - logdet_ginv + quadratic_form(rho, ginv))


def gaussian_euclidean(inverse_mass_diag: Any = None) -> Metric:
    """A constant Gaussian metric: ρ ~ N(0, diag(1/m)), K(ρ) = ½ Σ mⱼ ρⱼ².

    Args:
        inverse_mass_diag: m, a scalar or ``(d,)`` (> 0), or ``None`` for the
            identity (m = 1, the HVAE's; ρ ~ N(0, I) drawn as
            ``jax.random.normal(key, z.shape, z.dtype)``).

    Returns:
        A :class:`Metric` whose ``inverse_mass(z)`` is diag(m) broadcast to ``(..., d, d)``.
    """

    def m_of(z: jax.Array) -> jax.Array:
        one = jnp.ones(z.shape[-1:], z.dtype)
        return one if inverse_mass_diag is None else one * jnp.asarray(inverse_mass_diag, z.dtype)

    def sample_momentum(key: jax.Array, z: jax.Array) -> jax.Array:
        gamma = jax.random.normal(key, z.shape, z.dtype)
        return gamma if inverse_mass_diag is None else gamma / jnp.sqrt(m_of(z))

    def kinetic_energy(z: jax.Array, rho: jax.Array) -> jax.Array:
        return 0.5 * jnp.sum(rho**2 if inverse_mass_diag is None else m_of(z) * rho**2, axis=-1)

    def log_density(z: jax.Array, rho: jax.Array) -> jax.Array:
        return jnp.sum(gaussian_logdensity(rho, 0.0, -0.5 * jnp.log(m_of(z))), axis=-1)  # σ = 1/√m

    def inverse_mass(z: jax.Array) -> jax.Array:
        return jnp.broadcast_to(jnp.diag(m_of(z)), z.shape + z.shape[-1:])

    return Metric(sample_momentum, kinetic_energy, log_density, inverse_mass)


def gaussian_riemannian(
    inverse_metric: Callable[[jax.Array], jax.Array],
    floor: Any = 0.0,
    *,
    inverse_metric_jacobian: Optional[Callable[[jax.Array], tuple[jax.Array, jax.Array]]] = None,
) -> Metric:
    """A position-dependent Gaussian metric given by its inverse: ρ | z ~ N(0, G(z)).

    Args:
        inverse_metric: ``z (..., d) -> G⁻¹(z) (..., d, d)``, symmetric positive-definite.
        floor: a lower bound on the eigenvalues of G⁻¹ (see :func:`logdet_inverse`).
        inverse_metric_jacobian: optionally ``z -> (G⁻¹(z), ∂G⁻¹/∂z)`` in closed form
            (``Metric.inverse_mass_jacobian``); the integrators linearise ``inverse_metric`` without it.

    Returns:
        A :class:`Metric`: ρ = L⁻ᵀε with G⁻¹ = LLᵀ, ε ~ N(0, I) (reparameterised);
        K(z, ρ) = ½ ρᵀG⁻¹(z)ρ; log N(ρ; 0, G(z)).
    """

    def sample_momentum(key: jax.Array, z: jax.Array) -> jax.Array:
        return sample_mvnormal_canon(key, jnp.zeros_like(z), inverse_metric(z))

    def kinetic_energy(z: jax.Array, rho: jax.Array) -> jax.Array:
        return 0.5 * quadratic_form(rho, inverse_metric(z))

    def log_density(z: jax.Array, rho: jax.Array) -> jax.Array:
        ginv = inverse_metric(z)
        return riemannian_logprior(rho, ginv, logdet_inverse(ginv, floor))

    return Metric(sample_momentum, kinetic_energy, log_density, inverse_metric, inverse_metric_jacobian)


def kinetic_metric(kinetic_energy: Callable[[jax.Array, jax.Array], jax.Array]) -> Metric:
    """A metric known only through its kinetic energy (no sampler, no density, no G⁻¹).

    Args:
        kinetic_energy: ``(z, ρ) -> K``, ``(...)``; any differentiable function.

    Returns:
        ``Metric(None, kinetic_energy, None, None)``; the integrators differentiate it.
    """
    return Metric(None, kinetic_energy, None, None)


__all__ = [
    "Metric", "quadratic_form", "logdet_inverse", "riemannian_logprior", "gaussian_euclidean",
    "gaussian_riemannian", "kinetic_metric",
]
