"""Tests of the β-TC-VAE (aet.betatcvae): the MWS and MSS estimators against float64
NumPy references, the MSS density's unbiasedness, the α = β = γ = 1 limit against the
exact ELBO of a linear-Gaussian model, jit/grad/vmap, a digits run and bad arguments."""
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
from conftest import FixedScaleDecoder, linear_gaussian

import aetk_jax as aet
from aetk_jax import betatcvae
from aetk_jax.betatcvae import BetaTCVAE

LOSS = jax.jit(betatcvae.loss, static_argnums=0, static_argnames=("aux", "dataset_size", "estimator"))


# --------------------------------------------------------------------------- NumPy references


def np_log_normal(z, mu, s):
    return -0.5 * ((z - mu) / s) ** 2 - np.log(s) - 0.5 * math.log(2 * math.pi)


def np_weights(b, n, estimator):
    """W[i, j] written out entry by entry (the module docstring's definition)."""
    w = np.empty((b, b))
    m = b - 1
    for i in range(b):
        for j in range(b):
            if estimator == "weighted":
                w[i, j] = 1.0 / (b * n)
            elif j == i:
                w[i, j] = 1.0 / n
            elif j == (i + 1) % b:
                w[i, j] = (n - m) / (n * m)
            else:
                w[i, j] = 1.0 / m
    return w


def np_decomposition(z, mu, logsigma, n, estimator):
    """MI, TC, DKL per example by explicit loops (prior N(0, I))."""
    b, d = z.shape
    s = np.exp(logsigma)
    w = np_weights(b, n, estimator)
    out = np.zeros((3, b))
    for i in range(b):
        log_qzx = sum(np_log_normal(z[i, k], mu[i, k], s[i, k]) for k in range(d))
        joint = sum(w[i, j] * math.exp(sum(np_log_normal(z[i, k], mu[j, k], s[j, k]) for k in range(d)))
                    for j in range(b))
        marg = sum(math.log(sum(w[i, j] * math.exp(np_log_normal(z[i, k], mu[j, k], s[j, k])) for j in range(b)))
                   for k in range(d))
        log_pz = sum(np_log_normal(z[i, k], 0.0, 1.0) for k in range(d))
        out[:, i] = log_qzx - math.log(joint), math.log(joint) - marg, marg - log_pz
    return out


@pytest.fixture
def codes(rng):
    b, d = 7, 3
    mu = rng.normal(size=(b, d))
    logsigma = rng.normal(size=(b, d)) * 0.3 - 0.3
    z = mu + np.exp(logsigma) * rng.normal(size=(b, d))
    return z, mu, logsigma


# --------------------------------------------------------------------------- the estimators


@pytest.mark.parametrize("estimator", ["weighted", "stratified"])
def test_estimators_match_numpy(codes, estimator):
    z, mu, logsigma = codes
    n = 50
    with jax.enable_x64(True):
        w = betatcvae.log_importance_weights(7, n, estimator)
        np.testing.assert_allclose(np.exp(np.asarray(w)), np_weights(7, n, estimator), rtol=1e-13)
        log_pz = aet.spherical_logprior(jnp.asarray(z))
        got = betatcvae.decomposition(jnp.asarray(z), jnp.asarray(mu), jnp.asarray(logsigma), log_pz, n, estimator)
        ref = np_decomposition(z, mu, logsigma, n, estimator)
        np.testing.assert_allclose(np.stack([np.asarray(t) for t in got]), ref, rtol=1e-11, atol=1e-11)
    if estimator == "stratified":  # every row of W sums to 1
        np.testing.assert_allclose(np_weights(7, n, estimator).sum(axis=1), 1.0, rtol=1e-14)


def test_pythae_mss_matrix_differs(codes):
    """Measures the departure from pythae's MSS matrix (1/N in column 0, built by flat strides)."""
    z, mu, logsigma = codes
    b, n = 7, 50
    m = b - 1
    w = np.full((b, b), 1.0 / m)
    w.reshape(-1)[:: m + 1] = 1.0 / n
    w.reshape(-1)[1 :: m + 1] = (n - m) / (n * m)
    w[m - 1, 0] = (n - m) / (n * m)
    s = np.exp(logsigma)
    lq = np.array([[np.sum(np_log_normal(z[i], mu[j], s[j])) for j in range(b)] for i in range(b)])
    pythae = np.log(np.sum(w * np.exp(lq), axis=1))
    ours = np.log(np.sum(np_weights(b, n, "stratified") * np.exp(lq), axis=1))
    # measured: |difference| 0 (row 0, where both put 1/N on the diagonal) to 2.08 nats on these codes
    diff = np.abs(pythae - ours)
    assert diff[0] < 1e-12 and 1.0 < np.max(diff) < 3.0


