"""The one tempered Hamiltonian-flow ELBO that the HVAE and the RHVAE both call.

With z₀ ~ q(z|x), γ ~ N(0, G(z₀)) (the metric's momentum; G = I for the HVAE),
ρ₀ = γ/√β₀, and K integrator steps each followed by the cooling
ρ ← ρ·√(β_{k−1}/β_k), the per-example estimate is

    ELBO = log p̄ − log q̄_K,
    log p̄   = log p(x|z_K) + log N(ρ_K; 0, G(z_K)) + log p(z_K),
    log q̄_K = log q(z₀|x) + log N(ρ₀; 0, G(z₀)/β₀) − ½·d·log(β₀/β_K),

where log N(ρ₀; 0, G(z₀)/β₀) = log N(γ; 0, G(z₀)) + ½·d·log β₀ and the
steps preserve volume (exactly for the explicit leapfrog; to the fixed-point
residual for the implicit one, reported in ``fixed_point_residual``).

``key`` is split once, ``z_key, rho_key = jax.random.split(key)``: z₀ from
``encoder_sample(model.encoder, enc_out, z_key)`` and γ from
``metric.sample_momentum(rho_key, z₀)``, so the HVAE and an RHVAE whose metric is
the identity draw the same (z₀, γ) and give the same ELBO.

The hyper-parameters shared by both models are one frozen :class:`FlowConfig`;
each model extends it, and :func:`config_signature` gives the public functions
the config's fields as keyword arguments.
"""
from __future__ import annotations

import dataclasses
import inspect
from typing import Any, Callable, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from ..base import Variables, encode, log_prior, loglikelihood
from ..encoders import encoder_logposterior, encoder_sample
from ..validation import check_int, check_scalar
from .integrators import IntegratorState, kinetic_cache
from .metrics import Metric
from .tempering import Tempering, check_beta0, quadratic_tempering, temper_schedule, tempered_momentum, tempering_logdet

FLOW_GRADIENTS = ("full", "detached")


def check_hyper(K: Any, eps: Any, beta0: Any, tempering: Any) -> None:
    """Validate the flow's hyper-parameters (``ValueError``/``TypeError`` naming the argument).

    Args:
        K: the number of steps (int ≥ 1).
        eps: the step size, > 0, a scalar or a per-dimension ``(d,)`` vector.
        beta0: the initial inverse temperature β₀ ∈ (0, 1].
        tempering: the schedule ``(beta0, k, K) -> β_k``.

    Returns:
        ``None``.
    """
    check_int(K, "K", minimum=1)
    check_scalar(eps, "eps", positive=True, allow_vector=True)
    if np.ndim(eps) > 1:
        raise ValueError(f"`eps` must be a scalar or a per-dimension vector (d,), got shape {np.shape(eps)}")
    check_beta0(beta0)
    if not callable(tempering):
        raise TypeError(f"`tempering` must be a callable (beta0, k, K) -> beta_k, got {tempering!r}")


@dataclasses.dataclass(frozen=True)
class FlowConfig:
    """The hyper-parameters of a tempered Hamiltonian flow, checked on construction.

    Attributes:
        K: the number of integrator steps (≥ 1).
        eps: the step size ε (> 0; a scalar or ``(d,)``); may be a traced array (learned).
        beta0: the initial inverse temperature β₀ ∈ (0, 1]; may be traced.
        tempering: the schedule ``(beta0, k, K) -> β_k`` (e.g. ``quadratic_tempering``).
    """

    K: int = 3
    eps: Any = 1e-4
    beta0: Any = 0.3
    tempering: Tempering = quadratic_tempering

    def __post_init__(self) -> None:
        check_hyper(self.K, self.eps, self.beta0, self.tempering)


