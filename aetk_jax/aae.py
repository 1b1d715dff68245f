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

Conditional (``n_conditions`` or ``condition_dim`` > 0): both losses take the
pair ``x = (x, c)``; the encoder is q(z|x, c), the decoder p(x|z, c), and the
discriminator still sees the codes alone, D(z): the prior p(z) is
unconditional, so the aggregate posterior E_{x,c} q(z|x, c) is matched to it
and the label is left to the decoder (Makhzani et al.'s supervised AAE, whose
codes carry the style while c carries the class).

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

The discriminator pieces (:class:`Discriminator`, :func:`binary_cross_entropy`,
:func:`discriminate`, :func:`frozen_discriminator`) and the base class
(``aet.adversarial.AdversarialModel``) are shared with ``aet.factorvae`` and
``aet.vaegan`` and live in ``aet.adversarial``; this module re-exports them.
"""
from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from .adversarial import (
    DISCRIMINATOR_GROUP, AdversarialModel, Discriminator, binary_cross_entropy, discriminate, frozen_discriminator,
    leaky_relu,
)
from .base import Variables, check_inputs, elbo_terms, encode, finish, sample_posterior
from .base import sample_prior as _sample_prior
from .validation import check_scalar
from .vae import elbo  # the VAE's ELBO scores a trained model (the training objective differs)


class AAE(AdversarialModel):
    """``AAE(encoder, decoder, discriminator)``: a stochastic encoder, a likelihood decoder and D(z).

    ``model.init(key, x)`` creates the ``encoder``, ``decoder`` and ``discriminator``
    parameter groups (and a learned prior's, when ``prior`` is given).

    Attributes:
        discriminator: a flax module mapping codes ``(batch, d)`` to logits ``(batch,)``.
    """


def _check_scale(value: Any) -> None:
    check_scalar(value, "adversarial_loss_scale", nonnegative=True)


def loss(
    model: AAE,
    variables: Variables,
    x: Any,
    key: jax.Array,
    *,
    adversarial_loss_scale: float = 0.5,
    aux: bool = False,
) -> Any:
    """The autoencoder's loss (reconstruction + s · generator loss), a scalar.

    Args:
        model: an ``AAE``.
        variables: its variables (with a ``"discriminator"`` group).
        x: a batch ``(B, *data_shape)`` (the pair ``(x, c)`` for a conditional model).
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


def discriminator_loss(model: AAE, variables: Variables, x: Any, key: jax.Array, *, aux: bool = False) -> Any:
    """The discriminator's loss: prior draws labelled 1, codes of ``x`` labelled 0; a scalar.

    Codes z ~ q(z|x) (one per example, drawn with ``key`` as in ``loss``) and prior
    draws (with ``fold_in(key, 1)``) are ``stop_gradient``-ed: only D is trained.

    Args:
        model: an ``AAE``.
        variables: its variables.
        x: a batch ``(B, *data_shape)`` (the pair ``(x, c)`` for a conditional model).
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