def test_stratified_density_is_unbiased():
    """E over uniformly random batches holding z's own example of q̂_MSS(z) = q(z) = (1/N) Σ_n q(z|n)."""
    rng = np.random.default_rng(1)
    n, b, d = 12, 4, 2
    mu, logsigma = rng.normal(size=(n, d)), rng.normal(size=(n, d)) * 0.3
    z = mu[0] + np.exp(logsigma[0]) * rng.normal(size=d)  # a code of example 0
    exact = np.mean(np.exp(np.sum(np_log_normal(z, mu, np.exp(logsigma)), axis=1)))
    n_batches = 20000

    def one(key):
        k1, k2 = jax.random.split(key)
        others = jax.random.permutation(k1, jnp.arange(1, n))[: b - 1]
        pos = jax.random.randint(k2, (), 0, b)  # where example 0 sits in the batch
        idx = _insert(others, pos)
        zb = jnp.zeros((b, d)).at[pos].set(z)  # only row `pos` is read below
        lq, _ = betatcvae.aggregate_log_densities(zb, jnp.asarray(mu)[idx], jnp.asarray(logsigma)[idx], n, "stratified")
        return jnp.exp(lq[pos])

    with jax.enable_x64(True):
        est = np.asarray(jax.jit(jax.vmap(one))(jax.random.split(jax.random.key(0), n_batches)))
        mws = _mws_mean(z, mu, logsigma, n, b)
    # measured: mean 0.07936 vs q(z) = 0.07930, standard error 1.4e-4 (0.17% of q(z)), |error| 0.45 se;
    # tolerance 5 standard errors
    se = est.std() / math.sqrt(n_batches)
    assert abs(est.mean() - exact) < 5 * se, (est.mean(), exact, se)
    assert se < 0.02 * exact
    # MWS, by contrast, targets about q(z)/N: measured 0.0107 = 0.13 q(z) here (N = 12)
    assert mws < 0.5 * exact


def _insert(others, pos):
    """Batch indices: example 0 at position ``pos``, ``others`` around it."""
    b = others.shape[0] + 1
    slots = jnp.arange(b)
    src = jnp.where(slots < pos, slots, slots - 1)
    return jnp.where(slots == pos, 0, others[jnp.clip(src, 0, b - 2)])


def _mws_mean(z, mu, logsigma, n, b):
    zb = jnp.broadcast_to(jnp.asarray(z), (b, z.shape[0]))
    lq, _ = betatcvae.aggregate_log_densities(zb, jnp.asarray(mu[:b]), jnp.asarray(logsigma[:b]), n, "weighted")
    return float(jnp.exp(lq[0]))


# --------------------------------------------------------------------------- the loss


@pytest.mark.parametrize("estimator", ["weighted", "stratified"])
def test_unit_weights_give_the_elbo_in_expectation(estimator):
    """α = β = γ = 1: the loss is −(single-sample ELBO), whose mean over keys is the exact ELBO."""
    model, variables, x, _, exact_elbo, _ = linear_gaussian(mean_shift=0.4, sigma_scale=1.5, model_cls=BetaTCVAE)
    n_keys = 4000
    with jax.enable_x64(True):
        v64 = jax.tree_util.tree_map(lambda a: jnp.asarray(a, jnp.float64), variables)
        x64 = jnp.asarray(x, jnp.float64)
        f = jax.jit(jax.vmap(lambda k: betatcvae.loss(model, v64, x64, k, dataset_size=6, estimator=estimator,
                                                      alpha=1.0, beta=1.0, gamma=1.0)))
        values = np.asarray(f(jax.random.split(jax.random.key(0), n_keys)))
        # the same key, the VAE's pieces: −log p(x|z) + log q(z|x) − log p(z) with the VAE's code
        key = jax.random.key(5)
        t = aet.base.elbo_terms(model, v64, x64, key)
        mu, logsigma = aet.encoders.gaussian_mu_logsigma(t.enc_out)
        mc_kl = aet.encoders.gaussian_logpdf(t.z[0], mu, logsigma) - aet.spherical_logprior(t.z[0])
        one = betatcvae.loss(model, v64, x64, key, dataset_size=6, estimator=estimator)
        np.testing.assert_allclose(float(one), float(jnp.mean(-t.loglik + mc_kl)), rtol=1e-12)
    # measured over seeds 0-2: sd of the per-key loss 1.02-1.04, standard error 0.016, |mean − exact|
    # 0.008-0.026 (≤ 1.6 se); tolerance 5 standard errors
    se = values.std() / math.sqrt(n_keys)
    assert se < 0.05
    assert abs(values.mean() + exact_elbo.mean()) < 5 * se, (values.mean(), -exact_elbo.mean(), se)


def test_aux_terms_recompose(digits):
    model, variables, x = _setup(digits)
    value, m = LOSS(model, variables, x, jax.random.key(1), alpha=0.5, beta=4.0, gamma=2.0,
                    dataset_size=1000, estimator="stratified", aux=True)
    recomposed = -m["loglikelihood"] + 0.5 * m["mi"] + 4.0 * m["tc"] + 2.0 * m["dimkl"]
    np.testing.assert_allclose(float(value), float(recomposed), rtol=1e-5)
    np.testing.assert_allclose(float(m["kl"]), float(m["mi"] + m["tc"] + m["dimkl"]), rtol=1e-5)
    assert float(m["tc"]) != 0.0


