"""FactorVAE (Kim & Mnih 2018, "Disentangling by factorising").

The VAE's ELBO with a penalty γ·TC on the total correlation of the aggregate
posterior q(z) = E_x q(z|x),

    TC = KL(q(z) ‖ q̄(z)),   q̄(z) = Π_j q(z_j),

estimated by the density-ratio trick: a discriminator D(z) (a logit, ``(batch,)``)
is trained to tell codes z ~ q(z) (label 1) from codes of q̄ (label 0), so that at
its optimum D(z) = log q(z)/q̄(z) and

    TC ≈ E_{q(z)}[D(z)] = E_{q(z)}[log σ(D)/(1 − σ(D))].

- VAE phase (``loss``), the discriminator's parameters held fixed:

      loss = (1/B) Σ_b [−log p(x_b|z_b) + KL(q(z|x_b) ‖ p(z))] + γ · (1/B) Σ_b D(z_b);

- discriminator phase (``discriminator_loss``), the codes held fixed:

      loss_D = ½ [(1/B) Σ_b −log σ(D(z_b)) + (1/B) Σ_b −log(1 − σ(D(z̄_b)))],

  where z̄ = ``permute_dims(z)`` permutes every latent dimension independently
  across the batch: its rows are draws from (an estimate of) q̄(z).

``aet.train.fit`` runs the two as phases of one step (``aet.train.Phase``,
declared in ``aetk_jax/training/hooks.py``): the encoder/decoder update
(``"autoencoder"``), then the discriminator's (``"discriminator"``) on codes of
the encoder just updated; ``optimizer`` is one optax transformation (each phase
keeps its own state) or ``{"autoencoder": opt, "discriminator": opt}``.

The batch: every example serves both phases. The paper draws a second batch for
the permuted codes, and pythae splits each batch in two halves (the VAE loss on
one half, the permuted codes from the other). Here the VAE loss uses all B
examples and the discriminator sees B joint and B permuted codes of the same
batch: a permuted row equals a joint row only if every dimension drew the same
example (probability B^{1−d}), and each set has the right distribution, so the
discriminator's loss estimates the same objective from twice the codes.

Departures from pythae (``pythae.models.FactorVAE``): ``gamma`` defaults to 10
(pythae: 2; the paper's digits runs use γ in [10, 40]); the discriminator outputs
one logit (pythae: two logits, whose difference is the same log-ratio); the
reconstruction term is the decoder's log-likelihood (pythae: summed MSE or BCE);
pythae computes both losses at the same parameters and steps both optimizers,
here the discriminator's loss follows the VAE's update (the paper's Algorithm 1
order). The model's variables are the VAE's plus a ``"discriminator"`` group.

Conditional (``n_conditions`` or ``condition_dim`` > 0): both losses take the
pair ``x = (x, c)``, the encoder is q(z|x, c) and the decoder p(x|z, c); the
discriminator sees the codes alone, so the penalty is the total correlation of
the aggregate posterior q(z) = E_{x,c} q(z|x, c) (the codes are to be
factorised whatever the condition; the condition itself is not a code dimension).
"""
from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from .adversarial import DISCRIMINATOR_GROUP, AdversarialModel, Discriminator, binary_cross_entropy, discriminate
from .adversarial import frozen_discriminator
from .base import Variables, batch_size, check_inputs, elbo_terms, encode, finish, sample_posterior
from .validation import check_key, check_scalar
from .vae import elbo  # the VAE's ELBO scores a trained model (the training objective differs)


class FactorVAE(AdversarialModel):
    """``FactorVAE(encoder, decoder, discriminator)``: a stochastic encoder, any decoder and D(z).

    Attributes:
        discriminator: a flax module mapping codes ``(batch, d)`` to logits ``(batch,)``
            (e.g. ``aet.aae.Discriminator(body)``).
    """


def permute_dims(z: jax.Array, key: jax.Array) -> jax.Array:
    """Every column of ``z`` ``(B, d)`` permuted across the batch by its own random permutation.

    Args:
        z: codes ``(B, d)`` with B ≥ 2 (``ValueError`` otherwise).
        key: a ``jax.random`` key (one permutation per dimension is drawn from it).

    Returns:
        ``z̄`` ``(B, d)`` with ``z̄[:, j] = z[π_j, j]``: a sample of the product of the code marginals.
    """
    check_key(key)
    if not hasattr(z, "ndim") or z.ndim != 2:
        raise ValueError(f"`z` must be codes of shape (batch, d), got {getattr(z, 'shape', z)!r}")
    if z.shape[0] < 2:
        raise ValueError(f"`z` needs a batch of >= 2 codes to permute, got {z.shape[0]}")
    keys = jax.random.split(key, z.shape[1])
    return jax.vmap(lambda col, k: jax.random.permutation(k, col), in_axes=(1, 0), out_axes=1)(z, keys)