def config_signature(config: type) -> Callable[[Callable], Callable]:
    """Decorator: show ``config``'s fields as the keyword arguments of a ``fn(..., **hyper)``.

    The function keeps taking ``**hyper`` (passed on to ``config(**hyper)``, which
    refuses unknown names); ``inspect.signature`` (and so ``help``) lists the fields
    with their defaults, one place for the hyper-parameter block.

    Args:
        config: a dataclass type.

    Returns:
        The decorator; it sets ``fn.__signature__`` and returns ``fn``.
    """

    def decorate(fn: Callable) -> Callable:
        sig = inspect.signature(fn)
        params = [p for p in sig.parameters.values() if p.kind is not inspect.Parameter.VAR_KEYWORD]
        positional = [p for p in params if p.kind is not inspect.Parameter.KEYWORD_ONLY]
        own = [p for p in params if p.kind is inspect.Parameter.KEYWORD_ONLY]
        fields = [inspect.Parameter(f.name, inspect.Parameter.KEYWORD_ONLY, default=f.default)
                  for f in dataclasses.fields(config)]
        fn.__signature__ = sig.replace(parameters=positional + fields + own)
        return fn

    return decorate


class FlowTerms(NamedTuple):
    """The path's end points and every per-example term of the ELBO (``(batch,)`` each).

    Attributes:
        z0: z₀ ``(batch, d)``.
        gamma: γ ~ N(0, G(z₀)) ``(batch, d)``.
        rho0: ρ₀ = γ/√β₀ ``(batch, d)``.
        zK: z_K ``(batch, d)``.
        rhoK: ρ_K ``(batch, d)``.
        loglik: log p(x|z_K).
        logprior: log p(z_K).
        logp_momentum: log N(ρ_K; 0, G(z_K)).
        logq: log q(z₀|x).
        logq_momentum: log N(ρ₀; 0, G(z₀)/β₀) = log N(γ; 0, G(z₀)) + ½·d·log β₀.
        logdet: ½·d·log(β₀/β_K), the tempering's log-determinant, broadcast.
        fixed_point_residual: the largest relative fixed-point residual over the K
            steps (0 for the explicit leapfrog).
    """

    z0: jax.Array
    gamma: jax.Array
    rho0: jax.Array
    zK: jax.Array
    rhoK: jax.Array
    loglik: jax.Array
    logprior: jax.Array
    logp_momentum: jax.Array
    logq: jax.Array
    logq_momentum: jax.Array
    logdet: jax.Array
    fixed_point_residual: jax.Array

    @property
    def elbo(self) -> jax.Array:
        """log p̄ − log q̄_K per example, ``(batch,)``."""
        return (self.loglik + self.logprior + self.logp_momentum) - (self.logq + self.logq_momentum - self.logdet)


def _run(step: Callable, state: IntegratorState, eps: jax.Array, betas: jax.Array, flow_gradient: str
         ) -> tuple[IntegratorState, jax.Array]:
    """K tempered steps as one ``lax.scan``; returns the end state and the largest residual per example."""

    def body(s: IntegratorState, b: jax.Array) -> tuple[IntegratorState, jax.Array]:
        new, info = step(s, eps)
        z, rho, grad, cache = new
        if flow_gradient == "detached":  # the flow's moves are constants to the optimiser (pythae)
            z = s.position + jax.lax.stop_gradient(z - s.position)
            rho = s.momentum + jax.lax.stop_gradient(rho - s.momentum)
            grad, cache = jax.lax.stop_gradient((grad, cache))  # only the (detached) moves read them
        res = jnp.zeros(z.shape[:-1], z.dtype) if info is None else info.max_norm()
        return IntegratorState(z, tempered_momentum(rho, b[0], b[1]), grad, cache), res

    end, residuals = jax.lax.scan(body, state, (betas[:-1], betas[1:]))
    return end, jnp.max(residuals, axis=0)


