"""Hamiltonian machinery shared by the HVAE and the RHVAE (shaped like blackjax's ``mcmc``).

* :mod:`~aetk_jax.hamiltonian.integrators` — ``IntegratorState`` (z, ρ, cached ∇V and, for
  the implicit leapfrog, the cached G⁻¹ and ∂G⁻¹/∂z of ``kinetic_cache``),
  ``leapfrog`` (constant metric), ``implicit_leapfrog`` (position-dependent metric)
  with swappable fixed-point solvers returning ``SolverInfo(success, norm, iters)``.
* :mod:`~aetk_jax.hamiltonian.metrics` — ``Metric`` (sample momentum, kinetic
  energy, log-density, inverse mass and optionally its closed-form Jacobian),
  ``gaussian_euclidean``, ``gaussian_riemannian``.
* :mod:`~aetk_jax.hamiltonian.tempering` — the β schedules and the momentum cooling.
* :mod:`~aetk_jax.hamiltonian.flow` — ``FlowConfig`` and the one tempered-flow ELBO,
  ``tempered_flow``.

Layering: this package imports ``base``, ``encoders``, ``distributions``, ``utils``
and ``validation``; ``hvae`` and ``rhvae`` import it; it imports no model.
"""
from __future__ import annotations

from . import flow, integrators, metrics, tempering
from .flow import FlowConfig, FlowTerms, tempered_flow
from .integrators import (
    ImplicitInfo, IntegratorState, SolverInfo, fixed_point_iteration, fixed_point_until, implicit_leapfrog, leapfrog,
)
from .metrics import Metric, gaussian_euclidean, gaussian_riemannian

__all__ = [
    "flow", "integrators", "metrics", "tempering", "FlowConfig", "FlowTerms", "tempered_flow", "ImplicitInfo",
    "IntegratorState", "SolverInfo", "fixed_point_iteration", "fixed_point_until", "implicit_leapfrog",
    "leapfrog", "Metric", "gaussian_euclidean", "gaussian_riemannian",
]
