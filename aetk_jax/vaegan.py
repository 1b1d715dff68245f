"""VAE-GAN (Larsen, Sønderby, Larochelle & Winther 2016): a VAE whose reconstruction error is measured
in a feature layer of a GAN discriminator ("learned similarity").

With x̃ = E[p(x|z)] the decoder's mean at z ~ q(z|x), D_l(x) the discriminator's
features at layer l = ``reconstruction_layer`` and D(x) its logit (σ(D) = the
probability that x is data), per example:

    L_feat = ½ ‖D_l(x) − D_l(x̃)‖²           (−log N(D_l(x); D_l(x̃), I) up to a constant),
    L_KL   = KL(q(z|x) ‖ p(z)),
    L_D    = −log σ(D(x)) − log(1 − σ(D(G(z̃)))),   z̃ ~ p(z), G(z̃) the decoder's mean,

and three networks trained by three optimizers, one phase each of one compiled
step (``aet.train.Phase``, declared in ``aetk_jax/training/hooks.py``):

- ``"encoder"``:       minimise mean(L_KL + L_feat)                  w.r.t. the encoder,
- ``"decoder"``:       minimise (1 − s)·mean(L_feat) − s·mean(L_D)    w.r.t. the decoder,
- ``"discriminator"``: minimise mean(L_D)                            w.r.t. the discriminator,

s = ``adversarial_loss_scale`` ∈ [0, 1], in that order (each phase evaluates its
loss at the parameters the previous one has just updated). ``loss`` is one pure
function serving the first two phases: its value is the sum of the encoder's and
the decoder's losses and its gradient is, on the encoder's parameters, the
encoder loss's and, on the decoder's, the decoder loss's (each computed with the
other networks' parameters as constants; the discriminator is never trained by
``loss``). ``discriminator_loss`` is the third phase's. ``optimizer`` is one optax
transformation (each phase keeps its own state) or
``{"encoder": opt, "decoder": opt, "discriminator": opt}``.

The discriminator: a module x → :class:`DiscriminatorOutput` (``logits``
``(batch,)`` and ``features``, a tuple of ``(batch, n_l)`` arrays);
``reconstruction_layer`` counts them from 1, and −1 is the last.
:class:`FeatureDiscriminator` is the default (dense layers). The decoder may be
any likelihood decoder with a registered ``decoder_mean`` (a user's decoder
registers one with ``@aet.decoders.decoder_mean.register``). The variables are the
VAE's plus a ``"discriminator"`` group; ``aet.evaluate`` scores the VAE's ELBO.

Departures from pythae (``pythae.models.VAEGAN``):

- ``reconstruction_layer=-1`` is the last *feature* layer; pythae's −1 is its
  discriminator's depth, the sigmoid output itself (one probability per example);
- pythae skips the decoder's or the discriminator's update when the
  discriminator's losses leave [0.68 − 0.4, 0.68 + 0.4] (``equilibrium``,
  ``margin``); not implemented (every phase steps every time);
- pythae computes the three losses at the same parameters, then steps the three
  optimizers; here the phases run in order;
- like pythae, L_D's fakes are decoded prior draws only; the paper also counts the
  reconstructions x̃ as fakes.

Conditional (``n_conditions`` or ``condition_dim`` > 0): the losses take the pair
``x = (x, c)``, the encoder is q(z|x, c) and the decoder p(x|z, c), and the
discriminator sees the data with the condition, D([flatten(x), e(c)]), as a
conditional GAN's does (Mirza & Osindero 2014): L_D sets the real pairs
(x_b, c_b) against the fakes (G(z̃_b, c_b), c_b), decoded under the batch's own
conditions, and L_feat compares D_l(x, c) with D_l(x̃, c). A discriminator blind
to c would pass a realistic example of another class; one that sees c asks the
decoder for p(x|c). A user's discriminator must then accept the flattened
``(batch, n_x + k)`` input (the default :class:`FeatureDiscriminator` does).
"""
from __future__ import annotations

from typing import Any, NamedTuple, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from .adversarial import AdversarialModel, binary_cross_entropy, discriminate, frozen_discriminator
from .base import Variables, check_inputs, decode, elbo_terms, finish, sample_prior, split_condition
from .decoders import decoder_mean
from .layers import Activation
from .piwae import stop_part
from .validation import check_int, check_scalar
from .vae import elbo  # the VAE's ELBO scores a trained model (the training objective differs)


