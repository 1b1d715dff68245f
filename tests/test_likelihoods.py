"""Log-likelihoods, KL, log-posterior and prior against independent references.

References are scipy.stats / distrax evaluated in float64 on random inputs;
the decoders' outputs come from the real modules (random init) so the whole
path decoder -> parameters -> dispatched log-likelihood is checked.
"""
from __future__ import annotations

from typing import NamedTuple

import distrax
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import special, stats

import aetk_jax as aet

B, D, LATENT = 5, 7, 3


def _z(seed: int = 0, shape=(B, LATENT)) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=shape)


def _apply(module: nn.Module, inp: jax.Array, seed: int = 0):
    variables = module.init(jax.random.key(seed), inp)
    return module.apply(variables, inp)


def _body() -> nn.Module:
    return aet.MLP([8], activation=nn.tanh, final_activation=nn.tanh)


# ----------------------------------------------------------------------------- Bernoulli


def test_bernoulli_matches_scipy_on_binary_data():
    with jax.enable_x64(True):
        dec = aet.BernoulliDecoder(_body(), (2, 4))
        z = jnp.asarray(_z(1))
        out = _apply(dec, z)
        assert isinstance(out, aet.BernoulliParams) and out.logits.shape == (B, 2, 4)
        # widen the logits so some probabilities are close to 0 and 1
        out = aet.BernoulliParams(out.logits * 6.0)
        x = (np.random.default_rng(2).uniform(size=(B, 2, 4)) < 0.5).astype(np.float64)
        got = np.asarray(aet.decoder_loglikelihood(dec, jnp.asarray(x), out))
        p = special.expit(np.asarray(out.logits))
        want = stats.bernoulli.logpmf(x, p).reshape(B, -1).sum(axis=1)
        assert got.shape == (B,) and got.dtype == np.float64
        np.testing.assert_allclose(got, want, rtol=1e-10, atol=1e-10)


def test_bernoulli_matches_closed_form_on_continuous_data():
    # x in [0, 1] (the digits' grey levels): x log p + (1 - x) log(1 - p)
    with jax.enable_x64(True):
        rng = np.random.default_rng(3)
        logits = rng.normal(scale=3.0, size=(B, D))
        x = rng.uniform(size=(B, D))
        dec = aet.BernoulliDecoder(_body(), D)
        got = np.asarray(aet.decoder_loglikelihood(dec, jnp.asarray(x), aet.BernoulliParams(jnp.asarray(logits))))
        p = special.expit(logits)
        want = np.sum(x * np.log(p) + (1 - x) * np.log1p(-p), axis=1)
        np.testing.assert_allclose(got, want, rtol=1e-10)


def test_bernoulli_extreme_logits_are_finite_and_exact_in_float32():
    dec = aet.BernoulliDecoder(_body(), 4)
    logits = jnp.array([[50.0, -50.0, 50.0, -50.0]], jnp.float32)
    x = jnp.array([[1.0, 0.0, 0.0, 1.0]], jnp.float32)
    ll = aet.decoder_loglikelihood(dec, x, aet.BernoulliParams(logits))
    # log σ(50) ≈ −e⁻⁵⁰ ≈ 0 (twice) and log σ(−50) = −50 − log1p(e⁻⁵⁰) ≈ −50 (twice): total −100
    assert ll.dtype == jnp.float32
    np.testing.assert_allclose(np.asarray(ll), [-100.0], rtol=1e-6)
    g = jax.grad(lambda l: aet.decoder_loglikelihood(dec, x, aet.BernoulliParams(l)).sum())(logits)
    # d/dl [x log σ(l) + (1−x) log σ(−l)] = x − σ(l): 0, 0, −1, +1 up to e⁻⁵⁰
    np.testing.assert_allclose(np.asarray(g), [[0.0, 0.0, -1.0, 1.0]], atol=1e-6)


# --------------------------------------------------------------------------- Categorical


@pytest.mark.parametrize("shape", [(4,), (2, 3)])
def test_categorical_one_hot_and_labels_match_scipy(shape):
    k = 5
    with jax.enable_x64(True):
        dec = aet.CategoricalDecoder(_body(), shape, k)
        out = _apply(dec, jnp.asarray(_z(4)))
        assert isinstance(out, aet.CategoricalParams)
        assert out.logits.shape == (B, *shape, k)
        logits = np.asarray(out.logits) * 4.0
        out = aet.CategoricalParams(jnp.asarray(logits))
        labels = np.random.default_rng(5).integers(0, k, size=(B, *shape))
        one_hot = np.eye(k)[labels]
        p = special.softmax(logits, axis=-1)
        want = stats.multinomial.logpmf(one_hot, n=1, p=p).reshape(B, -1).sum(axis=1)
        got_oh = np.asarray(aet.decoder_loglikelihood(dec, jnp.asarray(one_hot), out))
        got_lab = np.asarray(aet.decoder_loglikelihood(dec, jnp.asarray(labels), out))
        assert got_oh.shape == got_lab.shape == (B,)
        np.testing.assert_allclose(got_oh, want, rtol=1e-9)
        np.testing.assert_allclose(got_lab, want, rtol=1e-9)
        np.testing.assert_allclose(np.asarray(aet.decoder_mean(dec, out)), p, rtol=1e-12)


