"""Hamiltonian VAE (Caterini, Doucet & Sejdinovic 2018).

A code z₀ ~ q(z|x) and a momentum ρ₀ = γ/√β₀, γ ~ N(0, I), are moved by K
leapfrog steps of the Hamiltonian H(z, ρ) = U(z) + ½‖ρ‖² with the potential

    U(z) = −log p(x|z) − log p(z),       p(z) = N(0, I),

and after step k the momentum is cooled, ρ ← ρ·√(β_{k−1}/β_k) (tempering).
The leapfrog steps preserve volume; the tempering multiplies it by
(β_{k−1}/β_k)^{d/2} per step, (β₀/β_K)^{d/2} in all. The per-example ELBO
estimate is

    ELBO = log p̄ − log q̄_K,
    log p̄   = log p(x|z_K) + log N(ρ_K; 0, I) + log p(z_K),
    log q̄_K = log q(z₀|x) + log N(ρ₀; 0, β₀⁻¹ I) − ½·d·log(β₀/β_K),

which, for a schedule ending at β_K = 1 (``quadratic_tempering``), is the
paper's log q̄ = log q(z₀|x) + log N(ρ₀; 0, β₀⁻¹ I) − ½·d·log β₀
= log q(z₀|x) + log N(γ; 0, I). As ε → 0 the flow is the identity on z and
ρ_K = γ, so the estimate tends to the VAE's log p(x|z₀) + log p(z₀) − log q(z₀|x).

Differences from AutoEncoderToolkit.jl (we implement the paper):

* ∇U is exact (``jax.grad`` of U through the decoder). The Julia code's ∇U
  differentiates a closure in which the decoder output is held fixed, so only
  the prior term survives (∇U(z) = z plus finite-difference noise) and the
  decoder never enters the dynamics.
* The initial momentum is scored with its exact density N(ρ₀; 0, β₀⁻¹ I).
  The Julia code evaluates the unit-covariance density N(ρ₀; 0, I) at the
  scaled momentum, which is not a lower bound: it overstates the ELBO by
  ½·d·(1/β₀ − 1) + ½·d·log β₀ in expectation (≈ 1.13 nats for d = 2, β₀ = 0.3).
  Gradients with respect to the parameters are the same (the term is constant
  in them); ELBO values are not.
* The log-determinant of the tempering is ½·d·log(β₀/β_K) for any schedule
  (Julia always uses ½·d·log β₀, i.e. assumes β_K = 1); the two agree for
  ``quadratic_tempering``.

**Under a condition** (``HVAE(..., n_conditions=k)`` or ``condition_dim=k``; the loss takes
the pair ``x = (x, c)``) the encoder is q(z|x, c), the prior p(z) stays unconditional and the
potential is

    U(z) = −log p(x|z, c) − log p(z),

so the ELBO bounds log p(x|c); the dynamics, the momentum and the tempering are unchanged
(everything goes through the base helpers, which split the pair).

The potential gradient is a parameter (``potential_grad``) so a user can
supply their own. ∇U is the gradient of the batch sum of U, equal to the
per-example gradients because examples are independent (a decoder that mixes
examples, e.g. batch norm in training mode, breaks this). The K steps are one
``lax.scan``. The loss is a pure function (jit it, or let ``fit`` jit the epoch).

The machinery is shared with the RHVAE: the explicit leapfrog and its state are
``aetk_jax.hamiltonian.integrators``, the identity momentum metric
``aetk_jax.hamiltonian.metrics.gaussian_euclidean``, the schedules
``aetk_jax.hamiltonian.tempering`` (re-exported here) and the ELBO is the one
``aetk_jax.hamiltonian.flow.tempered_flow``; this module only supplies the
potential U and its gradient.
"""
from __future__ import annotations

import dataclasses
import functools
from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp

