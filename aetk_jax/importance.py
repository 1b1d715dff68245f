"""Importance weights and the bounds built from them (IWAE, MIWAE, CIWAE, PIWAE).

For one example x and S codes z_s ~ q(z|x) (reparameterised, vmapped), the
log importance weights are

    log w_s = log p(x|z_s) + log p(z_s) − log q(z_s|x),        shape (S, batch),

with p(z) the model's prior (``aetk_jax.priors``; N(0, I) by default),

and the bounds used by the importance-weighted family are

    IWAE_S(x)  = log (1/S) Σ_s w_s                         (Burda et al. 2016)
    MIWAE(x)   = (1/M) Σ_m log (1/K) Σ_k w_{mk}            (Rainforth et al. 2018; S = M·K)
    CIWAE_β(x) = β · (1/K) Σ_k log w_k + (1 − β) · IWAE_K  (Rainforth et al. 2018)

with E[IWAE_1] = ELBO ≤ E[IWAE_S] ≤ E[IWAE_{S+1}] ≤ log p(x). ``logmeanexp`` is
the stable log (1/S) Σ exp(·) (a logsumexp less log S).

Gradient estimators. ``gradient="standard"`` differentiates the bound as it is
(the reparameterisation gradient of IWAE). ``gradient="dreg"`` gives the doubly
reparameterised encoder gradient of Tucker et al. (2019),

    ∇_φ IWAE ≈ Σ_s w̃_s² · ∂ log w_s / ∂z_s · ∂z_s / ∂φ,    w̃_s = w_s / Σ_t w_t,

with log q evaluated at stopped encoder parameters (the score term, whose
expectation is zero, is dropped); the decoder's gradient Σ_s w̃_s ∇_θ log w_s
is unchanged. It is written as a surrogate whose *value* is the bound: each
code's backward pass is scaled by its own w̃_s (``scale_gradient``) and the
result weighted by w̃_s again, so one decoder pass serves both parameter sets.
IWAE's encoder gradient has a signal-to-noise ratio that falls like 1/√S
(Rainforth et al. 2018); DReG's grows like √S.

Departure from pythae: its MIWAE and PIWAE losses take the log-sum-exp over the
``number_gradient_estimates`` axis and average over ``number_samples``, i.e. the
groups and the samples within a group are swapped relative to the paper; here
MIWAE averages over M = ``n_groups`` bounds, each over K = ``n_samples`` codes.
"""
from __future__ import annotations

import math
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from .base import Variables, encode, log_prior, loglikelihood, sample_posterior
from .encoders import encoder_logposterior
from .validation import check_int, check_scalar

GRADIENTS = ("standard", "dreg")


class LogWeights(NamedTuple):
    """``logw``: log importance weights ``(S, batch)``; ``z``: the codes ``(S, batch, d)``;
    ``enc_out``: the encoder's output (the parameters of q(z|x))."""

    logw: jax.Array
    z: jax.Array
    enc_out: Any


def logmeanexp(a: jax.Array, axis: int = 0) -> jax.Array:
    """log (1/n) Σ exp(a) along ``axis`` (n its length), computed stably."""
    return jax.scipy.special.logsumexp(a, axis=axis) - math.log(a.shape[axis])


def scale_gradient(x: jax.Array, s: jax.Array) -> jax.Array:
    """Identity in value; the backward pass multiplies the cotangent of ``x`` by ``s``.

    ``s`` broadcasts against ``x`` and receives no gradient itself.
    """
    s = jax.lax.stop_gradient(s)
    return jax.lax.stop_gradient(x) + s * (x - jax.lax.stop_gradient(x))


def _logw_at(model: Any, variables: Variables, x: jax.Array, zs: jax.Array, q_params: Any) -> jax.Array:
    """log p(x|z_s) + log p(z_s) − log q(z_s|x) for codes ``zs`` ``(S, batch, d)`` under ``q_params``."""
    logp = jax.vmap(lambda z: loglikelihood(model, variables, x, z))(zs)
    return logp + log_prior(model, variables, zs) - encoder_logposterior(model.encoder, zs, q_params)


