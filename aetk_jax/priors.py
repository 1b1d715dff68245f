"""Priors p(z) over the latent space, pluggable into every VAE-family model.

A prior is a flax module called as ``prior(z, encoder) -> log p(z)`` (``z``
``(..., d)`` → ``(...)``) with a ``sample(key, n, d, encoder) -> (n, d)`` method;
``encoder`` is the model's (bound) encoder, which the VampPrior needs and the
others ignore. A model takes one as ``Model(encoder, decoder, ..., prior=...)``
(keyword-only; ``None`` is the standard normal, computed without any module).

* ``StandardNormal``: log p(z) = log N(z; 0, I) = −½(d log 2π + ‖z‖²).
* ``MixtureOfGaussians(n_components, latent_dim)``: p(z) = Σ_k π_k N(z; m_k, diag s_k²), with
  trainable means (initialised N(0, I)), log scales (0) and logits of π (0).
* ``VampPrior(n_components, data_shape)`` (Tomczak & Welling 2018):
  p(z) = (1/K) Σ_k q(z | u_k), the encoder's posterior at K trainable
  pseudo-inputs u_k (initialised uniformly on [0, 1)).

With a prior other than the standard normal the KL term of the ELBO is
estimated by Monte Carlo from the posterior draws, KL ≈ (1/S) Σ_s [log q(z_s|x)
− log p(z_s)] (``aet.base.elbo_terms``).
"""
from __future__ import annotations

import math
from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from .distributions import gaussian_logdensity
from .encoders import encoder_logposterior, encoder_sample, spherical_logprior
from .validation import check_int


def is_standard_normal(prior: Any) -> bool:
    """True for ``None`` and ``StandardNormal()``: the KL term then has a closed form."""
    return prior is None or isinstance(prior, StandardNormal)


class StandardNormal(nn.Module):
    """p(z) = N(0, I)."""

    def __call__(self, z: jax.Array, encoder: Any = None) -> jax.Array:
        return spherical_logprior(z)

    def sample(self, key: jax.Array, n: int, d: int, encoder: Any = None) -> jax.Array:
        """``n`` draws ``(n, d)``."""
        return jax.random.normal(key, (n, d))


class MixtureOfGaussians(nn.Module):
    """p(z) = Σ_k π_k N(z; m_k, diag s_k²) with trainable m, log s and logits of π.

    Attributes:
        n_components: K ≥ 1.
        latent_dim: d, the dimension of z.
    """

    n_components: int
    latent_dim: int

    def __post_init__(self) -> None:
        check_int(self.n_components, "n_components", minimum=1)
        check_int(self.latent_dim, "latent_dim", minimum=1)
        super().__post_init__()

    def setup(self) -> None:
        k, d = int(self.n_components), int(self.latent_dim)
        self.means = self.param("means", nn.initializers.normal(1.0), (k, d))
        self.log_scales = self.param("log_scales", nn.initializers.zeros, (k, d))
        self.logits = self.param("logits", nn.initializers.zeros, (k,))

    def __call__(self, z: jax.Array, encoder: Any = None) -> jax.Array:
        comp = jnp.sum(gaussian_logdensity(z[..., None, :], self.means, self.log_scales), axis=-1)  # (..., K)
        return jax.scipy.special.logsumexp(comp + jax.nn.log_softmax(self.logits), axis=-1)

    def sample(self, key: jax.Array, n: int, d: int, encoder: Any = None) -> jax.Array:
        """``n`` draws ``(n, d)``: a component k ~ π, then z ~ N(m_k, diag s_k²)."""
        k_comp, k_z = jax.random.split(key)
        k = jax.random.categorical(k_comp, self.logits, shape=(n,))
        return self.means[k] + jnp.exp(self.log_scales[k]) * jax.random.normal(k_z, (n, d), self.means.dtype)


class VampPrior(nn.Module):
    """p(z) = (1/K) Σ_k q(z | u_k) at K trainable pseudo-inputs ``u`` ``(K, *data_shape)``.

    Attributes:
        n_components: K ≥ 1.
        data_shape: the shape of one example (the pseudo-inputs' shape less K).
    """

    n_components: int
    data_shape: Sequence[int]

    def __post_init__(self) -> None:
        check_int(self.n_components, "n_components", minimum=1)
        object.__setattr__(self, "data_shape", tuple(int(s) for s in self.data_shape))
        super().__post_init__()

    def setup(self) -> None:
        shape = (int(self.n_components),) + tuple(self.data_shape)
        self.pseudo_inputs = self.param("pseudo_inputs", nn.initializers.uniform(1.0), shape)

    def _posterior(self, encoder: Any) -> Any:
        if encoder is None:
            raise TypeError("VampPrior needs the model's encoder: call it as prior(z, encoder)")
        return encoder(self.pseudo_inputs)  # parameters of q(z|u_k), leading axis K

    def __call__(self, z: jax.Array, encoder: Any = None) -> jax.Array:
        logq = encoder_logposterior(encoder, z[..., None, :], self._posterior(encoder))  # (..., K)
        return jax.scipy.special.logsumexp(logq, axis=-1) - math.log(int(self.n_components))

    def sample(self, key: jax.Array, n: int, d: int, encoder: Any = None) -> jax.Array:
        """``n`` draws ``(n, d)``: a pseudo-input k uniformly, then z ~ q(z | u_k)."""
        enc_u = self._posterior(encoder)
        k_comp, k_z = jax.random.split(key)
        k = jax.random.randint(k_comp, (n,), 0, int(self.n_components))
        return encoder_sample(encoder, jax.tree_util.tree_map(lambda a: a[k], enc_u), k_z)
