"""Riemannian Hamiltonian VAE (Chadebec, Mantoux & Allassonnière 2020). (Being written under issue 5.)"""
from __future__ import annotations

from typing import Any

import flax.linen as nn

from .base import AutoEncoderModel


class RHVAE(AutoEncoderModel):
    """Riemannian Hamiltonian VAE (placeholder until issue 5 lands)."""

    metric_network: Any = None
    n_centroids: int = 0
    T: float = 1.0
    lam: float = 1e-2
