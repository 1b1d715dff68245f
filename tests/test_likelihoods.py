"""Log-likelihoods, KL, log-posterior and prior against independent references.

References are scipy.stats / distrax evaluated in float64 on random inputs;
the decoders' outputs come from the real modules (random init) so the whole
path decoder -> parameters -> dispatched log-likelihood is checked.
"""
from __future__ import annotations

import math
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
    x = jnp.asarray(np.random.default_rng(12).normal(size=(B, D)) * 3.0)
    variables = enc.init(jax.random.key(13), x)
    # the σ head starts at σ = 1 for every x (zero kernel): give it a random kernel so σ varies
    head = "logsigma" if kind == "log" else "sigma"
    params = dict(variables["params"])
    kernel = params[head]["kernel"]
    params[head] = {**params[head], "kernel": jnp.asarray(np.random.default_rng(17).normal(size=kernel.shape), kernel.dtype)}
    out = enc.apply({"params": params}, x)
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


def test_gaussian_encoders_start_at_unit_sigma_for_any_input():
    # the σ heads start with a zero kernel: σ = 1 whatever the input's scale (raw counts 0..16
    # gave log σ up to 14 with the default kernel), and the parameter tree is the usual one
    x = jnp.asarray(np.random.default_rng(18).uniform(0, 16, size=(B, 64)), jnp.float32)
    for cls, head in ((aet.JointGaussianLogEncoder, "logsigma"), (aet.JointGaussianEncoder, "sigma")):
        enc = cls(aet.MLP([32, 32], final_activation=nn.relu), LATENT)
        variables = enc.init(jax.random.key(0), x)
        assert set(variables["params"]) == {"body", "mu", head}
        assert variables["params"][head]["kernel"].shape == (32, LATENT)
        out = enc.apply(variables, x)
        sigma = np.exp(np.asarray(out.logsigma)) if head == "logsigma" else np.asarray(out.sigma)
        np.testing.assert_allclose(sigma, 1.0, rtol=1e-6)


# ------------------------------------------------------------ float32 hazards of the Gaussian


def _np_gauss(x, mu, logsigma):
    x, mu, logsigma = (np.asarray(v, np.float64) for v in (x, mu, logsigma))
    return -0.5 * ((x - mu) / np.exp(logsigma)) ** 2 - logsigma - 0.5 * np.log(2 * np.pi)


def _old_gauss(x, mu, logsigma):
    """The direct form every module used before: −½((x − μ)·e^{−log σ})² − log σ − ½ log 2π."""
    return -0.5 * ((x - mu) * jnp.exp(-logsigma)) ** 2 - logsigma - 0.5 * math.log(2 * math.pi)


# (x, μ, log σ): x = μ at log σ = −100 (0·inf = NaN in the direct form); |x − μ| = 1e-30 at
# log σ = −90 (e^90 overflows float32: −inf, though the exact value −7.4e17 is representable)
EXACT_IN_FLOAT32 = [(0.3, 0.3, -100.0), (1e-30, 0.0, -90.0), (-2.5, -2.5, -60.0), (3.0, -1.0, 80.0)]


@pytest.mark.parametrize("point", EXACT_IN_FLOAT32)
def test_gaussian_logdensity_is_exact_at_float32_extremes(point):
    x, mu, ls = (jnp.asarray(v, jnp.float32) for v in point)
    got = aet.distributions.gaussian_logdensity(x, mu, ls)
    assert got.dtype == jnp.float32
    np.testing.assert_allclose(float(got), _np_gauss(*point), rtol=2e-6)
    # and through the dispatched decoder likelihood and the encoder log-posterior
    dec = aet.JointGaussianLogDecoder(_body(), 1)
    out = aet.GaussianLogParams(mu.reshape(1, 1), ls.reshape(1, 1))
    np.testing.assert_allclose(float(aet.decoder_loglikelihood(dec, x.reshape(1, 1), out)[0]), _np_gauss(*point), rtol=2e-6)
    enc = aet.JointGaussianLogEncoder(_body(), 1)
    np.testing.assert_allclose(float(aet.encoder_logposterior(enc, x.reshape(1, 1), out)[0]), _np_gauss(*point), rtol=2e-6)


