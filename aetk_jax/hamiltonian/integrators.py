"""Integrators of Hamilton's equations for H(z, ρ) = V(z) + K(z, ρ), shaped like blackjax.

An integrator is built by a factory and advances an :class:`IntegratorState`
(position z, momentum ρ and the cached potential gradient ∇V(z), so a chain of
steps costs one ∇V per step): ``step(state, eps) -> (state, info)``.

* :func:`leapfrog` — the explicit (Störmer–Verlet) leapfrog for a constant metric,
  K = ½ ρᵀ M⁻¹ ρ (identity by default):

      ρ̃ = ρ − ε/2·∇V(z),   z̄ = z + ε·M⁻¹ρ̃,   ρ̄ = ρ̃ − ε/2·∇V(z̄).

  Symplectic and time-reversible; its energy error is O(ε²). ``info`` is ``None``.
* :func:`implicit_leapfrog` — the generalised leapfrog (Girolami & Calderhead 2011)
  for a position-dependent metric:

      ρ̃ = ρ − ε/2·∇_z H(z, ρ̃)                        (implicit in ρ̃)
      z̄ = z + ε/2·[∇_ρ H(z, ρ̃) + ∇_ρ H(z̄, ρ̃)]         (implicit in z̄)
      ρ̄ = ρ̃ − ε/2·∇_z H(z̄, ρ̃)                         (explicit)

  Each implicit equation is written for the increment δ = x − base (δ = f(δ)) and
  handed to a swappable fixed-point ``solver(f, δ₀, base) -> (δ, SolverInfo)``:
  :func:`fixed_point_iteration` (a fixed number of sweeps restarting from the base
  point, as the paper writes them; differentiable in reverse mode) or
  :func:`fixed_point_until` (stops at a tolerance; forward use only). ``info`` is
  :class:`ImplicitInfo` with a :class:`SolverInfo` ``(success, norm, iters)`` per equation.

  When the metric gives ``inverse_mass`` (K = ½ ρᵀ G⁻¹(z) ρ), G⁻¹(z) and its d
  derivatives ∂G⁻¹/∂z_k at a fixed point z (:func:`kinetic_cache`: the metric's
  closed-form ``inverse_mass_jacobian``, else one ``jax.linearize``) are computed once
  and ∇_z K(z, ρ) = ½ ρᵀ ∂G⁻¹(z)/∂z ρ is a contraction per iteration, instead of
  differentiating through G⁻¹ at every iteration; the first z̄ term reuses G⁻¹(z)
  and the z̄ sweep evaluates G⁻¹(z̄)ρ̃ directly. Otherwise K is differentiated by
  ``jax.grad``. A state that carries ``kinetic_cache`` (the pair at its position)
  gets the pair at the new position back, so a chain of K steps computes it K + 1
  times, not 2K: start the chain from ``IntegratorState(z, ρ, ∇V(z),
  kinetic_cache(metric, z))``.

Examples must be independent (∇ of a batch sum is the per-example gradient).
"""
from __future__ import annotations

import functools
from typing import Any, Callable, NamedTuple, Optional

import jax
import jax.numpy as jnp

from .metrics import Metric

Array = jax.Array
Solver = Callable[[Callable[[Array], Array], Array, Array], "tuple[Array, SolverInfo]"]


class IntegratorState(NamedTuple):
    """A point of phase space with its cached potential gradient.

    Attributes:
        position: z, ``(..., d)``.
        momentum: ρ, ``(..., d)``.
        potential_grad: ∇V(z), ``(..., d)``.
        kinetic_cache: ``(G⁻¹(z), ∂G⁻¹/∂z)`` at the position (:func:`kinetic_cache`) for the
            implicit leapfrog, carried from step to step; ``None``: computed inside each step.
    """

    position: Array
    momentum: Array
    potential_grad: Array
    kinetic_cache: Any = None


class SolverInfo(NamedTuple):
    """How a fixed-point solve ended.

    Attributes:
        success: ``norm <= tol`` per example, ``(...)`` bool.
        norm: the relative residual ‖f(δ) − δ‖ / (‖δ‖ + τ) at the returned δ, ``(...)``
            (:func:`relative_residual`; 0 when solved, ≳ 1 when the map does not contract).
        iters: the number of sweeps made, a scalar int.
    """

    success: Array
    norm: Array
    iters: Array


class ImplicitInfo(NamedTuple):
    """What one implicit leapfrog step reports.

    Attributes:
        momentum: :class:`SolverInfo` of the ρ̃ equation.
        position: :class:`SolverInfo` of the z̄ equation.
        half_momentum: ρ̃, the solved half-step momentum ``(..., d)``.
    """

    momentum: SolverInfo
    position: SolverInfo
    half_momentum: Array

    def max_norm(self) -> Array:
        """The larger of the two relative residuals, per example."""
        return jnp.maximum(self.momentum.norm, self.position.norm)


