"""Tests of InfoVAE / MMD-VAE (aet.mmdvae) against float64 NumPy references,
the closed-form MMD between Gaussians, the VAE limit and a digits training run."""
from __future__ import annotations

import functools
import math
from typing import NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.test_util import check_grads

import aetk_jax as aet
from aetk_jax import mmdvae

LOG_2PI = math.log(2.0 * math.pi)


# --------------------------------------------------------------------------- a user-registered decoder


class FixedScaleParams(NamedTuple):
    mu: jax.Array


class FixedScaleGaussianDecoder(nn.Module):
    """p(x|z) = N(x; body(z), 0.5² I): a decoder type aet knows nothing about."""

    body: nn.Module
    output_dim: int

    @nn.compact
    def __call__(self, z):
        return FixedScaleParams(nn.Dense(self.output_dim)(self.body(z)))


@aet.decoder_loglikelihood.register(FixedScaleGaussianDecoder)
def _fixed_scale_loglik(decoder, x, out):
    s = 0.5
    return jnp.sum(-0.5 * ((x - out.mu) / s) ** 2 - math.log(s) - 0.5 * LOG_2PI, axis=-1)


# Jitted once per distinct static configuration, and ONE model configuration for the
# whole file: compiled code (and cached initialisers) keep this file fast on 2 CPU cores.
LOSS = jax.jit(mmdvae.loss, static_argnums=0, static_argnames=("aux", "n_latent_samples", "kernel", "unbiased"))
ELBO = jax.jit(aet.evaluate.elbo, static_argnums=0, static_argnames=("n_samples",))


def _model(hidden: int = 16, latent: int = 2):
    """Gaussian encoder and the user-registered decoder above, tanh bodies (smooth, for check_grads)."""
    act = nn.tanh
    enc = aet.JointGaussianLogEncoder(aet.MLP([hidden], activation=act, final_activation=act), latent)
    dec = FixedScaleGaussianDecoder(aet.MLP([hidden], activation=act, final_activation=act), 64)
    return aet.MMDVAE(enc, dec)


# --------------------------------------------------------------------------- NumPy references


def np_kernel(x, y, rho=1.0):
    d = x.shape[1]
    out = np.empty((len(x), len(y)))
    for i in range(len(x)):
        for j in range(len(y)):
            out[i, j] = math.exp(-np.sum((x[i] - y[j]) ** 2) / (rho**2 * d))
    return out


