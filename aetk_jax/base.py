"""The model base class and the shared ELBO pieces every VAE-family loss uses.

A model is a flax module holding an ``encoder`` and a ``decoder`` (plus any
extra networks). Its ``__call__(x)`` touches every sub-network so that
``model.init(key, x)`` returns all variables; losses reach the parts through
``encode`` and ``decode``. The functions here are the pieces of the ELBO,

    ELBO(x) = E_{q(z|x)}[log p(x|z)] − KL(q(z|x) ‖ p(z)),

written once and reused by the VAE, β-VAE, InfoVAE, InfoMaxVAE, HVAE and RHVAE
losses and by ``aet.evaluate``.
"""
from __future__ import annotations

import dataclasses
from typing import Any, NamedTuple, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp

from .decoders import decoder_loglikelihood
from .encoders import encoder_kl, encoder_logposterior, encoder_mean, encoder_sample, spherical_logprior
from .priors import is_standard_normal
from .validation import check_array, check_key

Variables = Any


class AutoEncoderModel(nn.Module):
    """Base of every model: an ``encoder``, a ``decoder`` and an optional ``prior``.

    ``__call__(x)`` encodes ``x`` ``(batch, *data_shape)``, takes the posterior
    mean and decodes it (and evaluates the prior there); it exists so that
    ``model.init(key, x)`` creates all parameters. ``prior`` (keyword-only, see
    ``aetk_jax.priors``) is ``None`` for the standard normal N(0, I).
    """

    encoder: nn.Module
    decoder: nn.Module
    _: dataclasses.KW_ONLY
    prior: Optional[nn.Module] = None

    def encode(self, x: jax.Array) -> Any:
        return self.encoder(x)

    def decode(self, z: jax.Array) -> Any:
        return self.decoder(z)

    def log_prior(self, z: jax.Array) -> jax.Array:
        """log p(z) for codes ``(..., d)``, ``(...)``."""
        return spherical_logprior(z) if self.prior is None else self.prior(z, self.encoder)

    def sample_prior(self, key: jax.Array, n: int) -> jax.Array:
        """``n`` draws from p(z), ``(n, d)``."""
        if self.prior is None:
            return jax.random.normal(key, (n, self.latent_dim))
        return self.prior.sample(key, n, self.latent_dim, self.encoder)

    def init_prior(self, z: jax.Array) -> None:
        """Create the prior's parameters (call from ``__call__``); nothing for N(0, I)."""
        if self.prior is not None:
            self.prior(z, self.encoder)

    def __call__(self, x: jax.Array) -> Any:
        z = encoder_mean(self.encoder, self.encoder(x))
        self.init_prior(z)
        return self.decoder(z)

    @property
    def latent_dim(self) -> int:
        return int(self.encoder.latent_dim)


def data_shape(model: nn.Module) -> tuple[int, ...] | None:
    """The per-example data shape the decoder produces, when it declares one."""
    shape = getattr(model.decoder, "output_shape", None)
    if shape is None:
        return None
    shape = (int(shape),) if isinstance(shape, int) else tuple(int(s) for s in shape)
    n_categories = getattr(model.decoder, "n_categories", None)  # one-hot data: (*shape, k)
    return shape + (int(n_categories),) if n_categories is not None else shape


_NO_KEY = object()


def check_inputs(model: nn.Module, x: Any, key: Any = _NO_KEY, *, name: str = "x") -> None:
    """Validate a loss's data (and key, when one is passed: ``None`` is then a TypeError)."""
    check_array(x, name, data_shape=data_shape(model))
    if key is not _NO_KEY:
        check_key(key)


def encode(model: nn.Module, variables: Variables, x: jax.Array) -> Any:
    """Encoder output (the parameters of q(z|x)) for ``x`` ``(batch, *data_shape)``."""
    return model.apply(variables, x, method="encode")


def decode(model: nn.Module, variables: Variables, z: jax.Array) -> Any:
    """Decoder output (the parameters of p(x|z)) for codes ``z`` ``(batch, d)``."""
    return model.apply(variables, z, method="decode")