def sum_grad(f: Callable[..., Array], argnum: int = 0) -> Callable[..., Array]:
    """∇ of the batch sum of ``f``: the per-example gradient when examples are independent.

    Args:
        f: a function returning per-example values ``(...)``.
        argnum: which argument to differentiate.

    Returns:
        The gradient function, same arguments as ``f``.
    """
    return jax.grad(lambda *a: jnp.sum(f(*a)), argnums=argnum)


def relative_residual(delta: Array, delta_next: Array, base: Array) -> Array:
    """‖δ_next − δ‖ / (‖δ‖ + τ), τ = 100·machine-ε·(1 + ‖base‖), with no gradient.

    Measured on the increments δ = x − base, not on x (which float32 knows only to
    ε_mach·‖base‖: that rounding alone gave residuals near 1e-3).

    Args:
        delta: the increment δ ``(..., d)``.
        delta_next: f(δ), one more update.
        base: the base point.

    Returns:
        ``(...)``.
    """
    norm = functools.partial(jnp.linalg.norm, axis=-1)
    tiny = 100.0 * jnp.finfo(delta.dtype).eps * (1.0 + norm(base))
    return jax.lax.stop_gradient(norm(delta_next - delta) / (norm(delta) + tiny))


def fixed_point_iteration(n_iter: int, tol: Any = 1e-3) -> Solver:
    """Solver: exactly ``n_iter`` sweeps δ ← f(δ) from δ₀ (a ``lax.fori_loop``; differentiable).

    Args:
        n_iter: the number of sweeps (≥ 1).
        tol: the residual at or below which ``success`` is reported.

    Returns:
        ``solver(f, delta0, base) -> (delta, SolverInfo)``; the residual costs one more f.
    """

    def solve(f: Callable[[Array], Array], delta0: Array, base: Array) -> tuple[Array, SolverInfo]:
        delta = jax.lax.fori_loop(0, n_iter, lambda _, d: f(d), delta0)
        norm = relative_residual(delta, f(delta), base)
        return delta, SolverInfo(norm <= tol, norm, jnp.asarray(n_iter, jnp.int32))

    return solve


def fixed_point_until(max_iter: int, tol: Any) -> Solver:
    """Solver: sweeps δ ← f(δ) until every example's residual is ≤ ``tol`` or ``max_iter`` sweeps.

    A ``lax.while_loop``, so it has no reverse-mode derivative: for evaluation and
    sampling, not for a training loss (use :func:`fixed_point_iteration` there).

    Args:
        max_iter: the most sweeps (≥ 1).
        tol: the relative residual to reach.

    Returns:
        ``solver(f, delta0, base) -> (delta, SolverInfo)``.
    """

    def solve(f: Callable[[Array], Array], delta0: Array, base: Array) -> tuple[Array, SolverInfo]:
        def cond(c):
            i, _, norm = c
            return (i < max_iter) & (jnp.max(norm) > tol)

        def body(c):
            i, d, _ = c
            nxt = f(d)
            return i + 1, nxt, relative_residual(d, nxt, base)

        init = (jnp.asarray(0, jnp.int32), delta0, jnp.full(delta0.shape[:-1], jnp.inf, delta0.dtype))
        iters, delta, _ = jax.lax.while_loop(cond, body, init)
        norm = relative_residual(delta, f(delta), base)
        return delta, SolverInfo(norm <= tol, norm, iters)

    return solve


def _velocity(metric: Optional[Metric]) -> Callable[[Array, Array], Array]:
    """ρ ↦ ∇_ρ K(z, ρ) = M⁻¹ρ (ρ itself for the identity)."""
    if metric is None:
        return lambda z, rho: rho
    return sum_grad(metric.kinetic_energy, 1)


def leapfrog(potential_grad: Callable[[Array], Array], metric: Optional[Metric] = None
             ) -> Callable[[IntegratorState, Any], tuple[IntegratorState, None]]:
    """The explicit leapfrog for a constant (Euclidean) metric.

    Args:
        potential_grad: z ↦ ∇V(z), ``z``'s shape.
        metric: a constant metric (:func:`~aetk_jax.hamiltonian.metrics.gaussian_euclidean`),
            or ``None`` for the identity.

    Returns:
        ``step(state, eps) -> (state, None)``; ``eps`` a scalar or per-dimension ``(d,)``.
    """
    velocity = _velocity(metric)

    def step(state: IntegratorState, eps: Any) -> tuple[IntegratorState, None]:
        half = 0.5 * eps
        rho_half = state.momentum - half * state.potential_grad
        z_new = state.position + eps * velocity(state.position, rho_half)
        grad_new = potential_grad(z_new)
        return IntegratorState(z_new, rho_half - half * grad_new, grad_new, state.kinetic_cache), None

    return step


