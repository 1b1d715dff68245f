"""Tests of the Hamiltonian VAE (aet.hvae) against float64 NumPy references,
conservation laws of the leapfrog integrator and the ε → 0 limit (the VAE)."""
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
from aetk_jax import hvae

LOG_2PI = math.log(2.0 * math.pi)


# --------------------------------------------------------------------------- user-registered decoders


class LinearGaussParams(NamedTuple):
    mu: jax.Array


class LinearGaussianDecoder(nn.Module):
    """p(x|z) = N(x; W z + b, I), registered below as a user decoder."""

    output_dim: int

    @nn.compact
    def __call__(self, z):
        return LinearGaussParams(nn.Dense(self.output_dim)(z))


@aet.decoder_loglikelihood.register(LinearGaussianDecoder)
def _linear_gauss_loglik(decoder, x, out):
    return jnp.sum(-0.5 * (x - out.mu) ** 2 - 0.5 * LOG_2PI, axis=-1)


class PoissonParams(NamedTuple):
    rate: jax.Array


class PoissonDecoder(nn.Module):
    body: nn.Module
    output_dim: int

    @nn.compact
    def __call__(self, z):
        return PoissonParams(nn.softplus(nn.Dense(self.output_dim)(self.body(z))) + 1e-3)


@aet.decoder_loglikelihood.register(PoissonDecoder)
def _poisson_loglik(decoder, x, out):
    return jnp.sum(x * jnp.log(out.rate) - out.rate - jax.scipy.special.gammaln(x + 1.0), axis=-1)


def gaussian_encoder(d: int, hidden: int = 16, act=nn.tanh):
    return aet.JointGaussianLogEncoder(aet.MLP([hidden], activation=act, final_activation=act), d)


def make_model(decoder: str = "bernoulli", d: int = 2, data_dim: int = 64, hidden: int = 16, act=nn.tanh):
    enc = gaussian_encoder(d, hidden, act)
    body = aet.MLP([hidden], activation=act, final_activation=act)
    dec = {
        "bernoulli": lambda: aet.BernoulliDecoder(body, data_dim),
        "gaussian": lambda: aet.JointGaussianLogDecoder(body, data_dim),
        "poisson": lambda: PoissonDecoder(body, data_dim),
        "linear": lambda: LinearGaussianDecoder(data_dim),
    }[decoder]()
    return aet.HVAE(enc, dec)


def make_data(decoder: str, n: int, data_dim: int, seed: int = 0, dtype=np.float32):
    rng = np.random.default_rng(seed)
    if decoder == "bernoulli":
        x = (rng.random((n, data_dim)) < 0.4).astype(dtype)
    elif decoder == "poisson":
        x = rng.poisson(3.0, (n, data_dim)).astype(dtype)
    else:
        x = rng.normal(size=(n, data_dim)).astype(dtype)
    return jnp.asarray(x)


class Small(NamedTuple):
    model: nn.Module
    x: jax.Array  # float32 (6, 16)
    v: dict  # float32 parameters
    x64: np.ndarray  # the same data and parameters in float64 (NumPy, used under enable_x64)
    v64: dict


@pytest.fixture(scope="module")
def small() -> Small:
    """One small Bernoulli HVAE shared by the tests below, so its compiled loss is reused."""
    model = make_model("bernoulli", d=2, data_dim=16, hidden=8)
    x = make_data("bernoulli", 6, 16)
    v = model.init(jax.random.key(0), x)
    to64 = lambda t: jax.tree_util.tree_map(lambda a: np.asarray(a, np.float64), t)
    return Small(model, x, v, np.asarray(x, np.float64), to64(v))


# --------------------------------------------------------------------------- NumPy references


def np_quadratic(beta0, k, K):
    inv = 1.0 / np.sqrt(beta0)
    return ((1.0 - inv) * (np.asarray(k, np.float64) / K) ** 2 + inv) ** -2.0


def np_leapfrog(grad, z, rho, eps):
    rho_t = rho - 0.5 * eps * grad(z)
    z_b = z + eps * rho_t
    return z_b, rho_t - 0.5 * eps * grad(z_b)


def np_flow(grad, z, rho, eps, betas):
    for k in range(1, len(betas)):
        z, rho = np_leapfrog(grad, z, rho, eps)
        rho = rho * np.sqrt(betas[k - 1] / betas[k])
    return z, rho