class DiscriminatorOutput(NamedTuple):
    """What a VAE-GAN discriminator returns: ``logits`` ``(batch,)`` and ``features`` (a tuple of arrays)."""

    logits: jax.Array
    features: tuple


class FeatureDiscriminator(nn.Module):
    """The default VAE-GAN discriminator: dense layers on the flattened data, each one a feature layer.

    Attributes:
        features: the widths of the feature layers (1, 2, … for ``reconstruction_layer``).
        activation: the nonlinearity after every feature layer.
    """

    features: Sequence[int]
    activation: Activation = nn.relu

    def __post_init__(self) -> None:
        object.__setattr__(self, "features", tuple(int(f) for f in self.features))  # hashable
        super().__post_init__()

    @nn.compact
    def __call__(self, x: jax.Array) -> DiscriminatorOutput:
        h, feats = x.reshape(x.shape[0], -1), []
        for i, width in enumerate(self.features):
            h = self.activation(nn.Dense(width, name=f"dense_{i}")(h))
            feats.append(h)
        return DiscriminatorOutput(nn.Dense(1, name="head")(h)[..., 0], tuple(feats))


class VAEGAN(AdversarialModel):
    """``VAEGAN(encoder, decoder, discriminator)``: a stochastic encoder, a likelihood decoder, D(x).

    Attributes:
        discriminator: a flax module mapping data ``(batch, *data_shape)`` to a :class:`DiscriminatorOutput`.
    """

    def discriminator_example(self, x: jax.Array, c: Any) -> tuple[jax.Array, Any]:
        """D's parameters are created on the data itself (D sees data, not codes), with its condition.

        Args:
            x: the data given to ``__call__``.
            c: its condition (``None`` for an unconditional model).

        Returns:
            ``(x, c)``.
        """
        return x, c


def _layer(out: DiscriminatorOutput, reconstruction_layer: int) -> jax.Array:
    n = len(out.features)
    if reconstruction_layer == 0 or not -n <= reconstruction_layer <= n:
        raise ValueError(
            f"`reconstruction_layer` must be in 1..{n} or -1..-{n} (the discriminator has {n} feature layers), "
            f"got {reconstruction_layer}"
        )
    feat = out.features[reconstruction_layer - 1 if reconstruction_layer > 0 else reconstruction_layer]
    return feat.reshape(feat.shape[0], -1)


def feature_reconstruction(model: VAEGAN, variables: Variables, x: Any, x_rec: jax.Array,
                           reconstruction_layer: int = -1) -> jax.Array:
    """L_feat = ½ ‖D_l(x) − D_l(x̃)‖² per example, ``(B,)`` (with D_l(x, c) and D_l(x̃, c) given a pair).

    Args:
        model: a ``VAEGAN``.
        variables: its variables.
        x: data ``(B, *data_shape)``, or the pair ``(x, c)`` for a conditional model
            (both x and x̃ are then discriminated under c).
        x_rec: reconstructions x̃ of the data's shape.
        reconstruction_layer: l (1-based; −1 the last feature layer).

    Returns:
        The feature-space squared error per example.
    """
    data, c = split_condition(model, x)
    real = _layer(discriminate(model, variables, data, c), reconstruction_layer)
    fake = _layer(discriminate(model, variables, x_rec, c), reconstruction_layer)
    return 0.5 * jnp.sum((real - fake) ** 2, axis=-1)


def gan_loss(model: VAEGAN, variables: Variables, x: Any, key: jax.Array) -> jax.Array:
    """mean L_D: data labelled 1, the decoder's means at ``B`` prior draws (``key``) labelled 0; a scalar.

    Args:
        model: a ``VAEGAN``.
        variables: its variables.
        x: data ``(B, *data_shape)``, or the pair ``(x, c)``: the real pairs (x_b, c_b) against the fakes
            (G(z̃_b, c_b), c_b), decoded and discriminated under the batch's own conditions.
        key: PRNG key of the prior draws z̃.

    Returns:
        BCE(D(x), 1) + BCE(D(G(z̃)), 0).
    """
    data, c = split_condition(model, x)
    z_prior = jax.lax.stop_gradient(sample_prior(model, variables, key, data.shape[0]))
    fake = decoder_mean(model.decoder, decode(model, variables, z_prior, c))
    return (binary_cross_entropy(discriminate(model, variables, data, c).logits, 1.0)
            + binary_cross_entropy(discriminate(model, variables, fake, c).logits, 0.0))


