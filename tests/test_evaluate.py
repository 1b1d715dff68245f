"""Evaluation against closed forms: a linear-Gaussian VAE whose log p(x), posterior and
ELBO are known exactly; and generation with ``aet.sample``."""
from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import special, stats

import aetk_jax as aet
from conftest import B, D, LATENT, SIGMA_X, linear_gaussian, small_vae_parts



def _linear_gaussian(mean_shift: float = 0.0, sigma_scale: float = 1.0):
    return linear_gaussian(mean_shift, sigma_scale)


@pytest.mark.parametrize("n_importance", [7, 100])
def test_marginal_loglikelihood_exact_posterior_is_exact(n_importance):
    # with q = p(z|x) every importance weight equals p(x): the estimate is exact for any S
    with jax.enable_x64(True):
        model, variables, x, logpx, _, m = _linear_gaussian()
        np.testing.assert_allclose(np.asarray(aet.base.encode(model, variables, x).mu), m, rtol=1e-12)
        est = aet.evaluate.marginal_loglikelihood(model, variables, x, jax.random.key(0), n_importance=n_importance)
        assert est.shape == (B,) and est.dtype == jnp.float64
        np.testing.assert_allclose(np.asarray(est), logpx, rtol=0, atol=1e-9)


def test_marginal_loglikelihood_and_elbo_with_an_inexact_encoder():
    with jax.enable_x64(True):
        model, variables, x, logpx, elbo_exact, _ = _linear_gaussian(mean_shift=0.3, sigma_scale=1.6)
        gap = logpx - elbo_exact
        assert np.all(gap > 1.0)  # the encoder is clearly not the posterior (gap 1.23 nats)
        est = np.asarray(aet.evaluate.marginal_loglikelihood(model, variables, x, jax.random.key(1), n_importance=4096))
        # measured over 20 keys: per-example standard deviation 0.014–0.022 nats, largest
        # |error| 0.047; tolerance 0.1 per example and 0.04 for the batch mean (≈ 5 s.d.)
        np.testing.assert_allclose(est, logpx, atol=0.1)
        assert abs(np.mean(est - logpx)) < 0.04
        elbo = np.asarray(jax.jit(aet.evaluate.elbo, static_argnums=0, static_argnames="n_samples")(
            model, variables, x, jax.random.key(2), n_samples=4000))
        # Monte-Carlo ELBO vs the closed form log p(x) − KL(q ‖ p(z|x)); measured per-example
        # s.d. 0.03–0.047 with 4000 samples; tolerance 0.2 per example, 0.08 for the mean
        np.testing.assert_allclose(elbo, elbo_exact, atol=0.2)
        assert abs(np.mean(elbo - elbo_exact)) < 0.08
        # one importance sample is a one-sample ELBO: its mean over many keys is the exact ELBO
        # (measured s.d. of that mean 0.037 per example; same tolerances)
        one = jax.jit(jax.vmap(lambda k: aet.evaluate.marginal_loglikelihood(model, variables, x, k, n_importance=1)))(
            jax.random.split(jax.random.key(3), 4000))
        np.testing.assert_allclose(np.asarray(one).mean(0), elbo_exact, atol=0.2)
        assert abs(np.mean(np.asarray(one).mean(0) - elbo_exact)) < 0.08


def test_marginal_loglikelihood_bad_arguments():
    model, variables, x, *_ = _linear_gaussian()
    x = x.astype(jnp.float32)
    with pytest.raises(ValueError, match="n_importance"):
        aet.evaluate.marginal_loglikelihood(model, variables, x, jax.random.key(0), n_importance=0)
    with pytest.raises(TypeError, match="key"):
        aet.evaluate.marginal_loglikelihood(model, variables, x, 0)
    with pytest.raises(TypeError, match="`x`"):
        aet.evaluate.marginal_loglikelihood(model, variables, x.astype(jnp.int32), jax.random.key(0))
    with pytest.raises(ValueError, match="`x`"):
        aet.evaluate.marginal_loglikelihood(model, variables, x[:, :3], jax.random.key(0))


# ------------------------------------------------------------------------------- sampling


def test_sample_from_the_prior_with_a_bernoulli_decoder():
    model = aet.VAE(*small_vae_parts(latent_dim=2, hidden=16))
    variables = jax.jit(model.init)(jax.random.key(0), jnp.zeros((1, 64)))
    n = 4000
    out = aet.sample(model, variables, jax.random.key(1), n)
    z, xs = np.asarray(out.z), np.asarray(out.x)
    assert z.shape == (n, 2) and xs.shape == (n, 64)
    assert xs.min() >= 0.0 and xs.max() <= 1.0
    # z ~ N(0, I): mean within 5 standard errors, covariance within 0.1 of I
    assert np.all(np.abs(z.mean(0)) < 5 / np.sqrt(n))
    np.testing.assert_allclose(np.cov(z.T), np.eye(2), atol=0.1)
    # x is the decoder's mean at z: sigmoid of its logits
    logits = np.asarray(jax.jit(aet.base.decode, static_argnums=0)(model, variables, out.z).logits, np.float64)
    np.testing.assert_allclose(xs, special.expit(logits), rtol=1e-5, atol=1e-6)
    # another key, other samples; the same key, the same samples
    again = aet.sample(model, variables, jax.random.key(1), n)
    np.testing.assert_array_equal(np.asarray(again.z), z)
    assert not np.allclose(np.asarray(aet.sample(model, variables, jax.random.key(2), 3).z), z[:3])


def test_sample_bad_arguments():
    model = aet.VAE(*small_vae_parts(latent_dim=2, hidden=4))
    variables = jax.jit(model.init)(jax.random.key(0), jnp.zeros((1, 64)))
    with pytest.raises(ValueError, match="`n`"):
        aet.sample(model, variables, jax.random.key(0), 0)
    with pytest.raises(TypeError, match="`n`"):
        aet.sample(model, variables, jax.random.key(0), 2.5)
    with pytest.raises(TypeError, match="key"):
        aet.sample(model, variables, "key", 3)
