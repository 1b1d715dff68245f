"""Shared set-up for the documentation examples.

Each example trains on scikit-learn's bundled digits and writes its figures to
``AETK_EXAMPLE_OUT`` (default ``docs/examples/figures``). ``AETK_EXAMPLE_EPOCHS``
overrides the number of epochs (CI runs every example with a small budget).
"""
from __future__ import annotations

import os

import flax.linen as nn

import aetk_jax as aet


def out_dir() -> str:
    path = os.environ.get("AETK_EXAMPLE_OUT", os.path.join(os.path.dirname(__file__), "figures"))
    os.makedirs(path, exist_ok=True)
    return path


def epochs(default: int) -> int:
    return int(os.environ.get("AETK_EXAMPLE_EPOCHS", default))


def mlp(hidden=(128, 128)) -> nn.Module:
    return aet.MLP(list(hidden), final_activation=nn.relu)


def gaussian_encoder(latent_dim: int = 2) -> nn.Module:
    return aet.JointGaussianLogEncoder(mlp(), latent_dim)


def bernoulli_decoder(n_out: int = 64) -> nn.Module:
    return aet.BernoulliDecoder(mlp(), n_out)
