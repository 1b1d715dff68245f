"""Deterministic autoencoder.

loss(x) = mean over batch and data dimensions of (x̂ − x)², x̂ = decoder(encoder(x))
(the Julia package's ``mse_loss``).
"""
from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from .base import AutoEncoderModel, Variables, check_inputs, decode, encode, finish, split_condition
from .decoders import decoder_mean
from .encoders import encoder_mean


class AE(AutoEncoderModel):
    """Deterministic autoencoder: ``AE(encoder, decoder)``."""


def reconstruct(model: AE, variables: Variables, x: jax.Array) -> jax.Array:
    """x̂ = mean of the decoder at the encoder's code, ``(batch, *data_shape)`` (``x`` = (x, c) if conditional)."""
    z = encoder_mean(model.encoder, encode(model, variables, x))
    return decoder_mean(model.decoder, decode(model, variables, z, split_condition(model, x)[1]))


def loss(model: AE, variables: Variables, x: jax.Array, key: Any = None, *, aux: bool = False) -> Any:
    """Mean squared reconstruction error, a scalar. ``key`` is accepted and unused,
    so the AE fits the common ``loss(variables, x, key)`` signature."""
    check_inputs(model, x)
    mse = jnp.mean((reconstruct(model, variables, x) - split_condition(model, x)[0]) ** 2)
    return finish(mse, {"mse": mse}, aux)
