"""Tests of the WAE-MMD (aet.wae) and the RAEs (aet.rae): kernels and MMD against float64
NumPy references and aet.mmdvae's own numbers, jit/grad/vmap, digits runs, bad arguments."""
from __future__ import annotations

import functools
import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import aetk_jax as aet
from aetk_jax import mmdvae, wae
from aetk_jax.wae import WAE

PYTHAE_SCALES = (0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0)


def np_imq(x, y, scales=PYTHAE_SCALES):
    d = x.shape[1]
    out = np.zeros((len(x), len(y)))
    for i in range(len(x)):
        for j in range(len(y)):
            sq = float(np.sum((x[i] - y[j]) ** 2))
            out[i, j] = sum(2 * d * s / (2 * d * s + sq) for s in scales)
    return out


def np_rbf(x, y):
    d = x.shape[1]
    return np.array([[math.exp(-np.sum((a - b) ** 2) / (2 * d)) for b in y] for a in x])


def np_mmd_u(kxx, kyy, kxy):
    n, m = len(kxx), len(kyy)
    return ((kxx.sum() - np.trace(kxx)) / (n * (n - 1)) + (kyy.sum() - np.trace(kyy)) / (m * (m - 1))
            - 2 * kxy.mean())


def test_kernels_match_numpy(rng):
    x, y = rng.normal(size=(6, 3)), rng.normal(size=(4, 3)) * 2.0
    with jax.enable_x64(True):
        np.testing.assert_allclose(np.asarray(mmdvae.imq_kernel(jnp.asarray(x), jnp.asarray(y))), np_imq(x, y),
                                   rtol=1e-13)
        got = mmdvae.imq_kernel(jnp.asarray(x), jnp.asarray(y), scales=(0.5, 3.0), bandwidth=1.0)
        np.testing.assert_allclose(np.asarray(got), np_imq(x, y, (0.5, 3.0)), rtol=1e-13)
        rbf = wae.make_kernel("rbf")(jnp.asarray(x), jnp.asarray(y))
        np.testing.assert_allclose(np.asarray(rbf), np_rbf(x, y), rtol=1e-13)
    # K(x, x) has Σ_s 1 = 7 on its diagonal
    np.testing.assert_allclose(np.diag(np_imq(x, x)), 7.0)


def _wae(encoder="deterministic"):
    act = nn.tanh
    body = aet.MLP([32], activation=act, final_activation=act)
    enc = aet.Encoder(body, 2) if encoder == "deterministic" else aet.JointGaussianLogEncoder(body, 2)
    dec = aet.BernoulliDecoder(aet.MLP([32], activation=act, final_activation=act), 64)
    return WAE(enc, dec)


@pytest.fixture(scope="module")
def wae_setup(digits):
    train, _ = digits
    model = _wae()
    x = jnp.asarray(train.x[:16])
    return model, jax.jit(model.init)(jax.random.key(0), x), x


@pytest.mark.parametrize("kernel", ["imq", "rbf"])
def test_wae_mmd_is_mmdvaes(wae_setup, kernel):
    """The loss's MMD term is aet.mmdvae.mmd_div on the codes and the prior stream (same numbers)
    and the NumPy U-statistic; the reconstruction term is the summed squared error."""
    model, variables, x = wae_setup
    key = jax.random.key(4)
    value, m = wae.loss(model, variables, x, key, lam=10.0, kernel=kernel, aux=True)
    z = wae.codes(model, variables, x)
    zp = mmdvae.prior_samples(key, 16, 2)
    kern = wae.make_kernel(kernel)
    np.testing.assert_allclose(float(m["mmd"]), float(mmdvae.mmd_div(z, zp, kern)), rtol=1e-6)
    z64, zp64 = np.asarray(z, np.float64), np.asarray(zp, np.float64)
    ref_k = np_imq if kernel == "imq" else np_rbf
    ref = np_mmd_u(ref_k(z64, z64), ref_k(zp64, zp64), ref_k(z64, zp64))
    np.testing.assert_allclose(float(m["mmd"]), ref, rtol=2e-4, atol=1e-6)  # float32 sums of ~100 terms
    x_hat = aet.decoder_mean(model.decoder, aet.base.decode(model, variables, z))
    recon = np.mean(np.sum((np.asarray(x_hat, np.float64) - np.asarray(x, np.float64)) ** 2, axis=1))
    np.testing.assert_allclose(float(m["reconstruction"]), recon, rtol=1e-5)
    np.testing.assert_allclose(float(value), recon + 10.0 * ref, rtol=1e-5)


def test_wae_gaussian_encoder_uses_the_mean(digits):
    train, _ = digits
    model = _wae("gaussian")
    x = jnp.asarray(train.x[:8])
    variables = model.init(jax.random.key(0), x)
    mu = aet.base.encode(model, variables, x).mu
    np.testing.assert_array_equal(np.asarray(wae.codes(model, variables, x)), np.asarray(mu))


