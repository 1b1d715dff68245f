"""Shared test configuration: CPU only, small models, the bundled digits."""
from __future__ import annotations

import os

os.environ.setdefault("JAX_PLATFORMS", "cpu")

import flax.linen as nn  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

import aetk_jax as aet  # noqa: E402


@pytest.fixture(scope="session")
def digits():
    """(train, val) split of scikit-learn's digits, x in [0, 1] of shape (n, 64)."""
    return aet.data.load_digits()


def small_vae_parts(latent_dim: int = 2, hidden: int = 32, data_dim: int = 64, decoder: str = "bernoulli"):
    """A small Gaussian encoder and a decoder of the named kind."""
    enc = aet.JointGaussianLogEncoder(aet.MLP([hidden], final_activation=nn.relu), latent_dim)
    body = aet.MLP([hidden], final_activation=nn.relu)
    if decoder == "bernoulli":
        dec = aet.BernoulliDecoder(body, data_dim)
    else:
        dec = aet.JointGaussianLogDecoder(body, data_dim)
    return enc, dec


@pytest.fixture
def rng():
    return np.random.default_rng(0)