# ------------------------------------------------------------------------------ Gaussians


def _normal_reference(x, mu, sigma):
    return stats.norm.logpdf(x, loc=mu, scale=sigma).reshape(x.shape[0], -1).sum(axis=1)


GAUSSIAN_DECODERS = {
    "simple": lambda shape: aet.SimpleGaussianDecoder(_body(), shape),
    "joint_log": lambda shape: aet.JointGaussianLogDecoder(_body(), shape),
    "joint": lambda shape: aet.JointGaussianDecoder(_body(), shape),
    "split_log": lambda shape: aet.SplitGaussianLogDecoder(_body(), _body(), shape),
    "split": lambda shape: aet.SplitGaussianDecoder(_body(), _body(), shape),
}


@pytest.mark.parametrize("kind", sorted(GAUSSIAN_DECODERS))
def test_gaussian_decoders_match_scipy(kind):
    shape = (3, 2)
    with jax.enable_x64(True):
        dec = GAUSSIAN_DECODERS[kind](shape)
        out = _apply(dec, jnp.asarray(_z(6)), seed=7)
        mu = np.asarray(out.mu)
        assert mu.shape == (B, *shape) and mu.dtype == np.float64
        if isinstance(out, aet.GaussianLogParams):
            sigma = np.exp(np.asarray(out.logsigma))
        else:
            assert isinstance(out, aet.GaussianParams)
            sigma = np.asarray(out.sigma)
        if kind == "simple":
            np.testing.assert_array_equal(sigma, 1.0)
        assert np.all(sigma > 0)
        x = mu + np.random.default_rng(8).normal(size=mu.shape) * 1.7
        got = np.asarray(aet.decoder_loglikelihood(dec, jnp.asarray(x), out))
        np.testing.assert_allclose(got, _normal_reference(x, mu, sigma), rtol=1e-10)
        np.testing.assert_allclose(np.asarray(aet.decoder_mean(dec, out)), mu, rtol=0)


def test_deterministic_decoder_loglikelihood_is_unit_gaussian():
    with jax.enable_x64(True):
        dec = aet.Decoder(_body(), D)
        out = _apply(dec, jnp.asarray(_z(9)))
        assert out.shape == (B, D)
        x = np.random.default_rng(10).normal(size=(B, D))
        got = np.asarray(aet.decoder_loglikelihood(dec, jnp.asarray(x), out))
        np.testing.assert_allclose(got, _normal_reference(x, np.asarray(out), 1.0), rtol=1e-10)


def test_loglikelihood_broadcasts_leading_sample_axis():
    # dec_out with a leading sample axis (S, batch, D) against x (batch, D) -> (S, batch)
    with jax.enable_x64(True):
        rng = np.random.default_rng(11)
        mu, logsig = rng.normal(size=(4, B, D)), rng.normal(scale=0.3, size=(4, B, D))
        x = rng.normal(size=(B, D))
        dec = aet.JointGaussianLogDecoder(_body(), D)
        got = np.asarray(aet.decoder_loglikelihood(dec, jnp.asarray(x), aet.GaussianLogParams(jnp.asarray(mu), jnp.asarray(logsig))))
        want = stats.norm.logpdf(x[None], mu, np.exp(logsig)).sum(axis=-1)
        assert got.shape == (4, B)
        np.testing.assert_allclose(got, want, rtol=1e-10)


# ---------------------------------------------------------------- unregistered decoders


class _PoissonLikeParams(NamedTuple):
    rate: jax.Array


class UnregisteredDecoder(nn.Module):
    @nn.compact
    def __call__(self, z):
        return _PoissonLikeParams(nn.softplus(nn.Dense(3)(z)))


def test_unregistered_decoder_raises_type_error_with_registration_hint():
    dec = UnregisteredDecoder()
    with pytest.raises(TypeError) as info:
        aet.decoder_loglikelihood(dec, jnp.ones((2, 3)), _PoissonLikeParams(jnp.ones((2, 3))))
    msg = str(info.value)
    assert "UnregisteredDecoder" in msg
    assert "@aet.decoder_loglikelihood.register(UnregisteredDecoder)" in msg


def test_unregistered_decoder_inside_a_vae_loss_raises_type_error():
    enc = aet.JointGaussianLogEncoder(aet.MLP([4]), 2)
    model = aet.VAE(enc, UnregisteredDecoder())
    x = jnp.ones((2, 3))
    variables = model.init(jax.random.key(0), x)
    with pytest.raises(TypeError, match=r"@aet\.decoder_loglikelihood\.register\(UnregisteredDecoder\)"):
        aet.vae.loss(model, variables, x, jax.random.key(1))