def test_gaussian_logdensity_gradients_at_x_equal_mu_are_exact():
    # at x = μ: ∂/∂x = ∂/∂μ = 0 and ∂/∂log σ = (x − μ)²/σ² − 1 = −1, for any log σ
    for ls in (-100.0, -60.0, 0.0, 30.0):
        g = jax.grad(aet.distributions.gaussian_logdensity, argnums=(0, 1, 2))(
            jnp.float32(0.3), jnp.float32(0.3), jnp.float32(ls)
        )
        np.testing.assert_array_equal([float(v) for v in g], [0.0, 0.0, -1.0])


def test_gaussian_logdensity_beyond_float32_range_is_finite_with_the_right_gradient_signs():
    # |x − μ| = 1 at log σ = −60: the exact value −6.5e51 is below float32's range (the direct
    # form gives −inf). It must stay finite (the loss of a batch, summed over 1e6 such
    # elements, too) and its gradient must still pull μ towards x and log σ up.
    x, mu, ls = jnp.float32(1.0), jnp.float32(0.0), jnp.float32(-60.0)
    assert float(_old_gauss(x, mu, ls)) == -np.inf
    f = aet.distributions.gaussian_logdensity
    v = f(x, mu, ls)
    assert np.isfinite(float(v)) and float(v) < -1e27
    assert np.isfinite(float(jnp.sum(f(jnp.full((1000, 1000), x), mu, ls))))
    gx, gmu, gls = (float(g) for g in jax.grad(f, argnums=(0, 1, 2))(x, mu, ls))
    assert np.isfinite([gx, gmu, gls]).all() and gx < 0 < gmu and gls > 0
    # in float64 the same point is exact
    with jax.enable_x64(True):
        np.testing.assert_allclose(float(f(jnp.float64(1.0), 0.0, -60.0)), _np_gauss(1.0, 0.0, -60.0), rtol=1e-12)


