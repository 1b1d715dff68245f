"""The VAE / β-VAE loss (and the AE loss): value against a NumPy re-implementation,
gradients against finite differences, and behaviour under jit, vmap, pmap, grad and float64."""
from __future__ import annotations

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads
from scipy import special

import aetk_jax as aet

B, D, LATENT, H = 4, 6, 2, 5


def _model() -> aet.VAE:
    enc = aet.JointGaussianLogEncoder(aet.MLP([H], activation=nn.tanh, final_activation=nn.tanh), LATENT)
    dec = aet.BernoulliDecoder(aet.MLP([H], activation=nn.tanh, final_activation=nn.tanh), D)
    return aet.VAE(enc, dec)


def _x(dtype=np.float32) -> np.ndarray:
    return np.random.default_rng(0).uniform(size=(B, D)).astype(dtype)


def _setup(dtype=jnp.float32):
    model = _model()
    x = jnp.asarray(_x(np.dtype(dtype)))
    variables = jax.jit(model.init)(jax.random.key(0), x)
    variables = jax.tree_util.tree_map(lambda a: a.astype(dtype), variables)
    return model, variables, x


# Jitted entry points shared by the tests, so each program compiles once per module
# (the eager path is exercised by the bad-input tests and by test_eager_equals_jit).
_J_LOSS_AUX = jax.jit(functools.partial(aet.vae.loss, aux=True), static_argnums=0, static_argnames=("n_samples",))


def J_LOSS(model, variables, x, key, *, aux=False, **hyper):
    """The jitted loss; always compiled with aux=True (one program), the metrics dropped unless asked."""
    out = _J_LOSS_AUX(model, variables, x, key, **hyper)
    return out if aux else out[0]

J_ELBO = jax.jit(aet.vae.elbo, static_argnums=0, static_argnames=("n_samples",))
J_ENC = jax.jit(aet.base.encode, static_argnums=0)
J_DEC = jax.jit(aet.base.decode, static_argnums=0)
J_LL = jax.jit(aet.base.loglikelihood, static_argnums=0)


@pytest.fixture(scope="module")
def f32():
    return _setup(jnp.float32)


@pytest.fixture(scope="module")
def f64():
    with jax.enable_x64(True):
        return _setup(jnp.float64)


def _reference_loss(model, variables, x, key, *, beta=1.0, n_samples=1):
    """NumPy float64 re-implementation: −(1/S)Σₛ mean_b log p(x|zₛ) + β mean_b KL, zₛ = μ + σ εₛ,
    with εₛ drawn from the sub-keys ``jax.random.split(key, S)`` (from ``key`` itself when S = 1)."""
    enc = J_ENC(model, variables, x)
    mu, logsig = np.asarray(enc.mu, np.float64), np.asarray(enc.logsigma, np.float64)
    xs = np.asarray(x, np.float64)
    lls = []
    for k in ([key] if n_samples == 1 else jax.random.split(key, n_samples)):
        eps = np.asarray(jax.random.normal(k, enc.mu.shape, enc.mu.dtype), np.float64)
        z = mu + np.exp(logsig) * eps
        logits = np.asarray(J_DEC(model, variables, jnp.asarray(z, enc.mu.dtype)).logits, np.float64)
        p = special.expit(logits)
        lls.append(np.sum(xs * np.log(p) + (1 - xs) * np.log1p(-p), axis=1))
    ll = np.mean(lls, axis=0)
    kl = 0.5 * np.sum(np.exp(2 * logsig) + mu**2 - 1 - 2 * logsig, axis=1)
    return -ll.mean() + beta * kl.mean(), ll.mean(), kl.mean()


# ------------------------------------------------------------------------------ values