def loglikelihood(model: nn.Module, variables: Variables, x: jax.Array, z: jax.Array) -> jax.Array:
    """log p(x|z) per example, ``(batch,)``, through the dispatched likelihood."""
    return decoder_loglikelihood(model.decoder, x, decode(model, variables, z))


def log_prior(model: nn.Module, variables: Variables, z: jax.Array) -> jax.Array:
    """log p(z) under the model's prior for codes ``(..., d)``, ``(...)`` (N(0, I) without one)."""
    if is_standard_normal(getattr(model, "prior", None)):
        return spherical_logprior(z)
    return model.apply(variables, z, method="log_prior")


def sample_prior(model: nn.Module, variables: Variables, key: jax.Array, n: int) -> jax.Array:
    """``n`` draws ``(n, d)`` from the model's prior (N(0, I) without one), reparameterised."""
    if getattr(model, "prior", None) is None:
        return jax.random.normal(key, (n, model.latent_dim))
    return model.apply(variables, key, n, method="sample_prior")


def kl_term(model: nn.Module, variables: Variables, enc_out: Any, zs: jax.Array) -> jax.Array:
    """KL(q(z|x) ‖ p(z)) per example, ``(batch,)``.

    In closed form for the standard normal prior; otherwise the Monte-Carlo
    estimate (1/S) Σ_s [log q(z_s|x) − log p(z_s)] from the draws ``zs`` ``(S, batch, d)``.
    """
    if is_standard_normal(getattr(model, "prior", None)):
        return encoder_kl(model.encoder, enc_out)
    logq = encoder_logposterior(model.encoder, zs, enc_out)
    return jnp.mean(logq - log_prior(model, variables, zs), axis=0)


def sample_posterior(model: nn.Module, enc_out: Any, key: jax.Array, n_samples: int) -> jax.Array:
    """``n_samples`` reparameterised draws from q(z|x): ``(n_samples, batch, d)`` (vmapped)."""
    keys = jax.random.split(key, n_samples)
    return jax.vmap(lambda k: encoder_sample(model.encoder, enc_out, k))(keys)


def mc_loglikelihood(model: nn.Module, variables: Variables, x: jax.Array, zs: jax.Array) -> jax.Array:
    """log p(x|z_s) for each sample: ``zs`` ``(S, batch, d)`` → ``(S, batch)`` (vmapped)."""
    return jax.vmap(lambda z: loglikelihood(model, variables, x, z))(zs)


class ELBOTerms(NamedTuple):
    """Per-example pieces of the ELBO.

    ``loglik``: Monte-Carlo mean of log p(x|z) over the samples, ``(batch,)``;
    ``kl``: KL(q(z|x) ‖ p(z)), ``(batch,)`` (closed form for N(0, I)); ``z``: the samples
    ``(S, batch, d)``; ``enc_out``: the encoder's output.
    """

    loglik: jax.Array
    kl: jax.Array
    z: jax.Array
    enc_out: Any


def elbo_terms(
    model: nn.Module, variables: Variables, x: jax.Array, key: jax.Array, n_samples: int = 1
) -> ELBOTerms:
    """Encode, draw ``n_samples`` codes per example, and score them.

    loglik = (1/S) Σₛ log p(x|zₛ), zₛ = μ + σ ⊙ εₛ; kl = KL(q(z|x) ‖ p(z)) (``kl_term``).
    """
    enc_out = encode(model, variables, x)
    zs = sample_posterior(model, enc_out, key, n_samples)
    loglik = jnp.mean(mc_loglikelihood(model, variables, x, zs), axis=0)
    return ELBOTerms(loglik, kl_term(model, variables, enc_out, zs), zs, enc_out)


def finish(loss: jax.Array, metrics: dict[str, jax.Array], aux: bool) -> Any:
    """Return ``loss`` or ``(loss, metrics)`` with ``metrics['loss']`` filled in."""
    if aux:
        return loss, {"loss": loss, **metrics}
    return loss
