"""Encoders and their dispatched probability functions.

An encoder maps ``x`` of shape ``(batch, *data_shape)`` to the parameters of
q(z|x) over latent codes of shape ``(batch, latent_dim)``. The functions below
dispatch on the encoder's type (``functools.singledispatch``); a user encoder
registers its own with ``@aet.encoder_kl.register(MyEncoder)`` and so on.

Departure from AutoEncoderToolkit.jl (whose heads use Flux's random default):
the σ / log σ head of each Gaussian encoder starts with a zero kernel and the
bias that gives σ = 1, so q(z|x) starts at unit scale for inputs of any size.
Log-densities use ``aet.distributions.gaussian_logdensity`` (finite in float32).
"""
from __future__ import annotations

import math
from typing import Any, Union

import flax.linen as nn
import jax
import jax.numpy as jnp

from .dispatch import dispatched
from .distributions import LOG_2PI, GaussianLogParams, GaussianParams, gaussian_logdensity, softplus_scale
from .validation import check_scalar


class Encoder(nn.Module):
    """Deterministic encoder: ``z = Dense(latent_dim)(body(x))``, shape ``(batch, latent_dim)``."""

    body: nn.Module
    latent_dim: int

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        return nn.Dense(self.latent_dim, name="z")(self.body(x))


def _scale_head(latent_dim: int, name: str, bias: float) -> nn.Dense:
    """The σ (or log σ) head: zero kernel and a constant bias, so q(z|x) starts at σ = 1 for every x.

    With the default (lecun-normal) kernel, unnormalised inputs (raw counts 0..16)
    gave log σ up to 14 at initialisation and codes of size e^14; the zero kernel
    still receives gradient, and the parameter tree is unchanged.
    """
    return nn.Dense(
        latent_dim, name=name, kernel_init=nn.initializers.zeros, bias_init=nn.initializers.constant(bias)
    )


#: softplus⁻¹(1) = log(e − 1): the σ head's initial bias, so that σ = 1 at initialisation
_SOFTPLUS_INV_ONE = math.log(math.e - 1.0)


class JointGaussianLogEncoder(nn.Module):
    """Gaussian q(z|x) = N(μ(x), diag σ(x)²) with heads μ and log σ on a shared body.

    The log σ head starts at zero (kernel and bias), i.e. σ = 1 for every input.
    """

    body: nn.Module
    latent_dim: int

    @nn.compact
    def __call__(self, x: jax.Array) -> GaussianLogParams:
        h = self.body(x)
        return GaussianLogParams(
            nn.Dense(self.latent_dim, name="mu")(h), _scale_head(self.latent_dim, "logsigma", 0.0)(h)
        )


class JointGaussianEncoder(nn.Module):
    """Gaussian q(z|x) with heads μ and σ = softplus(·) + tiny > 0 (never 0) on a shared body.

    The σ head starts with a zero kernel and bias softplus⁻¹(1), i.e. σ = 1 for every input.
    """

    body: nn.Module
    latent_dim: int

    @nn.compact
    def __call__(self, x: jax.Array) -> GaussianParams:
        h = self.body(x)
        return GaussianParams(
            nn.Dense(self.latent_dim, name="mu")(h),
            softplus_scale(_scale_head(self.latent_dim, "sigma", _SOFTPLUS_INV_ONE)(h)),
        )


GaussianEncoder = Union[JointGaussianLogEncoder, JointGaussianEncoder]


def gaussian_mu_logsigma(out: Any) -> tuple[jax.Array, jax.Array]:
    """(μ, log σ) of a ``GaussianLogParams`` or ``GaussianParams``."""
    if isinstance(out, GaussianLogParams):
        return out.mu, out.logsigma
    if isinstance(out, GaussianParams):
        return out.mu, jnp.log(out.sigma)
    raise TypeError(f"expected GaussianLogParams or GaussianParams, got {type(out).__name__}")


def spherical_logprior(z: jax.Array, sigma: float = 1.0) -> jax.Array:
    """log N(z; 0, σ²I) summed over the last axis: −½(d log 2πσ² + ‖z‖²/σ²).

    ``z``: ``(..., d)``; returns ``(...,)`` (``(batch,)`` for a batch of codes).
    """
    check_scalar(sigma, "sigma", positive=True)
    d = z.shape[-1]
    return -0.5 * (d * (LOG_2PI + 2.0 * jnp.log(sigma)) + jnp.sum(z**2, axis=-1) / sigma**2)


def gaussian_logpdf(z: jax.Array, mu: jax.Array, logsigma: jax.Array) -> jax.Array:
    """Σⱼ log N(zⱼ; μⱼ, σⱼ²) over the last axis; broadcasts leading axes (stable in float32)."""
    return jnp.sum(gaussian_logdensity(z, mu, logsigma), axis=-1)


@dispatched("encoder_logposterior")
def encoder_logposterior(encoder: nn.Module, z: jax.Array, enc_out: Any) -> jax.Array:
    """log q(z|x) for codes ``z`` ``(..., batch, d)`` under ``enc_out``; returns ``(..., batch)``."""


@dispatched("encoder_kl")
def encoder_kl(encoder: nn.Module, enc_out: Any) -> jax.Array:
    """KL(q(z|x) ‖ N(0, I)) in closed form, ``(batch,)``."""


@dispatched("encoder_sample")
def encoder_sample(encoder: nn.Module, enc_out: Any, key: jax.Array) -> jax.Array:
    """One reparameterised draw z ~ q(z|x), ``(batch, d)``, differentiable in ``enc_out``."""


@dispatched("encoder_mean")
def encoder_mean(encoder: nn.Module, enc_out: Any) -> jax.Array:
    """The posterior mean of z (the code itself for a deterministic encoder), ``(batch, d)``."""


@encoder_logposterior.register(JointGaussianLogEncoder)
@encoder_logposterior.register(JointGaussianEncoder)
def _gaussian_logposterior(encoder: GaussianEncoder, z: jax.Array, enc_out: Any) -> jax.Array:
    mu, logsigma = gaussian_mu_logsigma(enc_out)
    return gaussian_logpdf(z, mu, logsigma)


@encoder_kl.register(JointGaussianLogEncoder)
@encoder_kl.register(JointGaussianEncoder)
def _gaussian_kl(encoder: GaussianEncoder, enc_out: Any) -> jax.Array:
    # KL(N(μ, σ²) ‖ N(0, 1)) = ½ Σ (σ² + μ² − 1 − 2 log σ)
    mu, logsigma = gaussian_mu_logsigma(enc_out)
    return 0.5 * jnp.sum(jnp.exp(2.0 * logsigma) + mu**2 - 1.0 - 2.0 * logsigma, axis=-1)


@encoder_sample.register(JointGaussianLogEncoder)
@encoder_sample.register(JointGaussianEncoder)
def _gaussian_sample(encoder: GaussianEncoder, enc_out: Any, key: jax.Array) -> jax.Array:
    # reparameterisation: z = μ + σ ⊙ ε, ε ~ N(0, I)
    mu, logsigma = gaussian_mu_logsigma(enc_out)
    return mu + jnp.exp(logsigma) * jax.random.normal(key, mu.shape, mu.dtype)


@encoder_mean.register(JointGaussianLogEncoder)
@encoder_mean.register(JointGaussianEncoder)
def _gaussian_mean(encoder: GaussianEncoder, enc_out: Any) -> jax.Array:
    return enc_out.mu


@encoder_mean.register(Encoder)
def _deterministic_mean(encoder: Encoder, enc_out: jax.Array) -> jax.Array:
    return enc_out
