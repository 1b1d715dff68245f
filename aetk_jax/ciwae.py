"""CIWAE: the combination importance-weighted bound (Rainforth et al. 2018).

    CIWAE_β(x) = β · (1/K) Σ_k log w_k + (1 − β) · log (1/K) Σ_k w_k,   β ∈ [0, 1],

a convex combination of the K-sample ELBO (β = 1: the VAE's bound with K
draws) and IWAE_K (β = 0). pythae's default is β = 0.5.
"""
from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from .base import AutoEncoderModel, Variables, check_inputs, finish
from .importance import check_bound_hyper, log_weights, logmeanexp


class CIWAE(AutoEncoderModel):
    """``CIWAE(encoder, decoder)``: trained on β·ELBO + (1 − β)·IWAE_K."""


def ciwae_bound(logw: jax.Array, beta: Any) -> jax.Array:
    """β·mean_k log w_k + (1 − β)·logmeanexp_k log w_k from log weights ``(K, batch)``."""
    return beta * jnp.mean(logw, axis=0) + (1.0 - beta) * logmeanexp(logw, axis=0)


def elbo(
    model: AutoEncoderModel,
    variables: Variables,
    x: jax.Array,
    key: jax.Array,
    *,
    n_samples: int = 5,
    beta: float = 0.5,
) -> jax.Array:
    """CIWAE_β per example, ``(batch,)``.

    Args:
        n_samples: K ≥ 1.
        beta: β ∈ [0, 1], the weight of the K-sample ELBO.
    """
    check_inputs(model, x, key)
    check_bound_hyper(n_samples, beta=beta)
    return ciwae_bound(log_weights(model, variables, x, key, n_samples).logw, beta)


def loss(
    model: AutoEncoderModel,
    variables: Variables,
    x: jax.Array,
    key: jax.Array,
    *,
    n_samples: int = 5,
    beta: float = 0.5,
    aux: bool = False,
) -> Any:
    """−(1/B) Σ_b CIWAE_β(x_b).

    Returns:
        the scalar loss, or ``(loss, {"loss", "ciwae", "iwae", "elbo"})`` with ``aux=True``.
    """
    check_inputs(model, x, key)
    check_bound_hyper(n_samples, beta=beta)
    logw = log_weights(model, variables, x, key, n_samples).logw
    value = -jnp.mean(ciwae_bound(logw, beta))
    stopped = jax.lax.stop_gradient(logw)
    metrics = {"ciwae": -value, "iwae": jnp.mean(logmeanexp(stopped, axis=0)), "elbo": jnp.mean(stopped)}
    return finish(value, metrics, aux)