def test_gaussian_logdensity_unchanged_at_ordinary_points():
    rng = np.random.default_rng(19)
    x, mu = rng.normal(size=(2, 200)) * 3.0
    ls = rng.uniform(-4.0, 3.0, size=200)
    with jax.enable_x64(True):
        got64 = np.asarray(aet.distributions.gaussian_logdensity(jnp.asarray(x), jnp.asarray(mu), jnp.asarray(ls)))
        np.testing.assert_allclose(got64, _np_gauss(x, mu, ls), rtol=1e-12, atol=1e-12)
        g64 = jax.grad(lambda m: aet.distributions.gaussian_logdensity(jnp.asarray(x), m, jnp.asarray(ls)).sum())(jnp.asarray(mu))
        np.testing.assert_allclose(np.asarray(g64), (x - mu) / np.exp(2 * ls), rtol=1e-10)
    x32, mu32, ls32 = (jnp.asarray(v, jnp.float32) for v in (x, mu, ls))
    got32 = np.asarray(aet.distributions.gaussian_logdensity(x32, mu32, ls32))
    np.testing.assert_allclose(got32, np.asarray(_old_gauss(x32, mu32, ls32)), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(got32, _np_gauss(x, mu, ls), rtol=1e-5, atol=1e-5)


def _with_sigma_head(variables, bias: float):
    """Set every σ head ("sigma") to a zero kernel and a constant pre-activation ``bias``."""
    params = dict(variables["params"])
    params["sigma"] = {"kernel": jnp.zeros_like(params["sigma"]["kernel"]), "bias": jnp.full_like(params["sigma"]["bias"], bias)}
    return {"params": params}


@pytest.mark.parametrize("kind", ["joint", "split", "encoder"])
def test_softplus_sigma_never_underflows(kind):
    # softplus(−100) = 3.7e-44 is 0 in float32 (log σ = −inf, log p = +inf); σ = softplus + tiny
    if kind == "encoder":
        module = aet.JointGaussianEncoder(_body(), D)
        inp = jnp.asarray(np.random.default_rng(20).normal(size=(B, 4)), jnp.float32)
    else:
        module = GAUSSIAN_DECODERS[kind](D)
        inp = jnp.asarray(_z(21), jnp.float32)
    variables = _with_sigma_head(module.init(jax.random.key(0), inp), -100.0)
    out = module.apply(variables, inp)
    tiny = float(np.finfo(np.float32).tiny)
    want_sigma = np.log1p(np.exp(-100.0)) + tiny  # float64 reference of σ = softplus(a) + tiny
    # (float32 flushes the subnormal softplus(−100) = 3.7e-44 to 0: a relative 3.2e-6 below tiny + it)
    np.testing.assert_allclose(np.asarray(out.sigma), want_sigma, rtol=1e-5)
    want = D * _np_gauss(0.0, 0.0, np.log(want_sigma))  # x = μ: D (−log σ − ½ log 2π)
    if kind == "encoder":
        got = aet.encoder_logposterior(module, out.mu, out)
        assert np.isfinite(np.asarray(aet.encoder_kl(module, out))).all()
    else:
        got = aet.decoder_loglikelihood(module, out.mu, out)
    np.testing.assert_allclose(np.asarray(got), want, rtol=1e-5)

    def total(v):  # at x = μ (elsewhere the exact ∂/∂σ = (q − 1)/σ at σ = 1e-38 exceeds float32)
        o = module.apply(v, inp)
        if kind == "encoder":
            return jnp.sum(aet.encoder_logposterior(module, o.mu, o) - aet.encoder_kl(module, o))
        return jnp.sum(aet.decoder_loglikelihood(module, o.mu, o))

    grads = jax.grad(total)(variables)
    assert all(np.isfinite(np.asarray(g)).all() for g in jax.tree_util.tree_leaves(grads))
    # ordinary pre-activations: σ is exactly softplus
    ordinary = module.apply(_with_sigma_head(variables, 0.7), inp)
    np.testing.assert_array_equal(np.asarray(ordinary.sigma), np.asarray(jax.nn.softplus(jnp.float32(0.7))))


# ----------------------------------------------------------------- Bernoulli: x·l − softplus(l)


def _np_bernoulli(x, l):
    # x log σ(l) + (1 − x) log σ(−l) with log σ(l) = −log(1 + e^{−l}), in float64
    return -x * np.logaddexp(0.0, -l) - (1.0 - x) * np.logaddexp(0.0, l)


def test_bernoulli_form_matches_float64_reference_up_to_logit_100():
    # one element per example: logits −100..100 against x = 0, 0.3 and 1
    l = np.tile(np.linspace(-100.0, 100.0, 401), 3)[:, None]
    x = np.repeat([0.0, 0.3, 1.0], 401)[:, None]
    dec = aet.BernoulliDecoder(_body(), 1)
    want = _np_bernoulli(x, l)[:, 0]
    dwant = (x - special.expit(l))[:, 0]

    def ll(xx, logits):
        return aet.decoder_loglikelihood(dec, xx, aet.BernoulliParams(logits))

    with jax.enable_x64(True):
        got = np.asarray(ll(jnp.asarray(x), jnp.asarray(l)))
        np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12)
        g = np.asarray(jax.grad(lambda t: ll(jnp.asarray(x), t).sum())(jnp.asarray(l)))[:, 0]
        np.testing.assert_allclose(g, dwant, rtol=1e-12, atol=1e-14)  # 1 − σ(l): ulps of 1
    x32, l32 = jnp.asarray(x, jnp.float32), jnp.asarray(l, jnp.float32)
    got32 = np.asarray(ll(x32, l32))
    assert got32.dtype == np.float32
    # float32: within a few ulps of |l| (the form loses e^{−|l|} next to |l|, never more)
    np.testing.assert_allclose(got32, want, rtol=1e-6, atol=4 * float(np.spacing(np.float32(100.0))))
    g32 = np.asarray(jax.grad(lambda t: ll(x32, t).sum())(l32))[:, 0]
    assert np.isfinite(g32).all()
    np.testing.assert_allclose(g32, dwant, atol=1e-6)


