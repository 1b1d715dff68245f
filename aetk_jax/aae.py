"""Adversarial autoencoder (Makhzani, Shlens, Jaitly, Goodfellow & Frey 2016).

An autoencoder whose code distribution q(z) = E_x q(z|x) is matched to the prior
p(z) by a discriminator D(z) (a logit, ``(batch,)``; σ(D) is the probability that
z came from the prior), trained by a second optimizer in the same compiled step:

- autoencoder phase (``loss``), the discriminator's parameters held fixed:

      loss = −(1/B) Σ_b log p(x_b | z_b) + s · (1/B) Σ_b −log σ(D(z_b)),   z_b ~ q(z|x_b),

  with s = ``adversarial_loss_scale`` (the encoder, as generator, makes its codes
  look like prior draws: the non-saturating generator loss);
- discriminator phase (``discriminator_loss``), the codes held fixed:

      loss_D = (1/B) Σ_b −log σ(D(z̃_b)) + (1/B) Σ_b −log(1 − σ(D(z_b))),   z̃_b ~ p(z).

``aet.train.fit`` runs the two as phases of one step (``aet.train.Phase``,
declared in ``aetk_jax/training/hooks.py``): first the encoder/decoder update
(``"autoencoder"``), then the discriminator's (``"discriminator"``) at the
encoder just updated; ``optimizer`` is one optax transformation (each phase
keeps its own state) or ``{"autoencoder": opt, "discriminator": opt}``.

The encoder is stochastic (a Gaussian encoder, as pythae's), the decoder any
likelihood decoder: the model's variables are the VAE's plus a
``"discriminator"`` group, so ``aet.evaluate`` scores its ELBO and marginal
log-likelihood and ``aet.sample`` decodes prior draws. Shapes: ``x``
``(B, *data_shape)``, codes ``(B, d)``.

Departures from pythae (``pythae.models.Adversarial_AE``):

- the reconstruction term is the decoder's log-likelihood (pythae: summed MSE or
  BCE) and pythae's ``reconstruction_loss_scale`` (default 1) is not offered;
- pythae's trainer computes both losses at the same parameters and then steps
  both optimizers; here the discriminator's loss is evaluated after the
  autoencoder's update (the order of Makhzani et al.'s reconstruction and
  regularisation phases);
- the paper alternates a reconstruction phase and a regularisation phase (the
  encoder updated by the generator loss alone); like pythae, the reconstruction
  and generator terms are one loss here.

The discriminator pieces (:class:`Discriminator`, :func:`binary_cross_entropy`)
are shared with ``aet.factorvae`` and ``aet.vaegan``.
"""
from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from .base import AutoEncoderModel, Variables, check_inputs, elbo_terms, encode, finish, sample_posterior
from .base import sample_prior as _sample_prior
from .piwae import stop_part
from .validation import check_scalar
from .vae import elbo  # the VAE's ELBO scores a trained model (the training objective differs)

#: the name of the discriminator's parameter group in ``variables["params"]``
DISCRIMINATOR_GROUP = "discriminator"


def leaky_relu(x: jax.Array) -> jax.Array:
    """LeakyReLU with slope 0.2 for x < 0 (the default discriminators' nonlinearity, as pythae's)."""
    return nn.leaky_relu(x, negative_slope=0.2)


class Discriminator(nn.Module):
    """A discriminator on codes (or any inputs): ``body`` on the flattened input, then a scalar logit.

    ``z``: ``(batch, ...)``; returns the logits ``(batch,)``. ``body`` is any flax
    module mapping ``(batch, n)`` to features, e.g.
    ``aet.MLP([64, 64], activation=nn.leaky_relu, final_activation=nn.leaky_relu)``.

    Attributes:
        body: the feature network before the logit head.
    """

    body: nn.Module

    @nn.compact
    def __call__(self, z: jax.Array) -> jax.Array:
        return nn.Dense(1, name="head")(self.body(z.reshape(z.shape[0], -1)))[..., 0]


class AAE(AutoEncoderModel):
    """``AAE(encoder, decoder, discriminator)``: a stochastic encoder, a likelihood decoder and D(z).

    ``model.init(key, x)`` creates the ``encoder``, ``decoder`` and ``discriminator``
    parameter groups (and a learned prior's, when ``prior`` is given).

    Attributes:
        discriminator: a flax module mapping codes ``(batch, d)`` to logits ``(batch,)``.
    """

    discriminator: nn.Module

    def discriminate(self, z: jax.Array) -> jax.Array:
        return self.discriminator(z)

    def __call__(self, x: jax.Array) -> Any:
        out = super().__call__(x)  # the encoder, decoder (and prior) parameters, as the VAE's
        self.discriminator(jnp.zeros((1, self.latent_dim)))
        return out


