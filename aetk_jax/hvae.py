"""Hamiltonian VAE (Caterini, Doucet & Sejdinovic 2018). Tempering schedules are
shared with the RHVAE. (The model, leapfrog and loss are being written under issue 4.)"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from .base import AutoEncoderModel


class HVAE(AutoEncoderModel):
    """Hamiltonian VAE: ``HVAE(encoder, decoder)``."""


def quadratic_tempering(beta0: float, k, K: int):
    """Quadratic inverse-temperature schedule: β_k = [(1 − 1/√β₀)(k/K)² + 1/√β₀]⁻², so β_0 = β₀ and β_K = 1."""
    inv = 1.0 / jnp.sqrt(beta0)
    return ((1.0 - inv) * (jnp.asarray(k) / K) ** 2 + inv) ** -2.0


def null_tempering(beta0: float, k, K: int):
    """Constant schedule: β_k = β₀ for every k."""
    return jnp.broadcast_to(jnp.asarray(beta0, dtype=jnp.result_type(float)), jnp.shape(k))