def total_correlation(model: nn.Module, variables: Variables, z: jax.Array) -> jax.Array:
    """The discriminator's estimate of TC on codes ``z`` ``(B, d)`` drawn from q(z): mean_b D(z_b), a scalar."""
    return jnp.mean(discriminate(model, variables, z))


def density_ratio_loss(model: nn.Module, variables: Variables, z: jax.Array, key: jax.Array) -> jax.Array:
    """The discriminator's loss on codes ``z`` ``(B, d)`` of q(z) against ``permute_dims(z, key)``; a scalar.

    Args:
        model: a model with a ``discriminate`` method (``FactorVAE``).
        variables: its variables.
        z: codes drawn from the joint q(z) (label 1).
        key: PRNG key of the permutation (label 0).

    Returns:
        ½ [BCE(D(z), 1) + BCE(D(z̄), 0)].
    """
    joint = discriminate(model, variables, z)
    product = discriminate(model, variables, permute_dims(z, key))
    return 0.5 * (binary_cross_entropy(joint, 1.0) + binary_cross_entropy(product, 0.0))


def _check_batch(x: Any) -> None:
    if batch_size(x) < 2:
        raise ValueError("`x` needs a batch of >= 2 examples: FactorVAE permutes codes across the batch")


def loss(
    model: FactorVAE, variables: Variables, x: Any, key: jax.Array, *, gamma: float = 10.0, aux: bool = False
) -> Any:
    """The VAE phase's loss: negative ELBO + γ · the discriminator's TC estimate; a scalar.

    Args:
        model: a ``FactorVAE``.
        variables: its variables (with a ``"discriminator"`` group, held fixed here).
        x: a batch ``(B, *data_shape)``, B ≥ 2 (the pair ``(x, c)`` for a conditional model).
        key: PRNG key (one code per example, drawn as ``aet.vae.loss`` draws it; γ = 0 gives its loss).
        gamma: γ ≥ 0, the weight of the total correlation.
        aux: also return the metrics.

    Returns:
        The loss, or ``(loss, {"loss", "loglikelihood", "kl", "tc", "elbo"})``.
    """
    check_inputs(model, x, key)
    check_scalar(gamma, "gamma", nonnegative=True)
    _check_batch(x)
    frozen = frozen_discriminator(variables)
    t = elbo_terms(model, frozen, x, key, 1)
    tc = total_correlation(model, frozen, t.z[0])
    loglik, kl = jnp.mean(t.loglik), jnp.mean(t.kl)
    value = -loglik + kl + gamma * tc
    return finish(value, {"loglikelihood": loglik, "kl": kl, "tc": tc, "elbo": loglik - kl}, aux)


def discriminator_loss(model: FactorVAE, variables: Variables, x: Any, key: jax.Array, *,
                       aux: bool = False) -> Any:
    """The discriminator phase's loss on the codes of ``x`` (``density_ratio_loss``); a scalar.

    Codes z ~ q(z|x) (one per example, drawn with ``key`` as in ``loss``) are
    ``stop_gradient``-ed; the permutation uses ``fold_in(key, 1)``.

    Args:
        model: a ``FactorVAE``.
        variables: its variables.
        x: a batch ``(B, *data_shape)``, B ≥ 2 (the pair ``(x, c)`` for a conditional model).
        key: PRNG key.
        aux: also return ``{"loss", "tc"}`` (the TC estimate on these codes).

    Returns:
        The loss, or ``(loss, metrics)``.
    """
    check_inputs(model, x, key)
    _check_batch(x)
    z = jax.lax.stop_gradient(sample_posterior(model, encode(model, variables, x), key, 1)[0])
    value = density_ratio_loss(model, variables, z, jax.random.fold_in(key, 1))
    return finish(value, {"tc": total_correlation(model, variables, z)}, aux)


__all__ = [
    "DISCRIMINATOR_GROUP", "Discriminator", "FactorVAE", "density_ratio_loss", "discriminator_loss", "elbo", "loss",
    "permute_dims", "total_correlation",
]