def binary_cross_entropy(logits: jax.Array, target: float) -> jax.Array:
    """Mean over the batch of −[t log σ(l) + (1 − t) log(1 − σ(l))] for logits ``l`` and a constant label t.

    Args:
        logits: discriminator logits, any shape.
        target: the label, 1.0 ("real"/"prior"/"joint") or 0.0.

    Returns:
        A scalar (``optax.sigmoid_binary_cross_entropy``, stable for any logit).
    """
    return jnp.mean(optax.sigmoid_binary_cross_entropy(logits, jnp.full_like(logits, target)))


def discriminate(model: nn.Module, variables: Variables, z: jax.Array) -> Any:
    """The discriminator's output for ``z`` (logits ``(batch,)`` for AAE and FactorVAE)."""
    return model.apply(variables, z, method="discriminate")


def frozen_discriminator(variables: Variables) -> Variables:
    """``variables`` with the discriminator's parameters treated as constants (``stop_gradient``)."""
    if DISCRIMINATOR_GROUP not in variables.get("params", {}):
        raise ValueError(
            f"`variables['params']` has no '{DISCRIMINATOR_GROUP}' group: were they made by the model's init?"
        )
    return stop_part(variables, DISCRIMINATOR_GROUP)


def _check_scale(value: Any) -> None:
    check_scalar(value, "adversarial_loss_scale", nonnegative=True)


def loss(
    model: AAE,
    variables: Variables,
    x: jax.Array,
    key: jax.Array,
    *,
    adversarial_loss_scale: float = 0.5,
    aux: bool = False,
) -> Any:
    """The autoencoder's loss (reconstruction + s · generator loss), a scalar.

    Args:
        model: an ``AAE``.
        variables: its variables (with a ``"discriminator"`` group).
        x: a batch ``(B, *data_shape)``.
        key: PRNG key (one code per example, drawn as ``aet.vae.loss`` draws it).
        adversarial_loss_scale: s ≥ 0.
        aux: also return the metrics.

    Returns:
        The loss, or ``(loss, {"loss", "loglikelihood", "generator", "kl", "elbo"})``;
        ``generator`` is the mean −log σ(D(z)), ``kl`` and ``elbo`` are monitored only.
    """
    check_inputs(model, x, key)
    _check_scale(adversarial_loss_scale)
    frozen = frozen_discriminator(variables)
    t = elbo_terms(model, frozen, x, key, 1)
    generator = binary_cross_entropy(discriminate(model, frozen, t.z[0]), 1.0)
    loglik, kl = jnp.mean(t.loglik), jax.lax.stop_gradient(jnp.mean(t.kl))
    value = -loglik + adversarial_loss_scale * generator
    return finish(value, {"loglikelihood": loglik, "generator": generator, "kl": kl, "elbo": loglik - kl}, aux)


def discriminator_loss(model: AAE, variables: Variables, x: jax.Array, key: jax.Array, *, aux: bool = False) -> Any:
    """The discriminator's loss: prior draws labelled 1, codes of ``x`` labelled 0; a scalar.

    Codes z ~ q(z|x) (one per example, drawn with ``key`` as in ``loss``) and prior
    draws (with ``fold_in(key, 1)``) are ``stop_gradient``-ed: only D is trained.

    Args:
        model: an ``AAE``.
        variables: its variables.
        x: a batch ``(B, *data_shape)``.
        key: PRNG key.
        aux: also return ``{"loss", "prior_score", "code_score"}`` (the mean σ(D) on each set).

    Returns:
        The loss, or ``(loss, metrics)``.
    """
    check_inputs(model, x, key)
    z = jax.lax.stop_gradient(sample_posterior(model, encode(model, variables, x), key, 1)[0])
    z_prior = jax.lax.stop_gradient(_sample_prior(model, variables, jax.random.fold_in(key, 1), z.shape[0]))
    real, fake = discriminate(model, variables, z_prior), discriminate(model, variables, z)
    value = binary_cross_entropy(real, 1.0) + binary_cross_entropy(fake, 0.0)
    metrics = {"prior_score": jnp.mean(jax.nn.sigmoid(real)), "code_score": jnp.mean(jax.nn.sigmoid(fake))}
    return finish(value, metrics, aux)


__all__ = [
    "AAE", "DISCRIMINATOR_GROUP", "Discriminator", "binary_cross_entropy", "discriminate", "discriminator_loss",
    "elbo", "frozen_discriminator", "leaky_relu", "loss",
]
