"""Held-out evaluation: the ELBO, the importance-sampled marginal log-likelihood, and the
disentanglement scores ``mig`` and ``sap`` (``aetk_jax.disentanglement``)."""
from __future__ import annotations

import functools
import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from . import importance
from .base import Variables, check_inputs, encode
from .disentanglement import mig, sap  # noqa: F401  (aet.evaluate.mig / aet.evaluate.sap)
from .validation import check_int


@functools.singledispatch
def elbo(model: nn.Module, variables: Variables, x: jax.Array, key: jax.Array, **hyper: Any) -> jax.Array:
    """Per-example ELBO of ``model`` on ``x``, ``(batch,)``.

    The default is the VAE's log p(x|z) − KL(q‖p); HVAE and RHVAE register
    their Hamiltonian ELBOs.
    """
    from . import vae

    return vae.elbo(model, variables, x, key, **hyper)


@functools.singledispatch
def proposal_log_weights(
    model: nn.Module, variables: Variables, x: jax.Array, key: jax.Array, n_samples: int, enc_out: Any
) -> jax.Array:
    """Log importance weights ``(S, batch)`` of S draws from the model's proposal for ``x``.

    The default draws from the encoder's q(z|x) (``aet.importance.log_weights``); models
    whose posterior is not the encoder's alone (the flow posteriors of ``aetk_jax.flows``)
    register their own.

    Args:
        model: the model.
        variables: its variables.
        x: data ``(batch, *data_shape)``.
        key: PRNG key for the draws.
        n_samples: S, the number of draws.
        enc_out: the encoder's output for ``x``.

    Returns:
        log p(x|z_s) + log p(z_s) − log q(z_s|x), ``(S, batch)``.
    """
    return importance.log_weights(model, variables, x, key, n_samples, enc_out=enc_out).logw


def marginal_loglikelihood(
    model: nn.Module,
    variables: Variables,
    x: jax.Array,
    key: jax.Array,
    n_importance: int = 256,
    *,
    chunk: int = 32,
) -> jax.Array:
    """Importance-sampled log p(x) with q(z|x) as the proposal, ``(batch,)``:

        log p(x) ≈ logsumexp_s [log p(x|z_s) + log p(z_s) − log q(z_s|x)] − log S,
        z_s ~ q(z|x), s = 1..S (S = ``n_importance``).

    By Jensen's inequality its expectation is ≤ log p(x) and ≥ the ELBO. The
    weights come from ``proposal_log_weights`` (for a flow posterior, q is the
    flowed q_K(z_K|x)). Samples are drawn in chunks of ``chunk`` (``lax.map``) to bound memory.
    """
    check_inputs(model, x, key)
    check_int(n_importance, "n_importance", minimum=1)
    check_int(chunk, "chunk", minimum=1)
    args = (model, variables, x, key, int(n_importance), min(int(chunk), int(n_importance)))
    try:
        hash(model)
    except TypeError:  # a module with unhashable fields (e.g. a list of layers) cannot be static
        return _marginal_impl(*args)
    return _marginal_jit(*args)


def _marginal_impl(
    model: nn.Module, variables: Variables, x: jax.Array, key: jax.Array, n_importance: int, chunk: int
) -> jax.Array:
    n_chunks = -(-n_importance // chunk)
    enc_out = encode(model, variables, x)

    def chunk_weights(k: jax.Array) -> jax.Array:  # (chunk, batch)
        return proposal_log_weights(model, variables, x, k, chunk, enc_out)

    logw = jax.lax.map(chunk_weights, jax.random.split(key, n_chunks))  # (n_chunks, chunk, batch)
    logw = logw.reshape(n_chunks * chunk, logw.shape[-1])[:n_importance]
    return jax.scipy.special.logsumexp(logw, axis=0) - math.log(n_importance)


# one compiled computation per (model, shapes, n_importance, chunk)
_marginal_jit = jax.jit(_marginal_impl, static_argnums=(0, 4, 5))