def test_wae_jit_grad_vmap(wae_setup):
    model, variables, x = wae_setup
    key = jax.random.key(1)
    g = jax.jit(jax.grad(lambda v: wae.loss(model, v, x, key)))(variables)
    leaves = jax.tree_util.tree_leaves(g)
    assert all(bool(jnp.all(jnp.isfinite(a))) for a in leaves) and any(float(jnp.abs(a).max()) > 0 for a in leaves)
    xs, keys = jnp.stack([x, x[::-1], 1.0 - x]), jax.random.split(key, 3)
    batched = jax.jit(jax.vmap(lambda xb, k: wae.loss(model, variables, xb, k, kernel="rbf")))(xs, keys)
    singles = [float(wae.loss(model, variables, xs[i], keys[i], kernel="rbf")) for i in range(3)]
    np.testing.assert_allclose(np.asarray(batched), singles, rtol=1e-5)


def test_wae_trains_on_digits(digits):
    train, val = digits
    model = _wae()
    x_val = jnp.asarray(val.x)
    v0 = model.init(jax.random.key(0), x_val[:2])
    metrics = jax.jit(lambda v: wae.loss(model, v, x_val, jax.random.key(9), aux=True)[1])
    before = metrics(v0)
    variables, history = aet.train.fit(model, functools.partial(wae.loss, model), train, key=jax.random.key(0),
                                       optimizer=optax.adam(3e-3), epochs=8, batch_size=64, progress=False,
                                       variables=v0)
    after = metrics(variables)
    assert history["train"]["loss"][-1] < history["train"]["loss"][0]
    # measured (seed 0, 8 epochs, 2.8 s): held-out summed squared error 11.6 -> 3.54 (0.30x) and
    # MMD² (IMQ, 359 codes vs 359 prior draws) 1.22 -> 0.029; require 0.6x and MMD² < 0.1
    assert float(after["reconstruction"]) < 0.6 * float(before["reconstruction"])
    assert float(after["mmd"]) < 0.1


def test_wae_bad_arguments(wae_setup):
    model, variables, x = wae_setup
    key = jax.random.key(0)
    with pytest.raises(ValueError, match="lam"):
        wae.loss(model, variables, x, key, lam=-1.0)
    with pytest.raises(ValueError, match="kernel"):
        wae.loss(model, variables, x, key, kernel="laplace")
    for bad in ((), (1.0, -2.0), "abc", 3.0):
        with pytest.raises(ValueError, match="scales"):
            wae.loss(model, variables, x, key, scales=bad)
    with pytest.raises(ValueError, match="scales"):
        wae.loss(model, variables, x, key, kernel=mmdvae.gaussian_kernel, scales=(1.0,))
    with pytest.raises(ValueError, match="bandwidth"):
        mmdvae.imq_kernel(x[:, :2], x[:, :2], bandwidth=0.0)
    with pytest.raises(ValueError, match="x"):
        wae.loss(model, variables, x[:1], key)


# =========================================================================== RAE-L2 / RAE-GP

from aetk_jax import rae  # noqa: E402
from aetk_jax.rae import RAE_GP, RAE_L2  # noqa: E402


def _rae(cls, latent=2, hidden=16):
    act = nn.tanh
    enc = aet.Encoder(aet.MLP([hidden], activation=act, final_activation=act), latent)
    dec = aet.BernoulliDecoder(aet.MLP([hidden], activation=act, final_activation=act), 64)
    return cls(enc, dec)


@pytest.fixture(scope="module")
def rae_setup(digits):
    train, _ = digits
    model = _rae(RAE_GP)
    x = jnp.asarray(train.x[:16])
    return model, jax.jit(model.init)(jax.random.key(0), x), x


def test_gradient_penalty_against_finite_differences(rae_setup):
    model, variables, x = rae_setup
    with jax.enable_x64(True):
        v64 = jax.tree_util.tree_map(lambda a: jnp.asarray(a, jnp.float64), variables)
        z = np.asarray(rae.codes(model, v64, jnp.asarray(x[:5], jnp.float64)))
        got = np.asarray(rae.jacobian_penalty(model, v64, jnp.asarray(z)))

        def f(u):
            return np.asarray(aet.decoder_mean(model.decoder, aet.base.decode(model, v64, jnp.asarray(u))))

        h = 1e-5
        ref = np.zeros(len(z))
        for k in range(z.shape[1]):
            e = np.zeros_like(z)
            e[:, k] = h
            ref += np.sum(((f(z + e) - f(z - e)) / (2 * h)) ** 2, axis=1)  # central differences, O(h²)
    # central differences in float64 with h = 1e-5: truncation ~1e-10, rounding ~1e-11 relative
    np.testing.assert_allclose(got, ref, rtol=1e-7)
    assert np.all(ref > 0)