@pytest.mark.parametrize("n_samples", [1, 3])
def test_loss_matches_numpy_reference(f64, n_samples):
    with jax.enable_x64(True):
        model, variables, x = f64
        key = jax.random.key(1)
        loss, m = J_LOSS(model, variables, x, key, n_samples=n_samples, beta=0.5, aux=True)
        want, ll, kl = _reference_loss(model, variables, x, key, beta=0.5, n_samples=n_samples)
        assert loss.dtype == jnp.float64
        np.testing.assert_allclose(float(loss), want, rtol=1e-10)
        np.testing.assert_allclose(float(m["loglikelihood"]), ll, rtol=1e-10)
        np.testing.assert_allclose(float(m["kl"]), kl, rtol=1e-10)
        np.testing.assert_allclose(float(m["elbo"]), ll - kl, rtol=1e-10)
        assert float(m["loss"]) == float(loss)


def test_n_samples_averages_over_explicit_samples(f64):
    # the S-sample loss is the mean of one-sample losses evaluated at the S draws zₛ
    with jax.enable_x64(True):
        model, variables, x = f64
        key = jax.random.key(2)
        S = 3  # the same compiled program as the n_samples=3 reference test
        got = float(J_LOSS(model, variables, x, key, n_samples=S))
        enc = J_ENC(model, variables, x)
        kl = np.mean(np.asarray(aet.encoder_kl(model.encoder, enc)))
        per_sample = []
        for k in jax.random.split(key, S):
            z = aet.encoder_sample(model.encoder, enc, k)
            per_sample.append(-np.mean(np.asarray(J_LL(model, variables, x, z))) + kl)
        np.testing.assert_allclose(got, np.mean(per_sample), rtol=1e-12)
        # and the samples really differ (the mean is over distinct draws)
        assert np.std(per_sample) > 1e-6


def test_beta_scales_the_kl(f64):
    with jax.enable_x64(True):
        model, variables, x = f64
        key = jax.random.key(3)
        l1 = float(J_LOSS(model, variables, x, key, beta=1.0))
        l2 = float(J_LOSS(model, variables, x, key, beta=2.0))
        l0 = float(J_LOSS(model, variables, x, key, beta=0.0))
        enc = J_ENC(model, variables, x)
        mu, logsig = np.asarray(enc.mu), np.asarray(enc.logsigma)
        kl = np.mean(0.5 * np.sum(np.exp(2 * logsig) + mu**2 - 1 - 2 * logsig, axis=1))
        assert kl > 1e-3
        np.testing.assert_allclose(l2 - l1, kl, rtol=1e-9)
        np.testing.assert_allclose(l1 - l0, kl, rtol=1e-9)


def test_elbo_is_minus_loss_at_beta_one(f32):
    model, variables, x = f32
    key = jax.random.key(4)
    elbo = J_ELBO(model, variables, x, key, n_samples=2)
    assert elbo.shape == (B,)
    np.testing.assert_allclose(-float(jnp.mean(elbo)), float(J_LOSS(model, variables, x, key, n_samples=2)), rtol=1e-6)


# ------------------------------------------------------------------ transformations


def test_check_grads_float64(f64):
    with jax.enable_x64(True):
        model, variables, x = f64
        key = jax.random.key(5)
        f = jax.jit(lambda params: aet.vae.loss(model, {"params": params}, x, key, n_samples=2))
        check_grads(f, (variables["params"],), order=1, modes=("rev",))
        assert f(variables["params"]).dtype == jnp.float64
        g = jax.grad(f)(variables["params"])
        assert all(np.all(np.isfinite(np.asarray(a))) for a in jax.tree_util.tree_leaves(g))
        assert all(a.dtype == jnp.float64 for a in jax.tree_util.tree_leaves(g))


def test_eager_equals_jit(f32):
    model, variables, x = f32
    key = jax.random.key(6)
    eager = aet.vae.loss(model, variables, x, key, beta=0.7)
    assert eager.dtype == jnp.float32 and eager.shape == ()
    np.testing.assert_allclose(float(J_LOSS(model, variables, x, key, beta=0.7)), float(eager), rtol=1e-6)
    # a bare jit with only the model static, and jit of a partial
    plain = jax.jit(aet.vae.loss, static_argnums=0)
    np.testing.assert_allclose(float(plain(model, variables, x, key, beta=0.7)), float(eager), rtol=1e-6)
    part = jax.jit(functools.partial(aet.vae.loss, model, n_samples=2))
    np.testing.assert_allclose(float(part(variables, x, key, beta=0.7)),
                               float(J_LOSS(model, variables, x, key, beta=0.7, n_samples=2)), rtol=1e-6)