def np_mmd(x, y, rho=1.0, unbiased=True):
    kxx, kyy, kxy = np_kernel(x, x, rho), np_kernel(y, y, rho), np_kernel(y, x, rho).T
    n, m = len(x), len(y)
    if unbiased:
        sxx = sum(kxx[i, j] for i in range(n) for j in range(n) if i != j) / (n * (n - 1))
        syy = sum(kyy[i, j] for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
    else:
        sxx, syy = kxx.mean(), kyy.mean()
    return sxx + syy - 2.0 * kxy.mean()


def gaussian_mmd2(delta, d, rho=1.0):
    """Population MMD² between N(0, I) and N(δ, I) under k = exp(−‖u‖²/c), c = ρ²d.

    For u ~ N(m, s²I_d): E exp(−‖u‖²/c) = (1 + 2s²/c)^(−d/2) exp(−‖m‖²/(c + 2s²));
    differences of independent draws have s² = 2.
    """
    c = rho**2 * d
    base = (1.0 + 4.0 / c) ** (-d / 2)
    return 2.0 * base * (1.0 - math.exp(-float(np.sum(np.square(delta))) / (c + 4.0)))


# --------------------------------------------------------------------------- kernel and estimators


def test_gaussian_kernel_matches_numpy(rng):
    x, y = rng.normal(size=(7, 3)), rng.normal(size=(5, 3))
    with jax.enable_x64(True):
        for rho in (1.0, 0.7):
            got = np.asarray(mmdvae.gaussian_kernel(jnp.asarray(x), jnp.asarray(y), rho=rho))
            assert got.shape == (7, 5)
            np.testing.assert_allclose(got, np_kernel(x, y, rho), rtol=1e-12, atol=0)


@pytest.mark.parametrize("unbiased", [True, False])
def test_mmd_div_matches_numpy(rng, unbiased):
    x, y = rng.normal(size=(9, 3)), 0.5 + 1.3 * rng.normal(size=(6, 3))
    with jax.enable_x64(True):
        got = mmdvae.mmd_div(jnp.asarray(x), jnp.asarray(y), unbiased=unbiased)
        np.testing.assert_allclose(float(got), np_mmd(x, y, 1.0, unbiased), rtol=1e-12)
        kern = functools.partial(mmdvae.gaussian_kernel, rho=1.7)
        got = mmdvae.mmd_div(jnp.asarray(x), jnp.asarray(y), kern, unbiased=unbiased)
        np.testing.assert_allclose(float(got), np_mmd(x, y, 1.7, unbiased), rtol=1e-12)
    # the default estimator is the unbiased U-statistic
    default = mmdvae.mmd_div(jnp.asarray(x, jnp.float32), jnp.asarray(y, jnp.float32))
    np.testing.assert_allclose(float(default), np_mmd(x, y, 1.0, True), rtol=1e-5)


def test_mmd_against_gaussian_closed_form():
    n, d = 2000, 2
    k1, k2, k3 = jax.random.split(jax.random.key(0), 3)
    x = jax.random.normal(k1, (n, d))
    same = jax.random.normal(k2, (n, d))
    delta = np.array([1.0, 0.5])
    shifted = jnp.asarray(delta, jnp.float32) + jax.random.normal(k3, (n, d))
    # Same distribution: population MMD² = 0. Measured over 20 seeds: the U-statistic
    # has standard deviation 3.3e-4 (max |U| 5.8e-4); tolerance 1.5e-3 (4.5 sd).
    assert abs(float(mmdvae.mmd_div(x, same))) < 1.5e-3
    # The V-statistic is biased upwards by (1/n + 1/m)(1 − E k(x, x')) = 6.7e-4 here
    # (E k = (1 + 4/(ρ²d))^(−d/2) = 1/3); measured sd of V − bias 3.3e-4; tolerance 1.5e-3.
    bias = 2.0 / n * (1.0 - (1.0 + 4.0 / d) ** (-d / 2))
    assert abs(float(mmdvae.mmd_div(x, same, unbiased=False)) - bias) < 1.5e-3
    # Shifted by δ = (1, 0.5): closed form 0.1254. Measured over 20 seeds: sd of
    # U − closed form 7.8e-3 (max 0.015); tolerance 0.03 (about 4 sd, 24% of the value).
    expected = gaussian_mmd2(delta, d)
    assert abs(expected - 0.12538) < 1e-4
    assert abs(float(mmdvae.mmd_div(x, shifted)) - expected) < 0.03


# --------------------------------------------------------------------------- the loss


@pytest.fixture(scope="module")
def setup(digits):
    train, _ = digits
    model = _model()
    x = jnp.asarray(train.x[:16])
    variables = jax.jit(model.init)(jax.random.key(0), x)
    return model, variables, x


def test_loss_decomposition_and_vae_limit(setup):
    model, variables, x = setup
    key = jax.random.key(3)
    lam, alpha = 5.0, 0.5
    # (every call passes lam, alpha and aux the same way: one compilation serves them all)
    value, m = LOSS(model, variables, x, key, lam=lam, alpha=alpha, aux=True)
    recomposed = -m["loglikelihood"] + (1 - alpha) * m["kl"] + (lam + alpha - 1) * m["mmd"]
    np.testing.assert_allclose(float(value), float(recomposed), rtol=1e-6)
    assert float(m["mmd"]) > 0.0 and abs(float(m["elbo"] - (m["loglikelihood"] - m["kl"]))) < 1e-4

    # the references, in one compiled function: the batch's codes, the prior draws, the
    # (β-)VAE losses with the same key, and logp_mmd_ratio
    @jax.jit
    def references(variables, x, key):
        z = aet.base.elbo_terms(model, variables, x, key).z[0]
        vae1, vae2 = (aet.vae.loss(model, variables, x, key, beta=b) for b in (1.0, 2.0))
        ratio = mmdvae.logp_mmd_ratio(model, variables, x, key, n_latent_samples=50)
        return z, mmdvae.prior_samples(key, 50, 2), vae1, vae2, ratio

    zq, zp, vae_value, beta2, ratio = references(variables, x, key)
    # the MMD term is the U-statistic between the batch's codes and the prior draws
    zq, zp = np.asarray(zq, np.float64), np.asarray(zp, np.float64)
    np.testing.assert_allclose(float(m["mmd"]), np_mmd(zq, zp), rtol=1e-4)
    assert abs(zp.mean()) < 0.4 and abs(zp.std() - 1.0) < 0.25  # 100 N(0, 1) numbers

    # λ = 1, α = 0 (the defaults): MMD weight 0, exactly the VAE loss with the same key
    default = LOSS(model, variables, x, key, lam=1.0, alpha=0.0, aux=True)[0]
    np.testing.assert_allclose(float(default), float(vae_value), rtol=1e-6)
    # λ = 2, α = −1: KL weight 2, MMD weight 0 → β-VAE with β = 2
    value = LOSS(model, variables, x, key, lam=2.0, alpha=-1.0, aux=True)[0]
    np.testing.assert_allclose(float(value), float(beta2), rtol=1e-6)
    # logp_mmd_ratio uses the same codes and prior stream: |loglik / MMD|
    np.testing.assert_allclose(float(ratio), abs(float(m["loglikelihood"] / m["mmd"])), rtol=1e-5)


def test_loss_jit_and_vmap(setup):
    model, variables, x = setup
    key = jax.random.key(1)
    # jit of `partial(loss, model)` with the default hyper-parameters == λ = 1, α = 0 written out
    default = jax.jit(functools.partial(mmdvae.loss, model))(variables, x, key)
    explicit = LOSS(model, variables, x, key, lam=1.0, alpha=0.0, aux=True)[0]
    np.testing.assert_allclose(float(default), float(explicit), rtol=1e-6)
    xs = jnp.stack([x, x[::-1], 1.0 - x])
    keys = jax.random.split(key, 3)
    batched = jax.jit(jax.vmap(lambda xb, k: mmdvae.loss(model, variables, xb, k, lam=10.0, alpha=0.2)))(xs, keys)
    one_by_one = [float(LOSS(model, variables, xs[i], keys[i], lam=10.0, alpha=0.2, aux=True)[0]) for i in range(3)]
    np.testing.assert_allclose(np.asarray(batched), one_by_one, rtol=1e-5)
    assert float(jnp.std(batched)) > 0  # different batches and keys give different values


def test_float64_gradients(setup):
    """Gradients of the loss (user-registered decoder; MMD weight 2.5) match finite
    differences in float64."""
    model, variables, x = setup
    key = jax.random.key(2)
    with jax.enable_x64(True):
        params = jax.tree_util.tree_map(lambda a: jnp.asarray(a, jnp.float64), variables["params"])
        x64 = jnp.asarray(x[:8], jnp.float64)

        @jax.jit
        def f(p):
            return mmdvae.loss(model, {"params": p}, x64, key, lam=3.0, alpha=0.5, n_latent_samples=10)

        assert f(params).dtype == jnp.float64
        check_grads(f, (params,), order=1, modes=["rev"], atol=1e-5, rtol=1e-5)


def test_training_raises_heldout_elbo(setup, digits):
    """fit on digits with the user-registered decoder and the MMD term switched on (λ = 100)."""
    model, v0, _ = setup
    train, val = digits
    x_val = jnp.asarray(val.x)
    before = float(jnp.mean(ELBO(model, v0, x_val, jax.random.key(9), n_samples=4)))
    loss_fn = functools.partial(mmdvae.loss, model, lam=100.0)
    variables, history = aet.train.fit(
        model, loss_fn, train, key=jax.random.key(0), optimizer=optax.adam(3e-3), epochs=6, batch_size=64,
        progress=False, variables=v0,
    )
    after = float(jnp.mean(ELBO(model, variables, x_val, jax.random.key(9), n_samples=4)))
    # measured (seeds 0, 1): before -113.9, after -25.1 / -25.0 (a gain of 89 nats);
    # require half that gain and an ELBO above -35
    assert after > before + 45.0 and after > -35.0, (before, after)
    # the MMD term shrinks as q(z) is pulled to the prior (measured 0.085 -> 0.0039 over
    # the epochs, 22x); require 4x
    assert history["train"]["mmd"][-1] < 0.25 * history["train"]["mmd"][0]


# --------------------------------------------------------------------------- bad arguments


def test_bad_hyperparameters_raise(setup):
    """The weight rule: λ ≥ 0, α ≤ 1, λ + α − 1 ≥ 0; n_latent_samples ≥ 2; ρ > 0."""
    model, variables, x = setup
    key = jax.random.key(0)
    for kwargs, name in [
        (dict(lam=-1.0), "lam"),
        (dict(alpha=1.5, lam=1.0), "alpha"),
        (dict(lam=0.2, alpha=0.5), "lam \\+ alpha - 1"),
        (dict(n_latent_samples=1), "n_latent_samples"),
        (dict(lam=float("nan")), "lam"),
    ]:
        with pytest.raises(ValueError, match=name):
            mmdvae.loss(model, variables, x, key, **kwargs)
    with pytest.raises(ValueError, match="rho"):
        mmdvae.loss(model, variables, x, key, lam=10.0, kernel=functools.partial(mmdvae.gaussian_kernel, rho=0.0))
    with pytest.raises(ValueError, match="rho"):
        mmdvae.gaussian_kernel(jnp.ones((3, 2)), jnp.ones((3, 2)), rho=-1.0)
    with pytest.raises(ValueError, match="x"):
        mmdvae.loss(model, variables, x[:1], key, lam=10.0)  # one code: no U-statistic
    with pytest.raises(ValueError, match="y"):
        mmdvae.mmd_div(jnp.ones((3, 2)), jnp.ones((1, 2)))
    with pytest.raises(ValueError, match="dimension"):
        mmdvae.mmd_div(jnp.ones((3, 2)), jnp.ones((3, 3)))
    with pytest.raises(ValueError, match="n_latent_samples"):
        mmdvae.logp_mmd_ratio(model, variables, x, key, n_latent_samples=1)
