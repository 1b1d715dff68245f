"""InfoVAE / MMD-VAE (Zhao et al. 2018). (Being written under issue 3.)"""
from __future__ import annotations

from .base import AutoEncoderModel


class MMDVAE(AutoEncoderModel):
    """InfoVAE with an MMD penalty (placeholder until issue 3 lands)."""