@pytest.mark.parametrize("cls", [RAE_L2, RAE_GP])
def test_rae_loss_terms(rae_setup, cls):
    _, variables, x = rae_setup
    model = _rae(cls)
    value, m = rae.loss(model, variables, x, None, embedding_weight=0.5, reg_weight=0.3, aux=True)
    z = np.asarray(rae.codes(model, variables, x), np.float64)
    x_hat = np.asarray(aet.decoder_mean(model.decoder, aet.base.decode(model, variables, jnp.asarray(z))))
    np.testing.assert_allclose(float(m["reconstruction"]), np.mean(np.sum((x_hat - np.asarray(x)) ** 2, 1)),
                               rtol=1e-5)
    np.testing.assert_allclose(float(m["embedding"]), np.mean(0.5 * np.sum(z**2, 1)), rtol=1e-5)
    if cls is RAE_L2:
        leaves = jax.tree_util.tree_leaves(variables["params"]["decoder"])
        ref = sum(np.sum(np.asarray(a, np.float64) ** 2) for a in leaves)
    else:
        ref = float(jnp.mean(rae.jacobian_penalty(model, variables, jnp.asarray(z, jnp.float32))))
    np.testing.assert_allclose(float(m["regularisation"]), ref, rtol=1e-5)
    np.testing.assert_allclose(float(value), float(m["reconstruction"] + 0.5 * m["embedding"] + 0.3 * ref),
                               rtol=1e-5)


def test_rae_jit_grad_vmap(rae_setup):
    model, variables, x = rae_setup
    g = jax.jit(jax.grad(lambda v: rae.loss(model, v, x, None)))(variables)
    leaves = jax.tree_util.tree_leaves(g)
    assert all(bool(jnp.all(jnp.isfinite(a))) for a in leaves) and any(float(jnp.abs(a).max()) > 0 for a in leaves)
    xs = jnp.stack([x, x[::-1], 1.0 - x])
    batched = jax.jit(jax.vmap(lambda xb: rae.loss(model, variables, xb, None)))(xs)
    np.testing.assert_allclose(np.asarray(batched), [float(rae.loss(model, variables, xb)) for xb in xs], rtol=1e-5)


def np_em(z, means, n_iter, diag, reg=1e-6):
    """Textbook EM in float64 NumPy, the same start as rae.gmm_em."""
    n, d = z.shape
    c = len(means)
    w = np.full(c, 1.0 / c)
    s0 = np.cov(z.T, bias=True) + reg * np.eye(d)
    s0 = np.diag(np.diag(s0)) if diag else s0
    covs = np.array([s0] * c)
    for _ in range(n_iter):
        dens = np.zeros((n, c))
        for j in range(c):
            diff = z - means[j]
            inv = np.linalg.inv(covs[j])
            dens[:, j] = w[j] * np.exp(-0.5 * np.sum(diff @ inv * diff, 1)) / math.sqrt(
                (2 * math.pi) ** d * np.linalg.det(covs[j]))
        r = dens / dens.sum(1, keepdims=True)
        nk = r.sum(0)
        means = (r.T @ z) / nk[:, None]
        covs = np.array([(r[:, j, None] * (z - means[j])).T @ (z - means[j]) / nk[j] for j in range(c)])
        if diag:
            covs = covs * np.eye(d)
        covs = covs + reg * np.eye(d)
        w = nk / n
    return w, means, covs


@pytest.mark.parametrize("covariance", ["full", "diag"])
def test_gmm_em_matches_numpy_and_recovers_a_mixture(rng, covariance):
    true_w = np.array([0.5, 0.3, 0.2])
    true_m = np.array([[-4.0, 0.0], [3.0, 3.0], [3.0, -3.0]])
    n = 3000
    comp = rng.choice(3, size=n, p=true_w)
    z = true_m[comp] + rng.normal(size=(n, 2)) * np.array([0.5, 1.0])
    init = z[[int(np.argmax(comp == k)) for k in range(3)]]  # one start in each cluster (EM is local)
    with jax.enable_x64(True):
        got = rae.gmm_em(jnp.asarray(z), jnp.asarray(init), n_iter=30, covariance=covariance)
    w, m, s = np_em(z, init, 30, covariance == "diag")
    np.testing.assert_allclose(np.asarray(got["weights"]), w, rtol=1e-8)
    np.testing.assert_allclose(np.asarray(got["means"]), m, rtol=1e-8, atol=1e-10)
    np.testing.assert_allclose(np.asarray(got["covs"]), s, rtol=1e-8, atol=1e-10)
    # recovery, up to the labelling: weights within 3 binomial sds (sd ≤ 0.009 at n = 3000)
    order = np.argsort(np.asarray(got["means"])[:, 0] * 10 + np.asarray(got["means"])[:, 1])
    np.testing.assert_allclose(np.asarray(got["weights"])[order], true_w[[0, 2, 1]], atol=0.03)
    # means: sd of a component mean ≤ 1/√600 = 0.041; tolerance 0.15 (3.7 sd)
    np.testing.assert_allclose(np.asarray(got["means"])[order], true_m[[0, 2, 1]], atol=0.15)