def kinetic_cache(metric: Metric, z: Array) -> Optional[tuple[Array, Array]]:
    """G⁻¹(z) and ∂G⁻¹(z)/∂z for a metric with ``inverse_mass`` (else ``None``).

    Args:
        metric: the momentum :class:`~aetk_jax.hamiltonian.metrics.Metric`.
        z: positions ``(..., d)``.

    Returns:
        ``(G⁻¹ (..., d, d), J (..., d, d, d))`` with ``J[..., i, j, k] = ∂G⁻¹_ij/∂z_k``: the
        metric's ``inverse_mass_jacobian`` if it has one, else from one ``jax.linearize``
        (examples independent: the tangent e_k is set for every example at once).
    """
    if metric.inverse_mass is None:
        return None
    if metric.inverse_mass_jacobian is not None:
        return metric.inverse_mass_jacobian(z)
    ginv, lin = jax.linearize(metric.inverse_mass, z)
    d = z.shape[-1]
    eye = jnp.eye(d, dtype=z.dtype).reshape((d,) + (1,) * (z.ndim - 1) + (d,))
    jac = jax.vmap(lin)(jnp.broadcast_to(eye, (d,) + z.shape))  # (d, ..., d, d)
    return ginv, jnp.moveaxis(jac, 0, -1)


def _kinetic_dz(metric: Metric, z: Array, cache: Optional[tuple[Array, Array]]) -> Callable[[Array], Array]:
    """ρ ↦ ∇_z K(z, ρ) at a fixed z: ½ ρᵀ ∂G⁻¹/∂z_k ρ from the cache, else autodiff of K."""
    if cache is None:
        return functools.partial(sum_grad(metric.kinetic_energy, 0), z)
    jac = cache[1]
    return lambda rho: 0.5 * jnp.einsum("...i,...ijk,...j->...k", rho, jac, rho)


def implicit_leapfrog(potential_grad: Callable[[Array], Array], metric: Metric, solver: Solver
                      ) -> Callable[[IntegratorState, Any], tuple[IntegratorState, ImplicitInfo]]:
    """The generalised (implicit) leapfrog for a position-dependent metric.

    Args:
        potential_grad: z ↦ ∇V(z) (the ρ-free part of H).
        metric: the :class:`Metric` (its ``kinetic_energy``, and ``inverse_mass`` if set).
        solver: the fixed-point solver for both implicit equations.

    Returns:
        ``step(state, eps) -> (state, ImplicitInfo)``; the new state carries the
        :func:`kinetic_cache` at its position when the given one carried one.
    """
    if metric.inverse_mass is None:
        kin_drho = sum_grad(metric.kinetic_energy, 1)
    else:
        ginv_fn = metric.inverse_mass
        kin_drho = lambda z, rho: jnp.einsum("...ij,...j->...i", ginv_fn(z), rho)  # noqa: E731

    def step(state: IntegratorState, eps: Any) -> tuple[IntegratorState, ImplicitInfo]:
        z, rho, gv_z, carried = state
        half = 0.5 * eps
        cache = kinetic_cache(metric, z) if carried is None else carried
        dk_dz = _kinetic_dz(metric, z, cache)
        # 1. ρ̃ = ρ − ε/2·∇_z H(z, ρ̃), for δ = ρ̃ − ρ
        dr, info_rho = solver(lambda d: -half * (gv_z + dk_dz(rho + d)), jnp.zeros_like(rho), rho)
        rho_t = rho + dr
        # 2. z̄ = z + ε/2·[∇_ρ H(z, ρ̃) + ∇_ρ H(z̄, ρ̃)], for δ = z̄ − z
        g0 = kin_drho(z, rho_t) if cache is None else jnp.einsum("...ij,...j->...i", cache[0], rho_t)
        dz, info_z = solver(lambda d: half * (g0 + kin_drho(z + d, rho_t)), jnp.zeros_like(z), z)
        z_b = z + dz
        # 3. ρ̄ = ρ̃ − ε/2·∇_z H(z̄, ρ̃): explicit
        gv_b = potential_grad(z_b)
        cache_b = kinetic_cache(metric, z_b)
        rho_b = rho_t - half * (gv_b + _kinetic_dz(metric, z_b, cache_b)(rho_t))
        new = IntegratorState(z_b, rho_b, gv_b, None if carried is None else cache_b)
        return new, ImplicitInfo(info_rho, info_z, rho_t)

    return step


__all__ = [
    "IntegratorState", "SolverInfo", "ImplicitInfo", "Solver", "sum_grad", "relative_residual",
    "fixed_point_iteration", "fixed_point_until", "leapfrog", "implicit_leapfrog", "kinetic_cache",
]
