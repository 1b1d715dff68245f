"""VAE and β-VAE (Kingma & Welling 2014; Higgins et al. 2017).

loss(x) = −(1/B) Σ_b (1/S) Σ_s log p(x_b | z_bs) + β · (1/B) Σ_b KL(q(z|x_b) ‖ N(0, I)),
z_bs = μ_b + σ_b ⊙ ε_bs, with S = ``n_samples`` draws (vmapped).
"""
from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from .base import AutoEncoderModel, Variables, check_inputs, elbo_terms, finish
from .validation import check_int, check_scalar


class VAE(AutoEncoderModel):
    """Variational autoencoder: ``VAE(encoder, decoder)`` with a stochastic encoder."""


def elbo(
    model: AutoEncoderModel, variables: Variables, x: jax.Array, key: jax.Array, *, n_samples: int = 1
) -> jax.Array:
    """Per-example ELBO estimate log p(x|z) − KL, ``(batch,)``."""
    check_inputs(model, x, key)
    check_int(n_samples, "n_samples", minimum=1)
    t = elbo_terms(model, variables, x, key, n_samples)
    return t.loglik - t.kl


def loss(
    model: AutoEncoderModel,
    variables: Variables,
    x: jax.Array,
    key: jax.Array,
    *,
    beta: float = 1.0,
    n_samples: int = 1,
    aux: bool = False,
) -> Any:
    """Negative (β-weighted) ELBO averaged over the batch; a scalar.

    With ``aux=True`` returns ``(loss, {"loss", "loglikelihood", "kl", "elbo"})``
    where ``elbo`` is the unweighted (β = 1) ELBO.
    """
    check_inputs(model, x, key)
    check_scalar(beta, "beta", nonnegative=True)
    check_int(n_samples, "n_samples", minimum=1)
    t = elbo_terms(model, variables, x, key, n_samples)
    loglik, kl = jnp.mean(t.loglik), jnp.mean(t.kl)
    value = -loglik + beta * kl
    return finish(value, {"loglikelihood": loglik, "kl": kl, "elbo": loglik - kl}, aux)
