"""InfoMaxVAE (Rezaabad & Vishwanath 2020). (Being written under issue 3.)"""
from __future__ import annotations

from typing import Any

from .base import AutoEncoderModel


class InfoMaxVAE(AutoEncoderModel):
    """InfoMaxVAE (placeholder until issue 3 lands)."""

    mi_network: Any = None