def test_loss_under_vmap_over_keys_beta_and_data(f32):
    model, variables, x = f32
    keys = jax.random.split(jax.random.key(7), 3)
    # vmap is wrapped in jit so each batched program compiles once instead of op by op
    batched = jax.jit(jax.vmap(lambda k: aet.vae.loss(model, variables, x, k)))(keys)
    want = [float(J_LOSS(model, variables, x, k)) for k in keys]
    np.testing.assert_allclose(np.asarray(batched), want, rtol=1e-5)
    assert np.std(want) > 0  # different keys, different draws
    betas = jnp.array([0.0, 0.5, 1.0, 4.0])
    batched = jax.jit(jax.vmap(lambda b: aet.vae.loss(model, variables, x, keys[0], beta=b)))(betas)
    want = [float(J_LOSS(model, variables, x, keys[0], beta=float(b))) for b in betas]
    np.testing.assert_allclose(np.asarray(batched), want, rtol=1e-5)
    # vmap over a stack of batches (the loss sees (B, D) inside)
    xs = jnp.stack([x, x[::-1]])
    batched = jax.jit(jax.vmap(lambda xb: aet.vae.loss(model, variables, xb, keys[1])))(xs)
    np.testing.assert_allclose(float(batched[0]), float(J_LOSS(model, variables, x, keys[1])), rtol=1e-5)
    np.testing.assert_allclose(float(batched[1]), float(J_LOSS(model, variables, x[::-1], keys[1])), rtol=1e-5)


def test_loss_under_pmap_on_one_device(f32):
    model, variables, x = f32
    key = jax.random.key(8)
    out = jax.pmap(lambda xb: aet.vae.loss(model, variables, xb, key))(x[None])
    np.testing.assert_allclose(float(out[0]), float(J_LOSS(model, variables, x, key)), rtol=1e-5)


def test_float32_dtypes(f32):
    model, variables, x = f32
    loss, m = J_LOSS(model, variables, x, jax.random.key(0), aux=True)
    assert loss.dtype == jnp.float32 and all(v.dtype == jnp.float32 for v in m.values())


def test_legacy_uint32_key_works(f32):
    model, variables, x = f32
    a = J_LOSS(model, variables, x, jax.random.PRNGKey(3))
    b = J_LOSS(model, variables, x, jax.random.wrap_key_data(jax.random.PRNGKey(3)))
    np.testing.assert_allclose(float(a), float(b), rtol=1e-6)


def test_categorical_vae_on_one_hot_data():
    # x one-hot (batch, 3, k=4): the loss accepts it and its likelihood term matches scipy's
    from scipy import stats

    enc = aet.JointGaussianLogEncoder(nn.Sequential((aet.Flatten(), aet.MLP([H], activation=nn.tanh))), LATENT)
    model = aet.VAE(enc, aet.CategoricalDecoder(aet.MLP([H], activation=nn.tanh), (3,), 4))
    labels = np.random.default_rng(1).integers(0, 4, size=(B, 3))
    x = jnp.asarray(np.eye(4, dtype=np.float32)[labels])
    variables = jax.jit(model.init)(jax.random.key(0), x)
    key = jax.random.key(2)
    loss, m = J_LOSS(model, variables, x, key, aux=True)
    enc_out = J_ENC(model, variables, x)
    z = aet.encoder_sample(model.encoder, enc_out, key)  # one draw: the loss samples with its key
    logits = np.asarray(J_DEC(model, variables, z).logits, np.float64)
    ll = stats.multinomial.logpmf(np.asarray(x, np.float64), n=1, p=special.softmax(logits, axis=-1)).sum(axis=1)
    np.testing.assert_allclose(float(m["loglikelihood"]), ll.mean(), rtol=1e-5)
    with pytest.raises(ValueError, match="per-example shape"):
        J_LOSS(model, variables, x[..., 0], key)