def log_weights(
    model: Any, variables: Variables, x: jax.Array, key: jax.Array, n_samples: int, *, enc_out: Any = None
) -> LogWeights:
    """Draw ``n_samples`` codes per example from q(z|x) and return their log weights.

    Args:
        model: a model with a stochastic ``encoder`` and a ``decoder``.
        variables: its variables.
        x: data ``(batch, *data_shape)``.
        key: PRNG key for the draws.
        n_samples: S ≥ 1.
        enc_out: the encoder's output for ``x``, when already computed.

    Returns:
        ``LogWeights(logw (S, batch), z (S, batch, d), enc_out)``.
    """
    enc_out = encode(model, variables, x) if enc_out is None else enc_out
    zs = sample_posterior(model, enc_out, key, n_samples)
    return LogWeights(_logw_at(model, variables, x, zs, enc_out), zs, enc_out)


def dreg_log_weights(
    model: Any, variables: Variables, x: jax.Array, key: jax.Array, n_samples: int, n_groups: int = 1
) -> tuple[jax.Array, jax.Array]:
    """Log weights whose gradient, once weighted by w̃ (``bound_with_gradient``), is DReG's.

    Draws S = ``n_samples``·``n_groups`` codes; w̃ is normalised within each of
    the ``n_groups`` groups of ``n_samples``. log q(z|x) is evaluated at stopped
    encoder parameters (the codes keep their reparameterisation path), and each
    code's backward pass is scaled by its w̃_s, so that Σ_s w̃_s ∇ log w_s carries
    w̃_s² on the encoder's path and w̃_s on the decoder's. The weights come from a
    forward-only first pass.

    Returns:
        ``(logw, wt)``: log weights ``(S, batch)`` and their stopped normalised weights w̃.
    """
    enc_out = encode(model, variables, x)
    zs = sample_posterior(model, enc_out, key, n_samples * n_groups)
    q_params = jax.lax.stop_gradient(enc_out)
    first = jax.lax.stop_gradient(_logw_at(model, variables, x, jax.lax.stop_gradient(zs), q_params))
    wt = jax.nn.softmax(grouped(first, n_groups), axis=1).reshape(first.shape)
    return _logw_at(model, variables, x, scale_gradient(zs, wt[..., None]), q_params), wt


def grouped_bound(logw: jax.Array, n_groups: int = 1) -> jax.Array:
    """(1/M) Σ_m logmeanexp_k log w_{mk} from log weights ``(M·K, batch)``, ``(batch,)``.

    M = ``n_groups``; M = 1 is IWAE_K, otherwise MIWAE_{M,K}.
    """
    return jnp.mean(logmeanexp(grouped(logw, n_groups), axis=1), axis=0)


def grouped_bound_loss_terms(
    model: Any, variables: Variables, x: jax.Array, key: jax.Array, n_samples: int, n_groups: int, gradient: str
) -> tuple[jax.Array, jax.Array]:
    """The IWAE/MIWAE bound per example for a loss, with the chosen gradient.

    Returns:
        ``(bound (batch,), logw (S, batch))``; with ``gradient="dreg"`` the bound's
        value is unchanged and its encoder gradient is DReG's within each group.
    """
    if gradient == "dreg":
        logw, wt = dreg_log_weights(model, variables, x, key, n_samples, n_groups)
        return bound_with_gradient(logw, wt / n_groups, grouped_bound(logw, n_groups)), logw
    logw = log_weights(model, variables, x, key, n_samples * n_groups).logw
    return grouped_bound(logw, n_groups), logw


def bound_with_gradient(logw: jax.Array, wt: jax.Array, bound: jax.Array) -> jax.Array:
    """A surrogate equal to ``bound`` in value whose gradient is Σ_s wt_s ∇ log w_s per example.

    Args:
        logw: log weights ``(S, batch)`` (from ``dreg_log_weights``).
        wt: their weights ``(S, batch)``, treated as constants.
        bound: the bound's value ``(batch,)``.
    """
    surrogate = jnp.sum(wt * logw, axis=0)
    return jax.lax.stop_gradient(bound) + surrogate - jax.lax.stop_gradient(surrogate)


def grouped(logw: jax.Array, n_groups: int) -> jax.Array:
    """Reshape log weights ``(M·K, batch)`` into ``(M, K, batch)`` groups."""
    return logw.reshape((n_groups, logw.shape[0] // n_groups) + logw.shape[1:])


def check_bound_hyper(n_samples: Any, n_groups: Any = 1, beta: Any = 0.0, gradient: Any = "standard") -> None:
    """Refuse bad hyper-parameters of the importance-weighted family with one clear line."""
    check_int(n_samples, "n_samples", minimum=1)
    check_int(n_groups, "n_groups", minimum=1)
    check_scalar(beta, "beta", low=0.0, high=1.0)
    if gradient not in GRADIENTS:
        raise ValueError(f"`gradient` must be one of {GRADIENTS}, got {gradient!r}")
