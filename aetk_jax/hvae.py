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

The potential gradient is a parameter (``potential_grad``) so a user can
supply their own. ∇U is the gradient of the batch sum of U, equal to the
per-example gradients because examples are independent (a decoder that mixes
examples, e.g. batch norm in training mode, breaks this). The K steps are one
``lax.scan`` and the loss is one jitted function.
"""
from __future__ import annotations

import math
from typing import Any, Callable, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from . import evaluate
from .base import AutoEncoderModel, Variables, check_inputs, encode, finish, log_prior, loglikelihood
from .encoders import encoder_logposterior, encoder_sample
from .validation import check_int, check_scalar, is_concrete

_LOG_2PI = math.log(2.0 * math.pi)

PotentialGrad = Callable[[jax.Array], jax.Array]
ModelPotentialGrad = Callable[[nn.Module, Variables, jax.Array, jax.Array], jax.Array]
Tempering = Callable[[Any, Any, int], Any]


class HVAE(AutoEncoderModel):
    """Hamiltonian VAE: ``HVAE(encoder, decoder)``; train it with ``aet.hvae.loss``."""


# --------------------------------------------------------------------------- tempering


def _check_K(K: Any) -> None:
    """K must be an integer ≥ 1 (Python, NumPy or a concrete JAX integer)."""
    if not is_concrete(K):
        return
    arr = np.asarray(K)
    if isinstance(K, bool) or arr.ndim != 0 or not np.issubdtype(arr.dtype, np.integer):
        raise TypeError(f"`K` must be an int, got {K!r}")
    if int(arr) < 1:
        raise ValueError(f"`K` must be >= 1, got {int(arr)}")


def _check_beta0(beta0: Any) -> None:
    check_scalar(beta0, "beta0", low=0.0, low_inclusive=False, high=1.0)


def quadratic_tempering(beta0: Any, k: Any, K: int) -> jax.Array:
    """Quadratic inverse-temperature schedule of Caterini et al. (2018):

        β_k = [(1 − 1/√β₀)·(k/K)² + 1/√β₀]⁻²,

    so β_0 = β₀ and β_K = 1. ``k`` may be an integer or an array of them; the
    result has ``k``'s shape. Raises ``ValueError`` for K < 1 or β₀ ∉ (0, 1].

    Computed as √β_k = √β₀·K² / [(K − k)(K + k) + √β₀·k²] (the same formula
    multiplied through by √β₀·K²): the denominator lies in [√β₀·K², K²], so
    nothing is divided by a tiny number and 1/√β₀ never appears (in float32 it
    made β_K inf for β₀ = 1e-30), and 1 − (k/K)² is formed from integers without
    cancellation. β_K = 1 exactly (numerator and denominator are the same
    product); β_0 is β₀ itself (not the rounded square of √β₀).
    """
    _check_K(K)
    _check_beta0(beta0)
    k = jnp.asarray(k)
    beta0 = jnp.asarray(beta0, jnp.result_type(beta0, float))
    s = jnp.sqrt(beta0)
    kf = k.astype(beta0.dtype)
    sqrt_beta = (s * K**2) / ((K - kf) * (K + kf) + s * kf**2)
    return jnp.where(k == 0, beta0, sqrt_beta**2)


def null_tempering(beta0: Any, k: Any, K: int) -> jax.Array:
    """Constant schedule: β_k = β₀ for every k (no tempering). Same checks as
    ``quadratic_tempering``."""
    _check_K(K)
    _check_beta0(beta0)
    return jnp.broadcast_to(jnp.asarray(beta0, dtype=jnp.result_type(float)), jnp.shape(k))


def temper_schedule(tempering: Tempering, beta0: Any, K: int) -> jax.Array:
    """The schedule (β_0, …, β_K) as a ``(K+1,)`` array: ``tempering(beta0, k, K)``
    for k = 0..K (vmapped, so a schedule written for a scalar ``k`` works)."""
    if not callable(tempering):
        raise TypeError(f"`tempering` must be a callable (beta0, k, K) -> beta_k, got {tempering!r}")
    _check_K(K)
    ks = jnp.arange(int(K) + 1)
    return jax.vmap(lambda k: jnp.asarray(tempering(beta0, k, K)))(ks)


def tempered_momentum(rho: jax.Array, beta_prev: Any, beta_next: Any) -> jax.Array:
    """Cool the momentum after a leapfrog step: ρ ← ρ·√(β_{k−1}/β_k)."""
    return rho * jnp.sqrt(beta_prev / beta_next)


def tempering_logdet(betas: jax.Array, d: int) -> jax.Array:
    """log |det| of all the tempering rescalings of a d-dimensional momentum:
    Σ_k ½·d·log(β_{k−1}/β_k) = ½·d·log(β_0/β_K). ``betas``: ``(K+1,)``."""
    return 0.5 * d * (jnp.log(betas[0]) - jnp.log(betas[-1]))


def sample_momentum(key: jax.Array, z: jax.Array, beta0: Any) -> tuple[jax.Array, jax.Array]:
    """γ ~ N(0, I) shaped like ``z`` (``jax.random.normal(key, z.shape, z.dtype)``)
    and the initial momentum ρ₀ = γ/√β₀. Returns ``(gamma, rho0)``."""
    gamma = jax.random.normal(key, z.shape, z.dtype)
    return gamma, gamma / jnp.sqrt(jnp.asarray(beta0, z.dtype))


def momentum_logdensity(rho: jax.Array, beta: Any = 1.0) -> jax.Array:
    """log N(ρ; 0, β⁻¹ I) over the last axis: −½(d·log 2π − d·log β + β‖ρ‖²).

    ``rho``: ``(..., d)`` → ``(...,)``. β = 1 gives the standard normal.
    """
    d = rho.shape[-1]
    beta = jnp.asarray(beta, rho.dtype)
    return -0.5 * (d * (_LOG_2PI - jnp.log(beta)) + beta * jnp.sum(rho**2, axis=-1))


# --------------------------------------------------------------------------- dynamics


def leapfrog_step(
    potential_grad: PotentialGrad, z: jax.Array, rho: jax.Array, grad_z: jax.Array, eps: Any
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """One leapfrog step that reuses the gradient at the start point:

        ρ̃ = ρ − ε/2·∇U(z),   z̄ = z + ε·ρ̃,   ρ̄ = ρ̃ − ε/2·∇U(z̄).

    ``grad_z`` is ∇U(z); returns ``(z̄, ρ̄, ∇U(z̄))`` so a chain of steps costs
    one gradient per step.
    """
    half = 0.5 * eps
    rho_half = rho - half * grad_z
    z_new = z + eps * rho_half
    grad_new = potential_grad(z_new)
    return z_new, rho_half - half * grad_new, grad_new


def leapfrog(potential_grad: PotentialGrad, z: jax.Array, rho: jax.Array, eps: Any) -> tuple[jax.Array, jax.Array]:
    """One standard leapfrog step with identity mass:

        ρ̃ = ρ − ε/2·∇U(z),   z̄ = z + ε·ρ̃,   ρ̄ = ρ̃ − ε/2·∇U(z̄).

    ``potential_grad`` maps z to ∇U(z) (same shape); ``z``, ``rho``: ``(d,)`` or
    ``(batch, d)``; ``eps``: a scalar or a per-dimension ``(d,)`` step. Returns
    ``(z̄, ρ̄)``.
    """
    z_new, rho_new, _ = leapfrog_step(potential_grad, z, rho, potential_grad(z), eps)
    return z_new, rho_new


def hamiltonian_flow(
    potential_grad: PotentialGrad, z: jax.Array, rho: jax.Array, eps: Any, betas: jax.Array
) -> tuple[jax.Array, jax.Array]:
    """K = ``len(betas) − 1`` tempered leapfrog steps as one ``lax.scan``:
    for k = 1..K, (z, ρ) ← leapfrog(z, ρ), then ρ ← ρ·√(β_{k−1}/β_k).

    ``betas``: the schedule ``(K+1,)`` (see ``temper_schedule``); a constant
    schedule gives plain leapfrog. Returns ``(z_K, ρ_K)``.
    """
    betas = jnp.asarray(betas, rho.dtype)

    def body(carry, b):
        z, rho, g = carry
        z, rho, g = leapfrog_step(potential_grad, z, rho, g, eps)
        return (z, tempered_momentum(rho, b[0], b[1]), g), None

    (z, rho, _), _ = jax.lax.scan(body, (z, rho, potential_grad(z)), (betas[:-1], betas[1:]))
    return z, rho


def potential_energy(model: nn.Module, variables: Variables, x: jax.Array, z: jax.Array) -> jax.Array:
    """U(z) = −log p(x|z) − log N(z; 0, I) per example: ``x`` ``(batch, *data_shape)``,
    ``z`` ``(batch, d)`` → ``(batch,)``. Works with any registered decoder."""
    return -loglikelihood(model, variables, x, z) - log_prior(model, variables, z)


def grad_potential_energy(model: nn.Module, variables: Variables, x: jax.Array, z: jax.Array) -> jax.Array:
    """∇_z U(z) per example, ``(batch, d)``: the exact gradient (``jax.grad`` of
    the batch sum of ``potential_energy``, through the decoder)."""
    return jax.grad(lambda zz: jnp.sum(potential_energy(model, variables, x, zz)))(z)


# --------------------------------------------------------------------------- ELBO


class HamiltonianTerms(NamedTuple):
    """The phase-space path's end points and every per-example term of the ELBO.

    ``z0``, ``rho0``, ``zK``, ``rhoK``: ``(batch, d)``. Each term is ``(batch,)``:
    ``loglik`` = log p(x|z_K); ``logprior`` = log p(z_K); ``logp_momentum`` =
    log N(ρ_K; 0, I); ``logq`` = log q(z₀|x); ``logq_momentum`` =
    log N(ρ₀; 0, β₀⁻¹ I); ``logdet`` = ½·d·log(β₀/β_K) (the tempering's
    log-determinant, broadcast to ``(batch,)``).
    """

    z0: jax.Array
    rho0: jax.Array
    zK: jax.Array
    rhoK: jax.Array
    loglik: jax.Array
    logprior: jax.Array
    logp_momentum: jax.Array
    logq: jax.Array
    logq_momentum: jax.Array
    logdet: jax.Array

    @property
    def elbo(self) -> jax.Array:
        """log p̄ − log q̄_K per example, ``(batch,)``."""
        log_p = self.loglik + self.logp_momentum + self.logprior
        log_q = self.logq + self.logq_momentum - self.logdet
        return log_p - log_q


def check_hyper(K: Any, eps: Any, beta0: Any, tempering: Any) -> None:
    """Validate the HVAE hyper-parameters (ValueError/TypeError naming the argument)."""
    check_int(K, "K", minimum=1)
    check_scalar(eps, "eps", positive=True, allow_vector=True)
    if np.ndim(eps) > 1:
        raise ValueError(f"`eps` must be a scalar or a per-dimension vector (d,), got shape {np.shape(eps)}")
    _check_beta0(beta0)
    if not callable(tempering):
        raise TypeError(f"`tempering` must be a callable (beta0, k, K) -> beta_k, got {tempering!r}")


def _check_call(
    model: nn.Module, x: Any, key: Any, K: Any, eps: Any, beta0: Any, tempering: Any, potential_grad: Any
) -> None:
    check_inputs(model, x, key)
    check_hyper(K, eps, beta0, tempering)
    if not callable(potential_grad):
        raise TypeError(
            f"`potential_grad` must be a callable (model, variables, x, z) -> (batch, d), got {potential_grad!r}"
        )


def _terms_impl(
    model: nn.Module,
    variables: Variables,
    x: jax.Array,
    key: jax.Array,
    eps: Any,
    beta0: Any,
    K: int,
    tempering: Tempering,
    potential_grad: ModelPotentialGrad,
) -> HamiltonianTerms:
    z_key, rho_key = jax.random.split(key)
    enc_out = encode(model, variables, x)
    z0 = encoder_sample(model.encoder, enc_out, z_key)
    d = z0.shape[-1]
    eps = jnp.asarray(eps, z0.dtype)
    if eps.ndim == 1 and eps.shape[0] != d:
        raise ValueError(f"`eps` has {eps.shape[0]} entries but the latent dimension is {d}")
    _, rho0 = sample_momentum(rho_key, z0, beta0)
    betas = temper_schedule(tempering, beta0, K).astype(z0.dtype)
    zK, rhoK = hamiltonian_flow(lambda z: potential_grad(model, variables, x, z), z0, rho0, eps, betas)
    batch = z0.shape[:-1]
    return HamiltonianTerms(
        z0=z0,
        rho0=rho0,
        zK=zK,
        rhoK=rhoK,
        loglik=loglikelihood(model, variables, x, zK),
        logprior=log_prior(model, variables, zK),
        logp_momentum=momentum_logdensity(rhoK),
        logq=encoder_logposterior(model.encoder, z0, enc_out),
        logq_momentum=momentum_logdensity(rho0, beta0),
        logdet=jnp.broadcast_to(tempering_logdet(betas, d), batch),
    )


_terms_jit = jax.jit(_terms_impl, static_argnames=("model", "K", "tempering", "potential_grad"))


def hamiltonian_terms(
    model: nn.Module,
    variables: Variables,
    x: jax.Array,
    key: jax.Array,
    *,
    K: int = 3,
    eps: Any = 1e-4,
    beta0: Any = 0.3,
    tempering: Tempering = quadratic_tempering,
    potential_grad: ModelPotentialGrad = grad_potential_energy,
) -> HamiltonianTerms:
    """Run the tempered Hamiltonian flow from the encoder and score it.

    ``key`` is split in two, ``z_key, rho_key = jax.random.split(key)``:
    z₀ = ``encoder_sample(model.encoder, enc_out, z_key)`` and
    γ = ``jax.random.normal(rho_key, z0.shape, z0.dtype)``, ρ₀ = γ/√β₀. Then K
    tempered leapfrog steps with ``potential_grad(model, variables, x, z) ->
    (batch, d)`` (default: the exact ∇U) give (z_K, ρ_K); the chain costs K + 1
    gradient evaluations (each step reuses the previous end-point gradient).
    Returns a ``HamiltonianTerms``; ``.elbo`` is the per-example estimate ``(batch,)``.

    ``K``, ``tempering`` and ``potential_grad`` are static arguments of the
    compiled function (pass the same function objects each call to reuse the
    compilation); ``eps`` and ``beta0`` are traced, so they may be learned.
    """
    _check_call(model, x, key, K, eps, beta0, tempering, potential_grad)
    return _terms_jit(model, variables, x, key, eps, beta0, K=K, tempering=tempering, potential_grad=potential_grad)


def elbo(
    model: nn.Module,
    variables: Variables,
    x: jax.Array,
    key: jax.Array,
    *,
    K: int = 3,
    eps: Any = 1e-4,
    beta0: Any = 0.3,
    tempering: Tempering = quadratic_tempering,
    potential_grad: ModelPotentialGrad = grad_potential_energy,
) -> jax.Array:
    """Per-example Hamiltonian ELBO estimate, ``(batch,)``:

        log p(x|z_K) + log N(ρ_K; 0, I) + log p(z_K)
          − [log q(z₀|x) + log N(ρ₀; 0, β₀⁻¹ I) − ½·d·log(β₀/β_K)].

    Arguments as in ``hamiltonian_terms``.
    """
    return hamiltonian_terms(
        model, variables, x, key, K=K, eps=eps, beta0=beta0, tempering=tempering, potential_grad=potential_grad
    ).elbo


def _loss_impl(
    model: nn.Module,
    variables: Variables,
    x: jax.Array,
    key: jax.Array,
    eps: Any,
    beta0: Any,
    K: int,
    tempering: Tempering,
    potential_grad: ModelPotentialGrad,
) -> tuple[jax.Array, dict[str, jax.Array]]:
    t = _terms_impl(model, variables, x, key, eps, beta0, K, tempering, potential_grad)
    value = -jnp.mean(t.elbo)
    metrics = {
        "loglikelihood": jnp.mean(t.loglik),
        "logprior": jnp.mean(t.logprior),
        "logp_momentum": jnp.mean(t.logp_momentum),
        "logq": jnp.mean(t.logq),
        "logq_momentum": jnp.mean(t.logq_momentum),
        "logdet": jnp.mean(t.logdet),
        "elbo": -value,
    }
    return value, metrics


# one compiled program serves aux=True and aux=False (unused metrics are dropped by XLA)
_loss_jit = jax.jit(_loss_impl, static_argnames=("model", "K", "tempering", "potential_grad"))


def loss(
    model: nn.Module,
    variables: Variables,
    x: jax.Array,
    key: jax.Array,
    *,
    K: int = 3,
    eps: Any = 1e-4,
    beta0: Any = 0.3,
    tempering: Tempering = quadratic_tempering,
    potential_grad: ModelPotentialGrad = grad_potential_energy,
    aux: bool = False,
) -> Any:
    """Negative Hamiltonian ELBO averaged over the batch; a scalar (one jitted computation).

    ``K`` ≥ 1 leapfrog steps of size ``eps`` (> 0, a scalar or ``(d,)``),
    initial inverse temperature ``beta0`` ∈ (0, 1], schedule ``tempering``
    (``quadratic_tempering``, ``null_tempering`` or any
    ``(beta0, k, K) -> beta_k``), ``potential_grad`` as in
    ``hamiltonian_terms``. With ``aux=True`` returns ``(loss, metrics)`` with
    batch means of ``loglikelihood`` (log p(x|z_K)), ``logprior`` (log p(z_K)),
    ``logp_momentum`` (log N(ρ_K; 0, I)), ``logq`` (log q(z₀|x)),
    ``logq_momentum`` (log N(ρ₀; 0, β₀⁻¹ I)), ``logdet`` (½·d·log(β₀/β_K)),
    ``elbo`` and ``loss``.
    """
    _check_call(model, x, key, K, eps, beta0, tempering, potential_grad)
    value, metrics = _loss_jit(
        model, variables, x, key, eps, beta0, K=K, tempering=tempering, potential_grad=potential_grad
    )
    return finish(value, metrics, aux)


@evaluate.elbo.register(HVAE)
def _hvae_evaluate_elbo(model: HVAE, variables: Variables, x: jax.Array, key: jax.Array, **hyper: Any) -> jax.Array:
    return elbo(model, variables, x, key, **hyper)


__all__ = [
    "HVAE",
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
