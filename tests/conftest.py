"""Shared test configuration: CPU only, small models, the bundled digits."""
from __future__ import annotations

import math
import os
import tempfile
from typing import NamedTuple

os.environ.setdefault("JAX_PLATFORMS", "cpu")

import flax.linen as nn  # noqa: E402
import jax  # noqa: E402

# XLA compilation dominates this suite's time (a small test compiles more than it computes), and many
# tests compile the same programs: a persistent compilation cache shared by the xdist workers reuses
# them within a run and across runs. Keyed by the program, the flags and the jax version, so a hit is
# the same executable; AETK_TEST_XLA_CACHE="" turns it off.
_CACHE = os.environ.get("AETK_TEST_XLA_CACHE", os.path.join(tempfile.gettempdir(), "aetk_jax-test-xla-cache"))
if _CACHE:
    jax.config.update("jax_compilation_cache_dir", _CACHE)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.05)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

import aetk_jax as aet  # noqa: E402
from scipy import stats  # noqa: E402


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


# a linear-Gaussian VAE whose log p(x), posterior and ELBO are known in closed form
D, LATENT, B = 5, 2, 6
SIGMA_X = 0.5


class Identity(nn.Module):
    @nn.compact
    def __call__(self, x):
        return x


def linear_gaussian(mean_shift: float = 0.0, sigma_scale: float = 1.0, model_cls=None, seed: int = 0):
    """p(z) = N(0, I), p(x|z) = N(W z + b, σ²I) with orthogonal columns of W, so the exact
    posterior is diagonal: S = diag(1 / (1 + s²/σ²)), m = S Wᵀ(x − b)/σ². The encoder is that
    posterior, its mean shifted by ``mean_shift`` and its σ scaled by ``sigma_scale``.

    ``model_cls`` (default ``aet.VAE``) is any model built from ``(encoder, decoder)`` with
    the VAE's variable layout. Returns ``(model, variables, x, log p(x), exact ELBO, posterior
    mean)``, the last three as float64 NumPy arrays ``(B,)``, ``(B,)``, ``(B, LATENT)``."""
    rng = np.random.default_rng(seed)
    q, _ = np.linalg.qr(rng.normal(size=(D, D)))
    s = np.array([1.5, 0.8])
    W = q[:, :LATENT] * s  # (D, d), WᵀW = diag(s²)
    b = rng.normal(size=D) * 0.3
    S = 1.0 / (1.0 + s**2 / SIGMA_X**2)
    A = W * S / SIGMA_X**2  # m = (x − b) A
    model = (model_cls or aet.VAE)(aet.JointGaussianLogEncoder(Identity(), LATENT), aet.JointGaussianLogDecoder(Identity(), D))
    params = {
        "encoder": {
            "mu": {"kernel": A, "bias": -b @ A + mean_shift},
            "logsigma": {"kernel": np.zeros((D, LATENT)), "bias": 0.5 * np.log(S) + np.log(sigma_scale)},
        },
        "decoder": {
            "mu": {"kernel": W.T, "bias": b},
            "logsigma": {"kernel": np.zeros((LATENT, D)), "bias": np.full(D, np.log(SIGMA_X))},
        },
    }
    x = rng.normal(size=(B, D)) * 1.2 + b
    template = model.init(jax.random.key(0), jnp.asarray(x))
    variables = {"params": jax.tree_util.tree_map(jnp.asarray, params)}
    assert jax.tree_util.tree_structure(template) == jax.tree_util.tree_structure(variables)
    logpx = stats.multivariate_normal(b, W @ W.T + SIGMA_X**2 * np.eye(D)).logpdf(x)
    # KL(q ‖ exact posterior) for the diagonal Gaussians, hence the exact ELBO = log p(x) − KL
    m = (x - b) @ A
    sq, sp = np.sqrt(S) * sigma_scale, np.sqrt(S)
    kl = 0.5 * np.sum(sq**2 / sp**2 + mean_shift**2 / sp**2 - 1 + 2 * np.log(sp / sq)) * np.ones(B)
    return model, variables, jnp.asarray(x), logpx, logpx - kl, m


class FixedScaleParams(NamedTuple):
    mu: jax.Array


class FixedScaleDecoder(nn.Module):
    """A user's likelihood aet knows nothing about: p(x|z) = N(x; Dense(z), 0.5² I).

    Shared by the tests that check a model accepts a user-registered likelihood.
    """

    output_dim: int

    @nn.compact
    def __call__(self, z):
        return FixedScaleParams(nn.Dense(self.output_dim)(z))


@aet.decoder_loglikelihood.register(FixedScaleDecoder)
def _fixed_scale_loglik(decoder, x, out):
    return jnp.sum(-0.5 * ((x - out.mu) / 0.5) ** 2 - math.log(0.5) - 0.5 * math.log(2 * math.pi), axis=-1)


@aet.decoders.decoder_mean.register(FixedScaleDecoder)
def _fixed_scale_mean(decoder, out):
    return out.mu