def _model():
    act = nn.tanh
    enc = aet.JointGaussianLogEncoder(aet.MLP([16], activation=act, final_activation=act), 3)
    dec = aet.BernoulliDecoder(aet.MLP([16], activation=act, final_activation=act), 64)
    return BetaTCVAE(enc, dec)


def _setup(digits):
    train, _ = digits
    model = _model()
    x = jnp.asarray(train.x[:16])
    return model, jax.jit(model.init)(jax.random.key(0), x), x


def test_jit_grad_vmap(digits):
    model, variables, x = _setup(digits)
    key = jax.random.key(2)
    kw = dict(beta=6.0, dataset_size=1000)
    g = jax.jit(jax.grad(lambda v: betatcvae.loss(model, v, x, key, **kw)))(variables)
    leaves = jax.tree_util.tree_leaves(g)
    assert all(bool(jnp.all(jnp.isfinite(a))) for a in leaves) and any(float(jnp.abs(a).max()) > 0 for a in leaves)
    xs, keys = jnp.stack([x, x[::-1]]), jax.random.split(key, 2)
    batched = jax.jit(jax.vmap(lambda xb, k: betatcvae.loss(model, variables, xb, k, **kw)))(xs, keys)
    singles = [float(LOSS(model, variables, xs[i], keys[i], **kw)) for i in range(2)]
    np.testing.assert_allclose(np.asarray(batched), singles, rtol=1e-5)
    # the β-TC-VAE variables are the VAE's: the VAE's ELBO scores them
    e = betatcvae.elbo(model, variables, x, key)
    assert e.shape == (16,)
    np.testing.assert_allclose(np.asarray(e), np.asarray(aet.vae.elbo(aet.VAE(model.encoder, model.decoder),
                                                                      variables, x, key)), rtol=1e-6)


def test_trains_on_digits(digits):
    train, val = digits
    model = _model()
    x_val = jnp.asarray(val.x)
    v0 = model.init(jax.random.key(0), x_val[:2])
    elbo = jax.jit(functools.partial(betatcvae.elbo, model, n_samples=4))
    before = float(jnp.mean(elbo(v0, x_val, jax.random.key(9))))
    loss_fn = functools.partial(betatcvae.loss, model, beta=4.0, dataset_size=len(train))
    variables, history = aet.train.fit(model, loss_fn, train, key=jax.random.key(0), optimizer=optax.adam(3e-3),
                                       epochs=6, batch_size=64, progress=False, variables=v0)
    after = float(jnp.mean(elbo(variables, x_val, jax.random.key(9))))
    assert history["train"]["loss"][-1] < history["train"]["loss"][0]
    # measured (seed 0, 7.7 s): held-out ELBO −48.3 before, −28.9 after (a gain of 19.4 nats);
    # require half that gain and an ELBO above −35
    assert after > before + 9.7 and after > -35.0, (before, after)


def test_bad_hyperparameters_raise(digits):
    model, variables, x = _setup(digits)
    key = jax.random.key(0)
    with pytest.raises(ValueError, match="dataset_size"):
        betatcvae.loss(model, variables, x, key)
    with pytest.raises(ValueError, match="dataset_size"):
        betatcvae.loss(model, variables, x, key, dataset_size=8)
    with pytest.raises(ValueError, match="dataset_size"):
        betatcvae.loss(model, variables, x, key, dataset_size=100.0)
    for name in ("alpha", "beta", "gamma"):
        with pytest.raises(ValueError, match=name):
            betatcvae.loss(model, variables, x, key, dataset_size=100, **{name: -1.0})
    with pytest.raises(ValueError, match="estimator"):
        betatcvae.loss(model, variables, x, key, dataset_size=100, estimator="importance")
    with pytest.raises(ValueError, match="stratified"):
        betatcvae.loss(model, variables, x[:1], key, dataset_size=100, estimator="stratified")


def test_user_registered_likelihood(digits):
    """With α = β = γ = 0 the loss is −mean log p(x|z) under the user's likelihood, z the VAE's draw."""
    train, _ = digits
    enc = aet.JointGaussianLogEncoder(aet.MLP([16]), 2)
    model = BetaTCVAE(enc, FixedScaleDecoder(64))
    x = jnp.asarray(train.x[:8])
    variables = model.init(jax.random.key(0), x)
    key = jax.random.key(3)
    value = betatcvae.loss(model, variables, x, key, alpha=0.0, beta=0.0, gamma=0.0, dataset_size=100)
    z = aet.base.elbo_terms(model, variables, x, key).z[0]
    mu = np.asarray(aet.base.decode(model, variables, z).mu, np.float64)
    ref = np.mean(np.sum(0.5 * ((np.asarray(x) - mu) / 0.5) ** 2 + math.log(0.5) + 0.5 * math.log(2 * math.pi), 1))
    np.testing.assert_allclose(float(value), ref, rtol=1e-5)