def test_sample_uses_the_fitted_mixture(rae_setup, digits):
    model, variables, x = rae_setup
    with pytest.raises(ValueError, match="fit_code_density"):
        aet.sample(model, variables, jax.random.key(0), 4)
    train, _ = digits
    fitted = rae.fit_code_density(model, variables, jnp.asarray(train.x[:500]), n_components=3, key=jax.random.key(1))
    assert set(fitted["code_density"]) == {"weights", "means", "covs"}
    s = aet.sample(model, fitted, jax.random.key(2), 4000)
    assert s.z.shape == (4000, 2) and s.x.shape == (4000, 64)
    g = fitted["code_density"]
    mean = np.asarray(g["weights"] @ g["means"])
    # the sample mean of 4000 draws within 5 standard errors of the mixture's mean
    se = np.asarray(s.z).std(0) / math.sqrt(4000)
    assert np.all(np.abs(np.asarray(s.z).mean(0) - mean) < 5 * se)
    # the fitted variables still score: the loss ignores the extra collection
    np.testing.assert_allclose(float(rae.loss(model, fitted, x)), float(rae.loss(model, variables, x)), rtol=1e-6)


def _fit_rae(model, train, **hyper):
    loss_fn = functools.partial(rae.loss, model, **hyper)
    v0 = model.init(jax.random.key(0), jnp.asarray(train.x[:2]))
    variables, history = aet.train.fit(model, loss_fn, train, key=jax.random.key(0), optimizer=optax.adam(3e-3),
                                       epochs=8, batch_size=64, progress=False, variables=v0)
    return v0, variables, history


@pytest.mark.parametrize("cls, strong, shrink", [(RAE_L2, 1e-2, 0.85), (RAE_GP, 1.0, 0.6)])
def test_rae_trains_on_digits(digits, cls, strong, shrink):
    """pythae's defaults (a near-plain AE) and a strong regulariser: both learn; the strong one
    ends with a smaller penalty (decoder Σθ² for L2, mean ‖J_D‖²_F for GP) on held-out codes."""
    train, val = digits
    model = _rae(cls)
    x_val = jnp.asarray(val.x)
    metrics = jax.jit(lambda v: rae.loss(model, v, x_val, aux=True)[1])
    v0, weak, history = _fit_rae(model, train)
    _, reg, _ = _fit_rae(model, train, embedding_weight=1.0, reg_weight=strong)
    before, after, after_reg = metrics(v0), metrics(weak), metrics(reg)
    # measured (seed 0, 8 epochs each, 3-5 s a run): held-out summed squared error 11.6 -> 4.11 with
    # the defaults (both models: reg_weight 1e-7 makes them plain AEs), -> 4.21 (L2, reg 1e-2) and
    # 4.69 (GP, reg 1); penalty at the end: decoder Σθ² 108 (defaults) vs 82 (0.76x), mean ‖J‖²_F
    # 0.37 vs 0.14 (0.39x); ½‖z‖² 6.6 vs 0.21 / 0.31 (embedding_weight 1)
    assert history["train"]["loss"][-1] < history["train"]["loss"][0]
    assert float(after["reconstruction"]) < 0.6 * float(before["reconstruction"])
    assert float(after_reg["reconstruction"]) < 0.6 * float(before["reconstruction"])
    assert float(after_reg["regularisation"]) < shrink * float(after["regularisation"])
    assert float(after_reg["embedding"]) < 0.2 * float(after["embedding"])


def test_rae_bad_arguments(rae_setup):
    model, variables, x = rae_setup
    for name in ("embedding_weight", "reg_weight"):
        with pytest.raises(ValueError, match=name):
            rae.loss(model, variables, x, None, **{name: -1.0})
    with pytest.raises(ValueError, match="n_components"):
        rae.fit_code_density(model, variables, x, n_components=0, key=jax.random.key(0))
    with pytest.raises(ValueError, match="n_components"):
        rae.fit_code_density(model, variables, x, n_components=17, key=jax.random.key(0))
    with pytest.raises(ValueError, match="covariance"):
        rae.fit_code_density(model, variables, x, n_components=2, key=jax.random.key(0), covariance="tied")
    with pytest.raises(TypeError, match="key"):
        rae.fit_code_density(model, variables, x, n_components=2)