def tempered_flow(
    model: nn.Module,
    variables: Variables,
    x: Any,
    key: jax.Array,
    config: FlowConfig,
    *,
    metric: Metric,
    potential_grad: Callable[[jax.Array], jax.Array],
    step: Callable,
    enc_out: Any = None,
    flow_gradient: str = "full",
    carry_kinetic_cache: bool = False,
) -> FlowTerms:
    """Encode, draw (z₀, γ), run K tempered integrator steps and score the path (module docstring).

    Args:
        model: the model (its encoder and decoder give q(z|x), p(x|z), p(z)).
        variables: the model's variables.
        x: the batch ``(batch, *data_shape)`` (or ``(x, c)`` for a conditional model).
        key: one PRNG key (split into the z and momentum keys).
        config: K, ε, β₀ and the schedule.
        metric: the momentum :class:`Metric` (sampler and log-density).
        potential_grad: z ↦ ∇V(z) of the integrator's potential.
        step: the integrator, ``step(IntegratorState, eps) -> (state, info)``.
        enc_out: the encoder's output on ``x`` if already computed.
        flow_gradient: ``"full"`` or ``"detached"`` (moves are constants to the optimiser).
        carry_kinetic_cache: start from ``IntegratorState(..., kinetic_cache(metric, z₀))`` so that
            an implicit ``step`` passes G⁻¹ and ∂G⁻¹/∂z from one step to the next
            (``aetk_jax.hamiltonian.integrators.kinetic_cache``).

    Returns:
        :class:`FlowTerms`; ``.elbo`` is the per-example estimate.
    """
    enc_out = encode(model, variables, x) if enc_out is None else enc_out
    z_key, rho_key = jax.random.split(key)
    z0 = encoder_sample(model.encoder, enc_out, z_key)
    d = z0.shape[-1]
    eps = jnp.asarray(config.eps, z0.dtype)
    if eps.ndim == 1 and eps.shape[0] != d:
        raise ValueError(f"`eps` has {eps.shape[0]} entries but the latent dimension is {d}")
    beta0 = jnp.asarray(config.beta0, z0.dtype)
    gamma = metric.sample_momentum(rho_key, z0)
    rho0 = gamma / jnp.sqrt(beta0)
    betas = temper_schedule(config.tempering, config.beta0, config.K).astype(z0.dtype)
    cache = kinetic_cache(metric, z0) if carry_kinetic_cache else None
    end, residual = _run(step, IntegratorState(z0, rho0, potential_grad(z0), cache), eps, betas, flow_gradient)
    zK, rhoK = end.position, end.momentum
    return FlowTerms(
        z0=z0, gamma=gamma, rho0=rho0, zK=zK, rhoK=rhoK,
        loglik=loglikelihood(model, variables, x, zK),
        logprior=log_prior(model, variables, zK),
        logp_momentum=metric.log_density(zK, rhoK),
        logq=encoder_logposterior(model.encoder, z0, enc_out),
        logq_momentum=metric.log_density(z0, gamma) + 0.5 * d * jnp.log(beta0),
        logdet=jnp.broadcast_to(tempering_logdet(betas, d), z0.shape[:-1]),
        fixed_point_residual=residual,
    )


def flow_metrics(terms: FlowTerms, value: jax.Array) -> dict[str, jax.Array]:
    """The batch means both models report with ``aux=True``.

    Args:
        terms: the :class:`FlowTerms` of the batch.
        value: the loss (−mean ELBO).

    Returns:
        ``loglikelihood``, ``logprior``, ``logp_momentum``, ``logq``, ``logq_momentum``,
        ``logdet`` (batch means) and ``elbo`` = −value.
    """
    names = ("logprior", "logp_momentum", "logq", "logq_momentum", "logdet")
    return {"loglikelihood": jnp.mean(terms.loglik), **{n: jnp.mean(getattr(terms, n)) for n in names},
            "elbo": -value}


__all__ = [
    "FLOW_GRADIENTS", "FlowConfig", "FlowTerms", "check_hyper", "config_signature", "tempered_flow",
    "flow_metrics",
]