def test_bernoulli_loglikelihood_costs_one_softplus():
    # x·l − softplus(l) needs one exp and one log1p per element (x log σ(l) + (1 − x) log σ(−l): two)
    dec = aet.BernoulliDecoder(_body(), 8)
    x = jnp.full((4, 8), 0.5)
    hlo = jax.jit(lambda l: aet.decoder_loglikelihood(dec, x, aet.BernoulliParams(l))).lower(x).compile().as_text()
    assert hlo.count("exponential(") == 1 and hlo.count("log-plus-one(") == 1


# ------------------------------------------------------------------- support of the likelihood


def test_bernoulli_support_refuses_standardised_data_with_the_fix(digits):
    dec = aet.BernoulliDecoder(_body(), 64)
    aet.check_support(dec, digits[0].x, name="train")  # digits in [0, 1]: accepted
    for ok in (np.array([[0, 1, 1]]), np.array([[True, False]]), np.array([[-0.0, 1.0]]), np.zeros((0, 3))):
        assert aet.decoder_support(dec, ok) is None
    x = np.asarray(digits[0].x)
    standardised = (x - x.mean(0)) / (x.std(0) + 1e-8)
    with pytest.raises(ValueError) as info:
        aet.check_support(dec, standardised, name="train")
    msg = str(info.value)
    lo, hi = standardised.min(), standardised.max()
    assert "\n" not in msg and msg.startswith("train: BernoulliDecoder")
    for part in ("[0, 1]", f"[{lo:.4g}, {hi:.4g}]", "--decoder gaussian", "scale the data to [0, 1]"):
        assert part in msg, part
    # just outside [0, 1] on either side, and raw 0..16 counts
    for bad in (np.array([[0.5, 1.0001]], np.float32), np.array([[-1e-7, 0.5]]), np.array([[0, 16]])):
        assert "needs data in [0, 1]" in aet.decoder_support(dec, bad)


def test_support_check_names_nan_values():
    dec = aet.BernoulliDecoder(_body(), 3)
    x = np.full((4, 3), 0.5, np.float32)
    x[1, 2] = np.nan
    x[2, 0] = np.inf
    msg = aet.decoder_support(dec, x)
    assert "1 NaN and 1 infinite values" in msg and "[0.5, 0.5]" in msg
    cat = aet.CategoricalDecoder(_body(), 2, 3)
    onehot = np.eye(3)[np.zeros((4, 2), int)]
    onehot[0, 0, 1] = np.nan
    assert "1 NaN" in aet.decoder_support(cat, onehot)


def test_categorical_support_refuses_non_one_hot_data():
    k = 4
    dec = aet.CategoricalDecoder(_body(), 3, k)
    labels = np.random.default_rng(22).integers(0, k, size=(6, 3))
    onehot = np.eye(k)[labels]
    assert aet.decoder_support(dec, onehot) is None
    assert aet.decoder_support(dec, onehot.astype(np.float32)) is None
    assert aet.decoder_support(dec, labels) is None
    soft = np.full((6, 3, k), 1.0 / k)  # sums to 1, not one-hot
    two_hot = onehot.copy()
    two_hot[0, 0] = [1, 1, 0, 0]
    for bad in (soft, two_hot, np.eye(k + 1)[labels], onehot * 2.0):
        msg = aet.decoder_support(dec, bad)
        assert msg is not None and f"one-hot data with a last axis of {k} categories" in msg
    with pytest.raises(ValueError, match=r"^data: CategoricalDecoder needs integer classes in 0\.\.3, but the values lie in \[0, 4\]$"):
        aet.check_support(dec, np.array([[0, 4, 1]]))


def test_a_users_decoder_without_a_support_check_is_not_checked():
    dec = UnregisteredDecoder()
    assert aet.decoder_support(dec, np.array([[-5.0, np.nan, 1e9]])) is None
    aet.check_support(dec, np.array([[-5.0, 3.5]]), name="train")  # no error
