"""Distribution parameters: the pytrees that encoders and decoders return.

Each is a ``NamedTuple`` of arrays, so it passes through ``jit``, ``vmap`` and
``grad`` unchanged. Shapes are batch-first: for a decoder on data of shape
``(batch, *data_shape)`` every field has that shape (``CategoricalParams``
adds a trailing category axis).

It also holds the one Gaussian log-density every module uses, written to stay
finite in float32 (the encoders' log q(z|x), the decoders' log p(x|z)):

    log N(x; μ, σ²) = −½ q − log σ − ½ log 2π,   q = (x − μ)²/σ²,

with q computed in the log domain, q = exp(t), t = 2(log|x − μ| − log σ), so
that x = μ gives q = 0 for any log σ (the direct (x − μ)·exp(−log σ) is 0·inf =
NaN once log σ < −88 in float32), and, above t = T (T = log of the dtype's
largest number − 24, i.e. about 64.7 in float32), q continues linearly in t:
q = e^T (1 + t − T). The value is exact wherever q ≤ e^T (|x − μ|/σ ≤ e^{T/2}
≈ 1.2e14 in float32) and finite beyond, where the exact value (below −3e27
per element in float32) has no useful float32 value; the continuation keeps the
gradient's sign (it pulls μ towards x and log σ up), where clipping q would
reverse it. Inputs of shape ``(...)`` broadcast; the density is elementwise.

σ = softplus(a) underflows to 0 in float32 for a ≲ −88 (log σ = −inf);
``softplus_scale`` adds the dtype's smallest normal number, which leaves every
σ ≥ 1e-30 unchanged and keeps log σ ≥ −87.3 in float32.
"""
from __future__ import annotations

import math
from typing import NamedTuple

import jax
import jax.numpy as jnp

#: log 2π
LOG_2PI = math.log(2.0 * math.pi)
#: headroom (in log units) below the dtype's largest number kept by the quadratic term
_HEADROOM = 24.0


class GaussianLogParams(NamedTuple):
    """Diagonal Gaussian parameterised by its mean and log standard deviation."""

    mu: jax.Array
    logsigma: jax.Array


class GaussianParams(NamedTuple):
    """Diagonal Gaussian parameterised by its mean and standard deviation (σ > 0)."""

    mu: jax.Array
    sigma: jax.Array


class BernoulliParams(NamedTuple):
    """Independent Bernoulli variables parameterised by their logits."""

    logits: jax.Array


class CategoricalParams(NamedTuple):
    """Categorical variables; ``logits`` has a trailing axis of ``n_categories``."""

    logits: jax.Array


def _log_threshold(dtype: jnp.dtype) -> float:
    """T = log(finfo(dtype).max) − 24: the largest log-quadratic term computed exactly."""
    return float(math.log(float(jnp.finfo(dtype).max))) - _HEADROOM


def gaussian_quadratic(x: jax.Array, mu: jax.Array, logsigma: jax.Array) -> jax.Array:
    """(x − μ)²/σ² elementwise, finite for every finite input (see the module docstring).

    Args:
        x: values (floating), broadcasting with ``mu`` and ``logsigma``.
        mu: means μ.
        logsigma: log standard deviations log σ.

    Returns:
        q of the broadcast shape: exactly exp(2(log|x − μ| − log σ)) up to e^T,
        continued linearly in the log beyond; 0 where x = μ (gradients finite there).
    """
    dtype = jnp.result_type(x, mu, logsigma)
    if not jnp.issubdtype(dtype, jnp.floating):
        dtype = jnp.float32
    diff = jnp.asarray(x, dtype) - jnp.asarray(mu, dtype)
    zero = diff == 0
    # the double `where` keeps the gradient finite at x = μ (log 0 never reaches the graph)
    t = 2.0 * (jnp.log(jnp.abs(jnp.where(zero, 1.0, diff))) - logsigma)
    T = _log_threshold(dtype)
    q = jnp.exp(jnp.minimum(t, T)) * (1.0 + jnp.maximum(t - T, 0.0))
    return jnp.where(zero, 0.0, q)


def gaussian_logdensity(x: jax.Array, mu: jax.Array, logsigma: jax.Array) -> jax.Array:
    """log N(x; μ, σ²) elementwise: −½(x − μ)²/σ² − log σ − ½ log 2π, stable in float32.

    Args:
        x: values, broadcasting with ``mu`` and ``logsigma``.
        mu: means μ.
        logsigma: log standard deviations log σ.

    Returns:
        The elementwise log-density (not summed), of the broadcast shape.
    """
    return -0.5 * gaussian_quadratic(x, mu, logsigma) - logsigma - 0.5 * LOG_2PI


def softplus_scale(a: jax.Array) -> jax.Array:
    """σ = softplus(a) + tiny (the dtype's smallest normal number): never 0, so log σ is finite.

    Args:
        a: the pre-activation (floating).

    Returns:
        σ of ``a``'s shape; equal to softplus(a) in float32 wherever softplus(a) ≥ 1e-30.
    """
    return jax.nn.softplus(a) + jnp.finfo(jnp.result_type(a)).tiny