# ----------------------------------------------------------------------- bad inputs


@pytest.mark.parametrize(
    "kwargs, exc, word",
    [
        ({"x": np.ones((B, D), np.int32)}, TypeError, "x"),
        ({"x": np.ones((B, D + 1), np.float32)}, ValueError, "x"),
        ({"x": np.ones((D,), np.float32)}, ValueError, "x"),
        ({"x": np.zeros((0, D), np.float32)}, ValueError, "x"),
        ({"x": np.where(np.eye(B, D) > 0, np.nan, 0.5).astype(np.float32)}, ValueError, "x"),
        ({"x": np.full((B, D), np.inf, np.float32)}, ValueError, "x"),
        ({"beta": -0.1}, ValueError, "beta"),
        ({"beta": float("nan")}, ValueError, "beta"),
        ({"n_samples": 0}, ValueError, "n_samples"),
        ({"n_samples": 2.0}, TypeError, "n_samples"),
        ({"key": 0}, TypeError, "key"),
        ({"key": None}, TypeError, "key"),
        ({"key": np.zeros(3, np.uint32)}, TypeError, "key"),
        ({"key": np.zeros(2, np.float32)}, TypeError, "key"),
    ],
)
def test_bad_inputs_raise(f32, kwargs, exc, word):
    model, variables, x = f32
    args = {"x": x, "key": jax.random.key(0)}
    hyper = {}
    for k, v in kwargs.items():
        (args if k in args else hyper)[k] = v
    with pytest.raises(exc, match=f"`{word}`"):
        aet.vae.loss(model, variables, args["x"], args["key"], **hyper)


def test_nan_check_is_skipped_under_jit_but_shape_check_is_not(f32):
    model, variables, x = f32
    f = jax.jit(functools.partial(aet.vae.loss, model))
    assert np.isnan(float(f(variables, x.at[0, 0].set(jnp.nan), jax.random.key(0))))
    with pytest.raises(ValueError, match="`x`"):
        f(variables, jnp.ones((B, D + 2)), jax.random.key(0))


# ------------------------------------------------------------------------------- AE


def test_ae_loss_is_mean_squared_error():
    with jax.enable_x64(True):
        model = aet.AE(aet.Encoder(aet.MLP([H], activation=nn.tanh), LATENT), aet.Decoder(aet.MLP([H], activation=nn.tanh), D))
        x = jnp.asarray(_x(np.float64))
        variables = jax.tree_util.tree_map(lambda a: a.astype(jnp.float64), jax.jit(model.init)(jax.random.key(0), x))
        loss, m = aet.ae.loss(model, variables, x, aux=True)  # eager
        p = jax.tree_util.tree_map(np.asarray, variables["params"])
        xs = np.asarray(x)
        # MLP([H]) has a single (final) layer: no activation after it
        h = xs @ p["encoder"]["body"]["dense_0"]["kernel"] + p["encoder"]["body"]["dense_0"]["bias"]
        z = h @ p["encoder"]["z"]["kernel"] + p["encoder"]["z"]["bias"]
        h = z @ p["decoder"]["body"]["dense_0"]["kernel"] + p["decoder"]["body"]["dense_0"]["bias"]
        xhat = h @ p["decoder"]["out"]["kernel"] + p["decoder"]["out"]["bias"]
        np.testing.assert_allclose(float(loss), np.mean((xhat - xs) ** 2), rtol=1e-12)
        assert float(m["mse"]) == float(loss)
        check_grads(jax.jit(lambda q: aet.ae.loss(model, {"params": q}, x)), (variables["params"],), order=1, modes=("rev",))
        jl = jax.jit(aet.ae.loss, static_argnums=0)(model, variables, x, jax.random.key(0))
        np.testing.assert_allclose(float(jl), float(loss), rtol=1e-12)
        with pytest.raises(TypeError, match="`x`"):
            aet.ae.loss(model, variables, x.astype(jnp.int32))
