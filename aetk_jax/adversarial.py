"""The shared base of the models trained against a discriminator: AAE, FactorVAE and VAE-GAN.

Each of them is a VAE-family model (a stochastic encoder, a likelihood decoder,
optionally a prior) with one more network, the discriminator D, whose parameters
are the ``"discriminator"`` group of ``variables["params"]``
(:data:`DISCRIMINATOR_GROUP`) and are trained by a phase of their own in ``fit``'s
step (``aetk_jax/training/hooks.py``). This module holds what the three share:

- :class:`AdversarialModel`: the base class, ``Model(encoder, decoder, discriminator)``;
  its ``__call__`` creates the VAE's parameters and then D's, on the input
  :meth:`AdversarialModel.discriminator_example` names (one code ``(1, d)`` by
  default; the VAE-GAN overrides it with the data);
- ``model.discriminate(inputs, c=None)`` and :func:`discriminate`: D's output for
  ``inputs`` ``(B, ...)``; with a condition ``c`` D sees
  ``[flatten(inputs), e(c)]`` ``(B, n + k)``, the condition joined as the encoder's
  body sees it (``aet.base``);
- :class:`Discriminator`: a default discriminator, a body on the flattened input
  and a scalar logit ``(B,)``;
- :func:`binary_cross_entropy`: mean_b −[t log σ(l_b) + (1 − t) log(1 − σ(l_b))];
- :func:`frozen_discriminator`: the variables with D's parameters as constants,
  for the losses that train the other networks.

Conditional models (``n_conditions``/``condition_dim`` > 0) take pairs ``(x, c)``
like every other model; which discriminators see c is each model's choice
(AAE and FactorVAE: codes alone; VAE-GAN: data and condition).
"""
from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from .base import AutoEncoderModel, Variables, is_conditional, split_condition
from .piwae import stop_part

#: the name of the discriminator's parameter group in ``variables["params"]``
DISCRIMINATOR_GROUP = "discriminator"


def leaky_relu(x: jax.Array) -> jax.Array:
    """LeakyReLU with slope 0.2 for x < 0 (the default discriminators' nonlinearity, as pythae's).

    Args:
        x: any array.

    Returns:
        ``x`` where ``x ≥ 0``, ``0.2 x`` elsewhere.
    """
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


class AdversarialModel(AutoEncoderModel):
    """``Model(encoder, decoder, discriminator)``: a VAE-family model with a discriminator D.

    ``model.init(key, x)`` (``x`` the pair ``(x, c)`` for a conditional model)
    creates the ``encoder``, ``decoder`` (and a learned prior's) parameter groups
    as the VAE's, then the ``discriminator`` group.

    Attributes:
        discriminator: a flax module; its input is what :meth:`discriminate` passes
            (codes ``(batch, d)`` by default) and its output is the model's business
            (logits ``(batch,)`` for AAE and FactorVAE).
    """

    discriminator: nn.Module

    def discriminate(self, inputs: jax.Array, c: Any = None) -> Any:
        """D(inputs), or D([flatten(inputs), e(c)]) given a condition ``c`` (``(batch,)`` labels or covariates)."""
        if c is None:
            return self.discriminator(inputs)
        if not is_conditional(self):
            raise ValueError(f"`c`: {type(self).__name__} is not conditional, but a condition was given to its "
                             "discriminator")
        flat = inputs.reshape(inputs.shape[0], -1)
        return self.discriminator(jnp.concatenate([flat, self.embed_condition(c, flat.dtype)], axis=-1))

    def discriminator_example(self, x: jax.Array, c: Any) -> tuple[jax.Array, Any]:
        """The ``(inputs, c)`` on which ``__call__`` creates D's parameters: one zero code ``(1, d)``, no condition.

        Args:
            x: the data given to ``__call__`` (without its condition).
            c: its condition (``None`` for an unconditional model).

        Returns:
            ``(inputs, condition)`` for :meth:`discriminate`.
        """
        return jnp.zeros((1, self.latent_dim)), None

    def __call__(self, x: Any) -> Any:
        out = super().__call__(x)  # the encoder, decoder (and prior) parameters, as the VAE's
        self.discriminate(*self.discriminator_example(*split_condition(self, x)))
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


def discriminate(model: nn.Module, variables: Variables, inputs: jax.Array, condition: Any = None) -> Any:
    """The discriminator's output for ``inputs`` (logits ``(batch,)`` for AAE and FactorVAE).

    Args:
        model: an :class:`AdversarialModel`.
        variables: its variables.
        inputs: what D takes, ``(batch, ...)`` (codes, or data for the VAE-GAN).
        condition: ``None``, or the batch's condition, joined to the inputs (:meth:`AdversarialModel.discriminate`).

    Returns:
        D's output.
    """
    if condition is None:
        return model.apply(variables, inputs, method="discriminate")
    return model.apply(variables, inputs, condition, method="discriminate")


def frozen_discriminator(variables: Variables) -> Variables:
    """``variables`` with the discriminator's parameters treated as constants (``stop_gradient``).

    Args:
        variables: an adversarial model's variables.

    Returns:
        The same variables, ``params["discriminator"]`` behind ``stop_gradient``; ``ValueError`` without that group.
    """
    if DISCRIMINATOR_GROUP not in variables.get("params", {}):
        raise ValueError(
            f"`variables['params']` has no '{DISCRIMINATOR_GROUP}' group: were they made by the model's init?"
        )
    return stop_part(variables, DISCRIMINATOR_GROUP)


__all__ = [
    "AdversarialModel", "DISCRIMINATOR_GROUP", "Discriminator", "binary_cross_entropy", "discriminate",
    "frozen_discriminator", "leaky_relu",
]
