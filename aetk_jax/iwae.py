"""IWAE: the importance-weighted autoencoder (Burda, Grosse & Salakhutdinov 2016).

    IWAE_K(x) = log (1/K) Σ_k p(x|z_k) p(z_k) / q(z_k|x),   z_k ~ q(z|x), k = 1..K,

a lower bound on log p(x) that is the ELBO at K = 1 and tightens monotonically
in expectation as K grows. ``loss`` is −(1/B) Σ_b IWAE_K(x_b); ``gradient="dreg"``
replaces the encoder's gradient by the doubly reparameterised estimator of
Tucker et al. (2019) (see ``aetk_jax.importance``). Variables have exactly the
VAE's layout: a VAE's variables can be scored by IWAE and back.
"""
from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from .base import AutoEncoderModel, Variables, check_inputs, finish
from .importance import check_bound_hyper, grouped_bound, grouped_bound_loss_terms, log_weights


class IWAE(AutoEncoderModel):
    """Importance-weighted autoencoder: ``IWAE(encoder, decoder)`` with a stochastic encoder."""


def elbo(
    model: AutoEncoderModel, variables: Variables, x: jax.Array, key: jax.Array, *, n_samples: int = 5
) -> jax.Array:
    """The K-sample importance-weighted bound per example, ``(batch,)`` (K = ``n_samples``).

    Args:
        model: an ``IWAE`` (any model with a stochastic encoder and a decoder).
        variables: its variables.
        x: data ``(batch, *data_shape)``.
        key: PRNG key.
        n_samples: K ≥ 1 codes per example.

    Returns:
        log (1/K) Σ_k w_k for each example.
    """
    check_inputs(model, x, key)
    check_bound_hyper(n_samples)
    return grouped_bound(log_weights(model, variables, x, key, n_samples).logw)


def loss(
    model: AutoEncoderModel,
    variables: Variables,
    x: jax.Array,
    key: jax.Array,
    *,
    n_samples: int = 5,
    gradient: str = "standard",
    aux: bool = False,
) -> Any:
    """−(1/B) Σ_b IWAE_K(x_b); a scalar (``(loss, metrics)`` with ``aux=True``).

    Args:
        n_samples: K ≥ 1.
        gradient: ``"standard"`` (the bound's own gradient) or ``"dreg"`` (doubly
            reparameterised encoder gradient; same value).
        aux: also return ``{"loss", "iwae", "elbo"}``, ``elbo`` the mean of the K
            single-sample ELBOs (log w averaged over the samples).
    """
    check_inputs(model, x, key)
    check_bound_hyper(n_samples, gradient=gradient)
    bound, logw = grouped_bound_loss_terms(model, variables, x, key, n_samples, 1, gradient)
    value = -jnp.mean(bound)
    return finish(value, {"iwae": -value, "elbo": jnp.mean(jax.lax.stop_gradient(logw))}, aux)