def std_normal_logpdf(v):
    v = np.asarray(v, np.float64)
    return -0.5 * (v.shape[-1] * LOG_2PI + np.sum(v**2, axis=-1))


# A nonlinear, coupled potential: U(z) = ½ zᵀ A z + Σ c·cos(z) + ¼ Σ z⁴ / 10.
_RNG = np.random.default_rng(123)
_B = _RNG.normal(size=(3, 3))
A3 = _B @ _B.T / 3 + np.eye(3)
C3 = np.array([0.7, -0.4, 1.1])


def np_grad_nonlinear(z):
    return z @ A3 + (-C3 * np.sin(z)) + 0.1 * z**3


def jax_potential_nonlinear(z):
    quad = 0.5 * jnp.einsum("...i,ij,...j->...", z, A3, z)
    return jnp.sum(quad + jnp.sum(C3 * jnp.cos(z), -1) + 0.025 * jnp.sum(z**4, -1))


def jax_grad_nonlinear(z):
    return jax.grad(jax_potential_nonlinear)(z)


# --------------------------------------------------------------------------- leapfrog


@pytest.mark.parametrize("batched, vector_eps", [(False, True), (True, False), (True, True)])
def test_leapfrog_matches_numpy(batched, vector_eps):
    rng = np.random.default_rng(1)
    shape = (5, 3) if batched else (3,)
    z, rho = rng.normal(size=shape), rng.normal(size=shape)
    eps = np.array([0.05, 0.1, 0.2]) if vector_eps else 0.13
    # the jax gradient equals the NumPy one (the potential is what we think it is)
    with jax.enable_x64(True):
        g = np.asarray(jax_grad_nonlinear(jnp.asarray(z)))
        np.testing.assert_allclose(g, np_grad_nonlinear(z), rtol=1e-13, atol=1e-13)
        zj, rj = hvae.leapfrog(jax_grad_nonlinear, jnp.asarray(z), jnp.asarray(rho), jnp.asarray(eps))
        assert zj.dtype == jnp.float64 and zj.shape == shape and rj.shape == shape
    zn, rn = np_leapfrog(np_grad_nonlinear, z, rho, eps)
    np.testing.assert_allclose(np.asarray(zj), zn, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(np.asarray(rj), rn, rtol=1e-12, atol=1e-12)
    # a single step moves the point (the comparison is not trivially satisfied)
    assert np.max(np.abs(zn - z)) > 1e-2


def test_flow_matches_numpy_with_tempering():
    rng = np.random.default_rng(2)
    z, rho = rng.normal(size=(4, 3)), rng.normal(size=(4, 3))
    K, beta0, eps = 5, 0.3, np.array([0.1, 0.2, 0.15])
    betas = np_quadratic(beta0, np.arange(K + 1), K)
    with jax.enable_x64(True):
        bj = hvae.temper_schedule(hvae.quadratic_tempering, beta0, K)
        zj, rj = hvae.hamiltonian_flow(jax_grad_nonlinear, jnp.asarray(z), jnp.asarray(rho), jnp.asarray(eps), bj)
    zn, rn = np_flow(np_grad_nonlinear, z, rho, eps, betas)
    np.testing.assert_allclose(np.asarray(zj), zn, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(np.asarray(rj), rn, rtol=1e-12, atol=1e-12)


def test_leapfrog_reversible():
    rng = np.random.default_rng(3)
    z0, rho0 = rng.normal(size=(6, 3)), rng.normal(size=(6, 3))
    K = 25
    with jax.enable_x64(True):
        ones = jnp.ones(K + 1)
        zK, rK = hvae.hamiltonian_flow(jax_grad_nonlinear, jnp.asarray(z0), jnp.asarray(rho0), 0.1, ones)
        zb, rb = hvae.hamiltonian_flow(jax_grad_nonlinear, zK, -rK, 0.1, ones)
    assert np.max(np.abs(np.asarray(zK) - z0)) > 0.1  # it went somewhere
    np.testing.assert_allclose(np.asarray(zb), z0, atol=1e-11)
    np.testing.assert_allclose(-np.asarray(rb), rho0, atol=1e-11)


@pytest.mark.parametrize("tempering", ["null", "quadratic"])
def test_flow_volume(tempering):
    """Leapfrog preserves volume; tempering scales it by (β₀/β_K)^{d/2}."""
    rng = np.random.default_rng(4)
    d, K, beta0 = 3, 4, 0.3
    zr = rng.normal(size=2 * d)
    sched = hvae.null_tempering if tempering == "null" else hvae.quadratic_tempering
    with jax.enable_x64(True):
        betas = hvae.temper_schedule(sched, beta0, K)

        def flat(v):
            z, r = hvae.hamiltonian_flow(jax_grad_nonlinear, v[:d], v[d:], 0.2, betas)
            return jnp.concatenate([z, r])

        J = np.asarray(jax.jacfwd(flat)(jnp.asarray(zr)))
        logdet = float(hvae.tempering_logdet(betas, d))
    det = np.linalg.det(J)
    expected = 1.0 if tempering == "null" else beta0 ** (d / 2)  # β_K = 1
    assert abs(det - expected) < 1e-10 * max(1.0, abs(expected)), (det, expected)
    assert abs(logdet - math.log(expected)) < 1e-12
    assert np.max(np.abs(J - np.eye(2 * d))) > 0.1  # a non-trivial map


def test_energy_error_is_second_order():
    """On U = ½ zᵀAz the max energy error over [0, T] scales as ε²: halving ε divides it by ≈ 4."""
    A = jnp.asarray(A3)
    grad = lambda z: z @ A

    def max_energy_error(eps, n_steps):
        z0, r0 = jnp.array([1.0, -0.5, 0.3]), jnp.array([0.2, 0.9, -0.7])
        H = lambda z, r: 0.5 * z @ A @ z + 0.5 * r @ r

        def body(c, _):
            z, r = hvae.leapfrog(grad, *c, eps)
            return (z, r), H(z, r)

        _, hs = jax.lax.scan(body, (z0, r0), None, length=n_steps)
        return float(jnp.max(jnp.abs(hs - H(z0, r0))))

    with jax.enable_x64(True):
        T = 20.0
        e1 = max_energy_error(0.1, int(round(T / 0.1)))
        e2 = max_energy_error(0.05, int(round(T / 0.05)))
    ratio = e1 / e2
    # measured ratio 4.00; asymptotically 4 for a second-order integrator
    assert 3.6 < ratio < 4.4, (e1, e2, ratio)
    assert e1 < 0.05  # and the error is small (bounded, no drift)


# --------------------------------------------------------------------------- tempering


@pytest.mark.parametrize("K", [1, 3, 7])
@pytest.mark.parametrize("beta0", [0.1, 0.3, 1.0])
def test_tempering_schedules(K, beta0):
    with jax.enable_x64(True):
        q = np.asarray(hvae.temper_schedule(hvae.quadratic_tempering, beta0, K))
        n = np.asarray(hvae.temper_schedule(hvae.null_tempering, beta0, K))
        single = [float(hvae.quadratic_tempering(beta0, k, K)) for k in range(K + 1)]
    ref = np_quadratic(beta0, np.arange(K + 1), K)
    np.testing.assert_allclose(q, ref, rtol=1e-14)
    np.testing.assert_allclose(single, ref, rtol=1e-14)
    assert q.shape == (K + 1,)
    assert abs(q[0] - beta0) < 1e-14 and abs(q[-1] - 1.0) < 1e-14
    assert np.all(np.diff(q) >= 0)  # the temperature 1/β decreases
    np.testing.assert_array_equal(n, np.full(K + 1, beta0))


@pytest.mark.parametrize("beta0", [1e-30, 1e-8, 0.3, 1.0])
def test_quadratic_tempering_float32_end_points_are_exact(beta0):
    """float32: β_0 = β₀ and β_K = 1 exactly (1/√β₀ = 1e15 used to make β_K inf for β₀ = 1e-30),
    and the points in between agree with the paper's formula in float64 NumPy."""
    K = 6
    q = np.asarray(hvae.temper_schedule(hvae.quadratic_tempering, np.float32(beta0), K))
    assert q.dtype == np.float32
    assert q[0] == np.float32(beta0) and q[-1] == np.float32(1.0)
    assert np.all(np.isfinite(q)) and np.all(np.diff(q) >= 0)
    ref = np_quadratic(float(np.float32(beta0)), np.arange(K + 1), K)
    np.testing.assert_allclose(q, ref, rtol=4e-7)


def test_tempered_momentum_formula():
    rho = jnp.array([[1.0, -2.0]])
    np.testing.assert_allclose(np.asarray(hvae.tempered_momentum(rho, 0.25, 1.0)), [[0.5, -1.0]], rtol=1e-7)


@pytest.mark.parametrize("sched", [hvae.quadratic_tempering, hvae.null_tempering])
def test_tempering_refuses_bad_arguments(sched):
    with pytest.raises(ValueError, match="`K`"):
        sched(0.3, 0, 0)
    with pytest.raises(ValueError, match="`K`"):
        hvae.temper_schedule(sched, 0.3, 0)
    with pytest.raises(ValueError, match="`beta0`"):
        sched(0.0, 1, 3)
    with pytest.raises(ValueError, match="`beta0`"):
        sched(1.2, 1, 3)


# --------------------------------------------------------------------------- the ELBO


def test_null_tempering_beta1_momentum_terms(small):
    """β₀ = 1, no tempering: ρ₀ = γ, log q̄'s momentum term is log N(ρ₀; 0, I) and the log-det is 0."""
    key = jax.random.key(7)
    with jax.enable_x64(True):
        t = hvae.hamiltonian_terms(small.model, small.v64, small.x64, key, K=3, eps=0.3, beta0=1.0,
                                   tempering=hvae.null_tempering)
        gamma = np.asarray(jax.random.normal(jax.random.split(key)[1], (6, 2), jnp.float64))
    assert t.rho0.dtype == jnp.float64
    np.testing.assert_allclose(np.asarray(t.rho0), gamma, rtol=1e-14)
    np.testing.assert_allclose(np.asarray(t.logq_momentum), std_normal_logpdf(gamma), rtol=1e-13)
    np.testing.assert_allclose(np.asarray(t.logp_momentum), std_normal_logpdf(np.asarray(t.rhoK)), rtol=1e-13)
    np.testing.assert_array_equal(np.asarray(t.logdet), np.zeros(6))
    assert np.max(np.abs(np.asarray(t.rhoK) - gamma)) > 1e-2  # the dynamics moved ρ
    momentum = std_normal_logpdf(np.asarray(t.rhoK)) - std_normal_logpdf(gamma)
    rest = np.asarray(t.loglik) + np.asarray(t.logprior) - np.asarray(t.logq)
    np.testing.assert_allclose(np.asarray(t.elbo), rest + momentum, rtol=1e-13, atol=1e-12)


@pytest.mark.parametrize("custom_grad", [False, True])
def test_elbo_matches_numpy_reference(custom_grad):
    """Full HVAE ELBO with a user-registered linear-Gaussian decoder, against NumPy.

    ∇U(z) = −Wᵀ(x − Wz − b) + z (the decoder is differentiated). With
    ``custom_grad`` the user passes the prior-only gradient ∇U(z) = z (what
    the Julia code's ∇U reduces to) and the NumPy flow uses the same.
    """
    d, D, n, K, beta0 = 3, 5, 7, 4, 0.3
    eps = np.array([0.05, 0.1, 0.08])
    model = make_model("linear", d=d, data_dim=D)
    key = jax.random.key(11)
    with jax.enable_x64(True):
        x = make_data("gaussian", n, D).astype(jnp.float64)
        v = model.init(jax.random.key(0), x)
        kw = dict(K=K, eps=jnp.asarray(eps), beta0=beta0)
        if custom_grad:
            kw["potential_grad"] = lambda m, var, xx, z: z
        t = hvae.hamiltonian_terms(model, v, x, key, **kw)
        elbo = np.asarray(hvae.elbo(model, v, x, key, **kw))
        enc = aet.base.encode(model, v, x)
        z_key, rho_key = jax.random.split(key)
        xi = np.asarray(jax.random.normal(z_key, (n, d), jnp.float64))
        gamma = np.asarray(jax.random.normal(rho_key, (n, d), jnp.float64))
    mu, logsig = np.asarray(enc.mu), np.asarray(enc.logsigma)
    W = np.asarray(v["params"]["decoder"]["Dense_0"]["kernel"])  # (d, D)
    b = np.asarray(v["params"]["decoder"]["Dense_0"]["bias"])
    xn = np.asarray(x)

    z0 = mu + np.exp(logsig) * xi
    rho0 = gamma / np.sqrt(beta0)
    if custom_grad:
        grad = lambda z: z
    else:
        grad = lambda z: -(xn - z @ W - b) @ W.T + z
    betas = np_quadratic(beta0, np.arange(K + 1), K)
    zK, rK = np_flow(grad, z0, rho0, eps, betas)

    loglik = np.sum(-0.5 * (xn - zK @ W - b) ** 2 - 0.5 * LOG_2PI, axis=-1)
    logq = np.sum(-0.5 * ((z0 - mu) / np.exp(logsig)) ** 2 - logsig - 0.5 * LOG_2PI, axis=-1)
    # paper: log p̄ − log q̄ with log q̄ = log q(z₀|x) + log N(γ; 0, I) (β_K = 1)
    ref = loglik + std_normal_logpdf(rK) + std_normal_logpdf(zK) - logq - std_normal_logpdf(gamma)

    np.testing.assert_allclose(np.asarray(t.z0), z0, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(np.asarray(t.zK), zK, rtol=1e-11, atol=1e-11)
    np.testing.assert_allclose(np.asarray(t.rhoK), rK, rtol=1e-11, atol=1e-11)
    np.testing.assert_allclose(np.asarray(t.loglik), loglik, rtol=1e-11)
    np.testing.assert_allclose(elbo, ref, rtol=1e-11, atol=1e-10)
    np.testing.assert_allclose(np.asarray(t.elbo), ref, rtol=1e-11, atol=1e-10)
    # the potential itself
    with jax.enable_x64(True):
        U = np.asarray(hvae.potential_energy(model, v, x, jnp.asarray(zK)))
    np.testing.assert_allclose(U, -loglik - std_normal_logpdf(zK), rtol=1e-12)
    if not custom_grad:  # the decoder's gradient matters: the prior-only flow ends elsewhere
        zP, _ = np_flow(lambda z: z, z0, rho0, eps, betas)
        assert np.max(np.abs(zP - zK)) > 1e-3


EPS0 = 1e-9


@pytest.mark.parametrize("decoder", ["bernoulli", "poisson"])
def test_eps_to_zero_recovers_vae_estimate(small, decoder):
    """ε → 0: z_K = z₀, ρ_K = γ, so the HVAE ELBO equals log p(x|z₀) + log p(z₀) − log q(z₀|x).

    Run with the built-in Bernoulli decoder and a user-registered Poisson one.
    """
    d = 2
    if decoder == "bernoulli":
        model, v, x = small.model, small.v64, small.x64
    else:
        model = make_model("poisson", d=d, data_dim=12)
        x = np.asarray(make_data("poisson", 8, 12), np.float64)
        v32 = model.init(jax.random.key(1), jnp.asarray(x[:1]))
        v = jax.tree_util.tree_map(lambda a: np.asarray(a, np.float64), v32)
    key = jax.random.key(5)

    @jax.jit
    def vae_estimate(v, x, z0):
        enc = aet.base.encode(model, v, x)
        logq = aet.encoder_logposterior(model.encoder, z0, enc)
        return aet.base.loglikelihood(model, v, x, z0) + aet.spherical_logprior(z0) - logq

    with jax.enable_x64(True):
        t = hvae.hamiltonian_terms(model, v, x, key, K=3, eps=EPS0, beta0=0.3)
        h = np.asarray(t.elbo)
        enc = aet.base.encode(model, v, x)
        z0 = aet.encoder_sample(model.encoder, enc, jax.random.split(key)[0])  # the same z₀
        vae_est = np.asarray(vae_estimate(v, x, z0))
    assert h.dtype == np.float64
    np.testing.assert_allclose(np.asarray(t.z0), np.asarray(z0), rtol=1e-14)
    # with tempering the estimate moves at first order in ε (about K·ε·|∇U|·|ρ| ≈ 1e-8 here)
    np.testing.assert_allclose(h, vae_est, rtol=0, atol=1e-7)
    # the Julia package's log q̄ (unit-covariance density at ρ₀) would differ by
    # ½(1 − β₀)‖ρ₀‖² + ½ d log β₀: not the ε → 0 limit we just checked
    rho0 = np.asarray(t.rho0)
    julia_gap = 0.5 * (1 - 0.3) * np.sum(rho0**2, -1) + 0.5 * d * math.log(0.3)
    assert np.max(np.abs(julia_gap)) > 0.1
    if decoder == "bernoulli":
        # null tempering with β₀ = 0.5: ρ_K = ρ₀ ~ N(0, 2I) is scored under N(0, I), a known gap
        with jax.enable_x64(True):
            tn = hvae.hamiltonian_terms(model, v, x, key, K=3, eps=EPS0, beta0=0.5, tempering=hvae.null_tempering)
        rho0n = np.asarray(tn.rho0)
        gap = std_normal_logpdf(rho0n) - (-0.5 * (d * LOG_2PI - d * math.log(0.5) + 0.5 * np.sum(rho0n**2, -1)))
        np.testing.assert_allclose(np.asarray(tn.elbo) - vae_est, gap, rtol=1e-8, atol=1e-7)


def expected_tempering_shift(d: int, beta_K: float) -> float:
    """E[ELBO(schedule ending at β_K)] − E[ELBO(schedule ending at 1)] as ε → 0.

    z_K = z₀ and ρ_K = ρ₀·√(β₀/β_K) = γ/√β_K; log q̄_K = log q(z₀|x) + log N(γ; 0, Σ) + ½·d·log β_K,
    so the difference is −½(1/β_K − 1)·γᵀΣ⁻¹γ − ½·d·log β_K with E[γᵀΣ⁻¹γ] = d:
    ½·d·(1 − 1/β_K) − ½·d·log β_K, whatever the covariance Σ of γ (I here, G(z₀) in the RHVAE).
    """
    return 0.5 * d * (1.0 - 1.0 / beta_K) - 0.5 * d * math.log(beta_K)


def rising_to_4(beta0, k, K):
    """A linear schedule from β₀ up to β_K = 4 (heats the momentum's spread down below 1)."""
    return beta0 + (4.0 - beta0) * jnp.asarray(k) / K


@pytest.mark.parametrize("sched, beta_K", [(hvae.null_tempering, 0.3), (rising_to_4, 4.0)])
def test_elbo_shift_for_schedules_not_ending_at_one(sched, beta_K):
    """ε → 0: against ``quadratic_tempering`` (β_K = 1) with the same draws, the mean ELBO moves by
    ½d(1 − 1/β_K) − ½d·log β_K, to within a few Monte-Carlo standard errors computed here."""
    model = make_model("bernoulli", d=2, data_dim=16, hidden=8)
    x = np.asarray(jnp.tile(make_data("bernoulli", 4, 16), (1000, 1)), np.float64)
    key = jax.random.key(11)
    with jax.enable_x64(True):
        v = jax.tree_util.tree_map(lambda a: np.asarray(a, np.float64), model.init(jax.random.key(0), x[:1]))
        kw = dict(K=3, eps=EPS0, beta0=0.3)
        t = hvae.hamiltonian_terms(model, v, x, key, tempering=sched, **kw)
        diff = np.asarray(t.elbo) - np.asarray(hvae.elbo(model, v, x, key, **kw))
    np.testing.assert_allclose(np.asarray(t.rhoK), np.asarray(t.rho0) * math.sqrt(0.3 / beta_K), atol=1e-7)
    se = diff.std(ddof=1) / math.sqrt(diff.size)
    assert abs(diff.mean() - expected_tempering_shift(2, beta_K)) < 4 * se, (diff.mean(), se)


def test_aux_metrics_and_evaluate_dispatch(small):
    model, v, x = small.model, small.v, small.x
    key = jax.random.key(3)
    kw = dict(K=3, eps=0.05, beta0=0.5)
    value, m = hvae.loss(model, v, x, key, aux=True, **kw)
    t = hvae.hamiltonian_terms(model, v, x, key, **kw)
    per_ex = np.asarray(hvae.elbo(model, v, x, key, **kw))
    assert per_ex.shape == (6,) and value.shape == ()
    np.testing.assert_allclose(float(value), -per_ex.mean(), rtol=1e-5)
    np.testing.assert_allclose(float(hvae.loss(model, v, x, key, **kw)), float(value), rtol=1e-6)
    np.testing.assert_allclose(float(m["elbo"]), per_ex.mean(), rtol=1e-5)
    np.testing.assert_allclose(float(m["loss"]), float(value), rtol=1e-7)
    np.testing.assert_allclose(float(m["loglikelihood"]), float(jnp.mean(t.loglik)), rtol=1e-5)
    for name, term in [("logprior", t.logprior), ("logp_momentum", t.logp_momentum), ("logq", t.logq)]:
        np.testing.assert_allclose(float(m[name]), float(jnp.mean(term)), rtol=1e-5)
    # log q̄'s momentum term is the exact N(ρ₀; 0, β₀⁻¹ I) density, computed here in NumPy
    rho0 = np.asarray(t.rho0, np.float64)
    ref = np.mean(-0.5 * (2 * LOG_2PI - 2 * math.log(0.5) + 0.5 * np.sum(rho0**2, -1)))
    np.testing.assert_allclose(float(m["logq_momentum"]), ref, rtol=1e-5)
    np.testing.assert_allclose(float(m["logdet"]), 0.5 * 2 * math.log(0.5), rtol=1e-6)
    # the CLI's evaluation uses the HVAE ELBO
    np.testing.assert_allclose(np.asarray(aet.evaluate.elbo(model, v, x, key, **kw)), per_ex, rtol=1e-6)


# --------------------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    "kw, exc, name",
    [
        (dict(K=0), ValueError, "`K`"),
        (dict(K=-2), ValueError, "`K`"),
        (dict(K=2.0), TypeError, "`K`"),
        (dict(eps=0.0), ValueError, "`eps`"),
        (dict(eps=-1e-3), ValueError, "`eps`"),
        (dict(eps=np.array([0.1, 0.0])), ValueError, "`eps`"),
        (dict(eps=np.array([0.1, 0.1, 0.1])), ValueError, "`eps`"),
        (dict(eps=np.ones((2, 2))), ValueError, "`eps`"),
        (dict(eps=float("nan")), ValueError, "`eps`"),
        (dict(beta0=0.0), ValueError, "`beta0`"),
        (dict(beta0=-0.3), ValueError, "`beta0`"),
        (dict(beta0=1.01), ValueError, "`beta0`"),
        (dict(tempering="quadratic"), TypeError, "`tempering`"),
        (dict(potential_grad=3), TypeError, "`potential_grad`"),
    ],
)
def test_bad_hyperparameters(small, kw, exc, name):
    for fn in (hvae.loss, hvae.elbo):
        with pytest.raises(exc, match=name):
            fn(small.model, small.v, small.x, jax.random.key(1), **kw)


def test_beta0_one_is_allowed_and_bad_data_refused(small):
    model, v, x = small.model, small.v, small.x
    assert np.isfinite(float(hvae.loss(model, v, x, jax.random.key(1), eps=0.05, beta0=1.0)))
    with pytest.raises(ValueError, match="`x`"):
        hvae.loss(model, v, x[:, :10], jax.random.key(1))
    with pytest.raises(ValueError, match="`x`"):
        hvae.loss(model, v, x.at[0, 0].set(jnp.nan), jax.random.key(1))
    with pytest.raises(TypeError, match="`key`"):
        hvae.loss(model, v, x, None)


# --------------------------------------------------------------------------- transformations


def test_check_grads_float64(small):
    """Reverse-mode gradients of the loss w.r.t. the parameters, a per-dimension ε and β₀
    (the paper learns ε and β₀ too) against finite differences, in float64."""
    key = jax.random.key(2)
    eps = np.array([0.2, 0.15])
    with jax.enable_x64(True):
        f = jax.jit(lambda params, e, b: hvae.loss(small.model, {"params": params}, small.x64, key, K=3, eps=e,
                                                  beta0=b))  # the loss is pure: jit it for the many evaluations
        args = (small.v64["params"], eps, np.float64(0.5))
        # central differences with step 1e-5: truncation error ~1e-8 here (5e-7 with the default 1e-4)
        check_grads(f, args, order=1, modes=["rev"], eps=1e-5, atol=1e-6, rtol=1e-6)
        g_eps, g_beta = jax.grad(f, argnums=(1, 2))(*args)
    assert np.all(np.abs(np.asarray(g_eps)) > 0) and abs(float(g_beta)) > 0  # both enter the loss


def test_jit_vmap_grad_float32_float64(small):
    """jit(vmap(loss)) over 3 batches equals the per-batch losses in float32 and float64;
    jit(grad) in float32 has the parameters' dtype and is finite and non-zero (the
    float64 gradient is checked against finite differences in test_check_grads_float64)."""
    model = small.model
    xs = jnp.concatenate([small.x, 1.0 - small.x, small.x[::-1]]).reshape(3, 6, 16)
    keys = jax.random.split(jax.random.key(4), 3)
    f = lambda var, x, k: hvae.loss(model, var, x, k, K=3, eps=0.1, beta0=0.3)
    for x64 in (False, True):
        dtype = jnp.float64 if x64 else jnp.float32
        v = small.v64 if x64 else small.v
        with jax.enable_x64(x64):
            xsd = np.asarray(xs, dtype)
            per = np.array([float(jax.jit(f)(v, xsd[i], keys[i])) for i in range(3)])
            vm = jax.jit(jax.vmap(f, in_axes=(None, 0, 0)))(v, xsd, keys)
            assert vm.dtype == dtype and vm.shape == (3,)
        np.testing.assert_allclose(np.asarray(vm), per, rtol=1e-10 if x64 else 1e-5)
    g = jax.jit(jax.grad(f))(small.v, xs[0], keys[0])
    assert all(leaf.dtype == jnp.float32 for leaf in jax.tree_util.tree_leaves(g))
    flat = np.concatenate([np.ravel(np.asarray(a)) for a in jax.tree_util.tree_leaves(g)])
    assert np.all(np.isfinite(flat)) and np.linalg.norm(flat) > 1e-3


def test_train_step_is_one_xla_computation_with_a_loop(small):
    """jit(step).lower(...) at batch 128: no host callbacks, the K steps are a while loop
    (the number of matrix products in the program does not grow with K)."""
    model, v = small.model, small.v
    x = make_data("bernoulli", 128, 16)
    opt = optax.adam(1e-3)
    state = aet.train.init_state(v, opt)

    def lowered_text(K):
        step = aet.train.make_step(functools.partial(hvae.loss, model, K=K), opt, jit=False)
        return jax.jit(step).lower(state, x, jax.random.key(0)).as_text()

    t3, t9 = lowered_text(3), lowered_text(9)
    for t in (t3, t9):
        assert "callback" not in t.lower()
        assert 'custom_call_target="xla_python' not in t
        assert "stablehlo.while" in t
    n3, n9 = t3.count("stablehlo.dot_general"), t9.count("stablehlo.dot_general")
    assert n3 > 0 and n3 == n9, (n3, n9)
    assert t3.count("stablehlo.while") == t9.count("stablehlo.while")


# --------------------------------------------------------------------------- training


# Measured (30 epochs, batch 64, Adam 3e-3, MLP 32, latent 2, K=3, ε=0.01, β₀=0.3), held-out
# ELBO averaged over 8 keys: seed 0: VAE −25.32, HVAE −25.39; seed 1: −25.67 / −25.54;
# seed 2: −25.23 / −25.28 (ε = 0.05, seed 0: HVAE −25.53). |HVAE − VAE| ≤ 0.2 nats, so
# TOL = 0.75 nats (~3 % of the ELBO) leaves a margin of ~0.55. A model that failed to learn
# sits near −42 (the ELBO after the first epoch); HVAE_FLOOR = −28 is 2.6 nats below the measured values.
EPOCHS = 30
TOL = 0.75
HVAE_FLOOR = -28.0


def test_training_on_digits_matches_vae(digits):
    """Same architecture, seed and budget: HVAE's held-out ELBO ≥ the VAE's − TOL."""
    train, val = digits
    enc = aet.JointGaussianLogEncoder(aet.MLP([32], final_activation=nn.relu), 2)
    dec = aet.BernoulliDecoder(aet.MLP([32], final_activation=nn.relu), 64)
    xv = jnp.asarray(val.x)
    kw = dict(K=3, eps=0.01, beta0=0.3)
    fit = functools.partial(aet.train.fit, key=jax.random.key(0), epochs=EPOCHS, batch_size=64,
                            progress=False, optimizer=optax.adam(3e-3))
    vae = aet.VAE(enc, dec)
    v_vae, _ = fit(vae, functools.partial(aet.vae.loss, vae), train)
    hv = aet.HVAE(enc, dec)
    v_hv, hist = fit(hv, functools.partial(hvae.loss, hv, **kw), train)
    keys = jax.random.split(jax.random.key(99), 8)
    # each ELBO compiled once for the 8 keys (op by op, the HVAE's scan is recompiled at every call)
    elbo_vae = jax.jit(functools.partial(aet.evaluate.elbo, vae))
    elbo_hv = jax.jit(functools.partial(aet.evaluate.elbo, hv, **kw))
    e_vae = float(np.mean([np.mean(elbo_vae(v_vae, xv, k)) for k in keys]))
    e_hv = float(np.mean([np.mean(elbo_hv(v_hv, xv, k)) for k in keys]))
    msg = f"held-out ELBO: HVAE {e_hv:.3f}, VAE {e_vae:.3f} (tolerance {TOL})"
    assert np.isfinite(e_hv) and np.isfinite(e_vae), msg
    assert e_hv >= e_vae - TOL, msg
    assert e_hv > HVAE_FLOOR, msg
    assert hist["train"]["elbo"][-1] > hist["train"]["elbo"][0] + 5.0, hist["train"]["elbo"]