def _check_hyper(adversarial_loss_scale: Any, reconstruction_layer: Any) -> None:
    check_scalar(adversarial_loss_scale, "adversarial_loss_scale", low=0.0, high=1.0)
    # an int here; its range depends on the discriminator and is checked by `_layer`
    check_int(reconstruction_layer, "reconstruction_layer", minimum=-(2**31))


def _part(model: VAEGAN, variables: Variables, x: Any, key: jax.Array, layer: int) -> tuple:
    """(terms, L_feat per example) with x̃ the decoder's mean at the VAE's draw (under the example's condition)."""
    t = elbo_terms(model, variables, x, key, 1)
    data, c = split_condition(model, x)
    x_rec = decoder_mean(model.decoder, decode(model, variables, t.z[0], c))
    return t, feature_reconstruction(model, variables, x, x_rec.reshape(data.shape), layer)


def loss(
    model: VAEGAN,
    variables: Variables,
    x: Any,
    key: jax.Array,
    *,
    adversarial_loss_scale: float = 0.5,
    reconstruction_layer: int = -1,
    aux: bool = False,
) -> Any:
    """The encoder's plus the decoder's loss, with each network's own gradient; a scalar.

    Args:
        model: a ``VAEGAN``.
        variables: its variables (with a ``"discriminator"`` group, held fixed here).
        x: a batch ``(B, *data_shape)`` (the pair ``(x, c)`` for a conditional model).
        key: PRNG key (the code draw as ``aet.vae.loss``; the prior draws of L_D with ``fold_in(key, 1)``).
        adversarial_loss_scale: s ∈ [0, 1].
        reconstruction_layer: the discriminator's feature layer of L_feat (1-based; −1 the last).
        aux: also return the metrics.

    Returns:
        The loss, or ``(loss, {"loss", "encoder_objective", "decoder_objective", "feature_reconstruction", "gan",
        "kl", "loglikelihood", "elbo"})`` (``loglikelihood`` and ``elbo``, under the decoder's likelihood, are
        monitored only). In ``fit``'s history, ``decoder_loss`` and ``discriminator_loss`` are the losses of the
        second and third phases (this loss after the encoder's update, and ``discriminator_loss``).
    """
    check_inputs(model, x, key)
    _check_hyper(adversarial_loss_scale, reconstruction_layer)
    s = adversarial_loss_scale
    fixed = frozen_discriminator(variables)
    # the encoder's loss: the decoder's parameters as constants
    t, feat_e = _part(model, stop_part(fixed, "decoder"), x, key, reconstruction_layer)
    encoder_loss = jnp.mean(t.kl + feat_e)
    # the decoder's loss: the encoder's parameters as constants (the same code draw)
    dec_vars = stop_part(fixed, "encoder")
    _, feat_d = _part(model, dec_vars, x, key, reconstruction_layer)
    gan = gan_loss(model, dec_vars, x, jax.random.fold_in(key, 1))
    decoder_loss = (1.0 - s) * jnp.mean(feat_d) - s * gan
    loglik, kl = jax.lax.stop_gradient(jnp.mean(t.loglik)), jnp.mean(t.kl)
    metrics = {"encoder_objective": encoder_loss, "decoder_objective": decoder_loss,
               "feature_reconstruction": jnp.mean(feat_e),
               "gan": gan, "kl": kl, "loglikelihood": loglik, "elbo": loglik - kl}
    return finish(encoder_loss + decoder_loss, metrics, aux)


def discriminator_loss(model: VAEGAN, variables: Variables, x: Any, key: jax.Array, *,
                       aux: bool = False) -> Any:
    """The discriminator phase's loss mean L_D (``gan_loss``, decoded prior draws with ``fold_in(key, 1)``).

    The decoded prior draws are ``stop_gradient``-ed: only the discriminator is trained.

    Args:
        model: a ``VAEGAN``.
        variables: its variables.
        x: a batch ``(B, *data_shape)`` (the pair ``(x, c)`` for a conditional model).
        key: PRNG key.
        aux: also return ``{"loss"}``.

    Returns:
        The loss, or ``(loss, metrics)``.
    """
    check_inputs(model, x, key)
    frozen = stop_part(stop_part(variables, "encoder"), "decoder")
    return finish(gan_loss(model, frozen, x, jax.random.fold_in(key, 1)), {}, aux)


__all__ = [
    "DiscriminatorOutput", "FeatureDiscriminator", "VAEGAN", "discriminator_loss", "elbo", "feature_reconstruction",
    "gan_loss", "loss",
]