from . import evaluate
from .base import AutoEncoderModel, Variables, check_inputs, finish, log_prior, loglikelihood
from .distributions import gaussian_logdensity
from .hamiltonian import flow as _flow
from .hamiltonian import integrators as _integrators
from .hamiltonian.flow import FlowConfig, check_hyper, config_signature
from .hamiltonian.flow import FlowTerms as HamiltonianTerms
from .hamiltonian.metrics import gaussian_euclidean
from .hamiltonian.tempering import (  # noqa: F401  (the schedules are part of this module's API)
    null_tempering, quadratic_tempering, temper_schedule, tempered_momentum, tempering_logdet,
)

PotentialGrad = Callable[[jax.Array], jax.Array]
ModelPotentialGrad = Callable[[nn.Module, Variables, jax.Array, jax.Array], jax.Array]


class HVAE(AutoEncoderModel):
    """Hamiltonian VAE: ``HVAE(encoder, decoder)``; train it with ``aet.hvae.loss``.

    ``n_conditions``/``condition_dim`` (keyword-only) make it conditional: its loss then
    takes the pair ``(x, c)`` and the potential is U(z) = −log p(x|z, c) − log p(z).
    """


def sample_momentum(key: jax.Array, z: jax.Array, beta0: Any) -> tuple[jax.Array, jax.Array]:
    """γ ~ N(0, I) shaped like ``z`` and the initial momentum ρ₀ = γ/√β₀.

    Args:
        key: PRNG key (γ = ``jax.random.normal(key, z.shape, z.dtype)``).
        z: codes ``(..., d)``.
        beta0: β₀.

    Returns:
        ``(gamma, rho0)``.
    """
    gamma = gaussian_euclidean().sample_momentum(key, z)
    return gamma, gamma / jnp.sqrt(jnp.asarray(beta0, z.dtype))


def momentum_logdensity(rho: jax.Array, beta: Any = 1.0) -> jax.Array:
    """log N(ρ; 0, β⁻¹ I) over the last axis: −½(d·log 2π − d·log β + β‖ρ‖²).

    Args:
        rho: ``(..., d)``.
        beta: the precision β (1: the standard normal).

    Returns:
        ``(...,)``.
    """
    beta = jnp.asarray(beta, rho.dtype)
    return jnp.sum(gaussian_logdensity(rho, 0.0, -0.5 * jnp.log(beta)), axis=-1)


# --------------------------------------------------------------------------- dynamics