# ------------------------------------------------------------------ encoders: KL, log q, prior


def _gaussian_encoder_outputs(kind: str):
    enc_cls = aet.JointGaussianLogEncoder if kind == "log" else aet.JointGaussianEncoder
    enc = enc_cls(_body(), LATENT)
    out = _apply(enc, jnp.asarray(np.random.default_rng(12).normal(size=(B, D)) * 3.0), seed=13)
    mu = np.asarray(out.mu)
    sigma = np.exp(np.asarray(out.logsigma)) if kind == "log" else np.asarray(out.sigma)
    return enc, out, mu, sigma


@pytest.mark.parametrize("kind", ["log", "linear"])
def test_gaussian_kl_matches_distrax(kind):
    with jax.enable_x64(True):
        enc, out, mu, sigma = _gaussian_encoder_outputs(kind)
        assert mu.shape == sigma.shape == (B, LATENT) and np.all(sigma > 0)
        got = np.asarray(aet.encoder_kl(enc, out))
        q = distrax.MultivariateNormalDiag(jnp.asarray(mu), jnp.asarray(sigma))
        p = distrax.MultivariateNormalDiag(jnp.zeros(LATENT), jnp.ones(LATENT))
        want = np.asarray(q.kl_divergence(p))
        assert got.shape == (B,) and got.dtype == np.float64
        np.testing.assert_allclose(got, want, rtol=1e-10)
        # and the textbook formula ½Σ(σ² + μ² − 1 − log σ²)
        np.testing.assert_allclose(got, 0.5 * np.sum(sigma**2 + mu**2 - 1 - np.log(sigma**2), axis=1), rtol=1e-10)


@pytest.mark.parametrize("kind", ["log", "linear"])
def test_gaussian_logposterior_matches_scipy(kind):
    with jax.enable_x64(True):
        enc, out, mu, sigma = _gaussian_encoder_outputs(kind)
        z = _z(14, (4, B, LATENT))  # a leading sample axis (S, batch, d)
        got = np.asarray(aet.encoder_logposterior(enc, jnp.asarray(z), out))
        want = np.stack([stats.multivariate_normal(mu[b], np.diag(sigma[b] ** 2)).logpdf(z[:, b]) for b in range(B)], axis=1)
        assert got.shape == (4, B)
        np.testing.assert_allclose(got, want, rtol=1e-10)
        got1 = np.asarray(aet.encoder_logposterior(enc, jnp.asarray(z[0]), out))
        np.testing.assert_allclose(got1, want[0], rtol=1e-10)


@pytest.mark.parametrize("sigma", [1.0, 0.7, 2.5])
def test_spherical_logprior_matches_scipy(sigma):
    with jax.enable_x64(True):
        z = _z(15, (6, 4)) * 2.0
        got = np.asarray(aet.spherical_logprior(jnp.asarray(z), sigma))
        want = stats.multivariate_normal(np.zeros(4), sigma**2 * np.eye(4)).logpdf(z)
        assert got.shape == (6,)
        np.testing.assert_allclose(got, want, rtol=1e-12)


@pytest.mark.parametrize("sigma", [0.0, -1.0, float("nan")])
def test_spherical_logprior_bad_sigma_raises(sigma):
    with pytest.raises(ValueError, match="`sigma`"):
        aet.spherical_logprior(jnp.ones((2, 3)), sigma)


@pytest.mark.parametrize("kind", ["log", "linear"])
def test_encoder_sample_is_reparameterised_gaussian(kind):
    # z = μ + σ ε: over many draws the mean and standard deviation match μ and σ,
    # and ∂z/∂μ = 1 (the draw is differentiable in the encoder output)
    with jax.enable_x64(True):
        enc, out, mu, sigma = _gaussian_encoder_outputs(kind)
        n = 20000
        zs = jax.vmap(lambda k: aet.encoder_sample(enc, out, k))(jax.random.split(jax.random.key(16), n))
        zs = np.asarray(zs)
        assert zs.shape == (n, B, LATENT)
        # 5 standard errors
        assert np.all(np.abs(zs.mean(0) - mu) < 5 * sigma / np.sqrt(n))
        assert np.all(np.abs(zs.std(0) / sigma - 1.0) < 5 / np.sqrt(2 * n))
        g = jax.grad(lambda m: aet.encoder_sample(enc, out._replace(mu=m), jax.random.key(0)).sum())(out.mu)
        np.testing.assert_allclose(np.asarray(g), 1.0)
        np.testing.assert_array_equal(np.asarray(aet.encoder_mean(enc, out)), mu)


def test_unregistered_encoder_raises_type_error():
    class OddEncoder(nn.Module):
        latent_dim: int = 2

        @nn.compact
        def __call__(self, x):
            return nn.Dense(2)(x)

    with pytest.raises(TypeError, match=r"@aet\.encoder_kl\.register\(OddEncoder\)"):
        aet.encoder_kl(OddEncoder(), jnp.zeros((1, 2)))