def leapfrog_step(
    potential_grad: PotentialGrad, z: jax.Array, rho: jax.Array, grad_z: jax.Array, eps: Any
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """One leapfrog step that reuses the gradient at the start point:

        ρ̃ = ρ − ε/2·∇U(z),   z̄ = z + ε·ρ̃,   ρ̄ = ρ̃ − ε/2·∇U(z̄).

    Args:
        potential_grad: z ↦ ∇U(z).
        z: the position ``(d,)`` or ``(batch, d)``.
        rho: the momentum, ``z``'s shape.
        grad_z: ∇U(z).
        eps: the step, a scalar or ``(d,)``.

    Returns:
        ``(z̄, ρ̄, ∇U(z̄))`` so a chain of steps costs one gradient per step.
    """
    state, _ = _integrators.leapfrog(potential_grad)(_integrators.IntegratorState(z, rho, grad_z), eps)
    return state.position, state.momentum, state.potential_grad


def leapfrog(potential_grad: PotentialGrad, z: jax.Array, rho: jax.Array, eps: Any) -> tuple[jax.Array, jax.Array]:
    """One standard leapfrog step with identity mass:

        ρ̃ = ρ − ε/2·∇U(z),   z̄ = z + ε·ρ̃,   ρ̄ = ρ̃ − ε/2·∇U(z̄).

    Args:
        potential_grad: maps z to ∇U(z) (same shape).
        z: ``(d,)`` or ``(batch, d)``.
        rho: the momentum, ``z``'s shape.
        eps: a scalar or a per-dimension ``(d,)`` step.

    Returns:
        ``(z̄, ρ̄)``.
    """
    z_new, rho_new, _ = leapfrog_step(potential_grad, z, rho, potential_grad(z), eps)
    return z_new, rho_new


def hamiltonian_flow(
    potential_grad: PotentialGrad, z: jax.Array, rho: jax.Array, eps: Any, betas: jax.Array
) -> tuple[jax.Array, jax.Array]:
    """K = ``len(betas) − 1`` tempered leapfrog steps as one ``lax.scan``:
    for k = 1..K, (z, ρ) ← leapfrog(z, ρ), then ρ ← ρ·√(β_{k−1}/β_k).

    Args:
        potential_grad: z ↦ ∇U(z).
        z: the start position.
        rho: the start momentum.
        eps: the step.
        betas: the schedule ``(K+1,)`` (see ``temper_schedule``); a constant one gives plain leapfrog.

    Returns:
        ``(z_K, ρ_K)``.
    """
    betas = jnp.asarray(betas, rho.dtype)
    state = _integrators.IntegratorState(z, rho, potential_grad(z))
    end, _ = _flow._run(_integrators.leapfrog(potential_grad), state, eps, betas, "full")
    return end.position, end.momentum


def potential_energy(model: nn.Module, variables: Variables, x: jax.Array, z: jax.Array) -> jax.Array:
    """U(z) = −log p(x|z) − log p(z) per example (p(z) the model's prior, N(0, I) by default).

    For a conditional model ``x`` is the pair ``(x, c)`` and U(z) = −log p(x|z, c) − log p(z).
    Works with any registered decoder.

    Args:
        model: the model.
        variables: its variables.
        x: ``(batch, *data_shape)``, or the pair ``(x, c)`` for a conditional model.
        z: ``(batch, d)``.

    Returns:
        ``(batch,)``.
    """
    return -loglikelihood(model, variables, x, z) - log_prior(model, variables, z)


def grad_potential_energy(model: nn.Module, variables: Variables, x: jax.Array, z: jax.Array) -> jax.Array:
    """∇_z U(z) per example: the exact gradient (``jax.grad`` of the batch sum, through the decoder).

    Args:
        model: the model.
        variables: its variables.
        x: ``(batch, *data_shape)``, or the pair ``(x, c)`` for a conditional model (z at fixed c).
        z: ``(batch, d)``.

    Returns:
        ``(batch, d)``.
    """
    return jax.grad(lambda zz: jnp.sum(potential_energy(model, variables, x, zz)))(z)


# --------------------------------------------------------------------------- ELBO


@dataclasses.dataclass(frozen=True)
class HVAEConfig(FlowConfig):
    """The HVAE's hyper-parameters: :class:`~aetk_jax.hamiltonian.flow.FlowConfig` plus the gradient.

    Attributes:
        potential_grad: ``(model, variables, x, z) -> (batch, d)``, ∇U (default: exact); ``x`` is
            the loss's input (the pair ``(x, c)`` for a conditional model).
    """

    potential_grad: ModelPotentialGrad = grad_potential_energy

    def __post_init__(self) -> None:
        super().__post_init__()
        if not callable(self.potential_grad):
            raise TypeError(
                "`potential_grad` must be a callable (model, variables, x, z) -> (batch, d), "
                f"got {self.potential_grad!r}"
            )


@config_signature(HVAEConfig)
def hamiltonian_terms(model: nn.Module, variables: Variables, x: jax.Array, key: jax.Array,
                      **hyper: Any) -> HamiltonianTerms:
    """Run the tempered Hamiltonian flow from the encoder and score it.

    ``key`` is split in two, ``z_key, rho_key = jax.random.split(key)``:
    z₀ = ``encoder_sample(model.encoder, enc_out, z_key)`` and
    γ = ``jax.random.normal(rho_key, z0.shape, z0.dtype)``, ρ₀ = γ/√β₀. Then K
    tempered leapfrog steps with ``potential_grad`` give (z_K, ρ_K); the chain
    costs K + 1 gradient evaluations (each step reuses the previous end-point
    gradient). This is ``aetk_jax.hamiltonian.flow.tempered_flow`` with the
    identity metric and the explicit leapfrog.

    Args:
        model: the HVAE.
        variables: its variables.
        x: the batch ``(batch, *data_shape)`` (the pair ``(x, c)`` for a conditional model).
        key: one PRNG key.
        **hyper: the fields of :class:`HVAEConfig`: ``K`` (3), ``eps`` (1e-4),
            ``beta0`` (0.3), ``tempering`` (``quadratic_tempering``), ``potential_grad``.

    Returns:
        ``HamiltonianTerms``; ``.elbo`` is the per-example estimate ``(batch,)``.
    """
    cfg = HVAEConfig(**hyper)
    check_inputs(model, x, key)

    def grad_u(z: jax.Array) -> jax.Array:
        return cfg.potential_grad(model, variables, x, z)

    return _flow.tempered_flow(model, variables, x, key, cfg, metric=gaussian_euclidean(),
                               potential_grad=grad_u, step=_integrators.leapfrog(grad_u))


@config_signature(HVAEConfig)
def elbo(model: nn.Module, variables: Variables, x: jax.Array, key: jax.Array, **hyper: Any) -> jax.Array:
    """Per-example Hamiltonian ELBO estimate:

        log p(x|z_K) + log N(ρ_K; 0, I) + log p(z_K)
          − [log q(z₀|x) + log N(ρ₀; 0, β₀⁻¹ I) − ½·d·log(β₀/β_K)].

    Args:
        model: the HVAE.
        variables: its variables.
        x: the batch (the pair ``(x, c)`` for a conditional model).
        key: one PRNG key.
        **hyper: as in :func:`hamiltonian_terms`.

    Returns:
        ``(batch,)``.
    """
    return hamiltonian_terms(model, variables, x, key, **hyper).elbo


@config_signature(HVAEConfig)
def loss(model: nn.Module, variables: Variables, x: jax.Array, key: jax.Array, *, aux: bool = False,
         **hyper: Any) -> Any:
    """Negative Hamiltonian ELBO averaged over the batch; a pure function (jit/grad/vmap it).

    ``K`` ≥ 1 leapfrog steps of size ``eps`` (> 0, a scalar or ``(d,)``),
    initial inverse temperature ``beta0`` ∈ (0, 1], schedule ``tempering``
    (``quadratic_tempering``, ``null_tempering`` or any
    ``(beta0, k, K) -> beta_k``), ``potential_grad`` as in :func:`hamiltonian_terms`.

    Args:
        model: the HVAE.
        variables: its variables.
        x: the batch (the pair ``(x, c)`` for a conditional model).
        key: one PRNG key.
        aux: also return the metrics.
        **hyper: the fields of :class:`HVAEConfig`.

    Returns:
        The scalar loss; with ``aux=True`` ``(loss, metrics)`` with batch means of
        ``loglikelihood`` (log p(x|z_K)), ``logprior`` (log p(z_K)),
        ``logp_momentum`` (log N(ρ_K; 0, I)), ``logq`` (log q(z₀|x)),
        ``logq_momentum`` (log N(ρ₀; 0, β₀⁻¹ I)), ``logdet`` (½·d·log(β₀/β_K)),
        ``elbo`` and ``loss``.
    """
    t = hamiltonian_terms(model, variables, x, key, **hyper)
    value = -jnp.mean(t.elbo)
    return finish(value, _flow.flow_metrics(t, value), aux)


@evaluate.elbo.register(HVAE)
def _hvae_evaluate_elbo(model: HVAE, variables: Variables, x: jax.Array, key: jax.Array, **hyper: Any) -> jax.Array:
    # one compiled computation for an evaluation call (the public function itself is not jitted)
    return jax.jit(functools.partial(elbo, model, **hyper))(variables, x, key)


__all__ = [
    "HVAE",
    "HVAEConfig",
    "HamiltonianTerms",
    "check_hyper",
    "elbo",
    "grad_potential_energy",
    "hamiltonian_flow",
    "hamiltonian_terms",
    "leapfrog",
    "leapfrog_step",
    "loss",
    "momentum_logdensity",
    "null_tempering",
    "potential_energy",
    "quadratic_tempering",
    "sample_momentum",
    "temper_schedule",
    "tempered_momentum",
    "tempering_logdet",
]
