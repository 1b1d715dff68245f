"""RHVAE: metric, Hamiltonian, generalised leapfrog, ELBO, training, sampling.

Every check is against an independent reference: float64 NumPy re-implementations
of the paper's formulas (with finite-difference gradients for the leapfrog),
closed forms, scipy, ``jax.test_util.check_grads`` and the HVAE leapfrog.
"""
from __future__ import annotations

import functools
import math
import re

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import scipy.stats
from jax.flatten_util import ravel_pytree
from jax.test_util import check_grads

import aetk_jax as aet
from aetk_jax import rhvae

LOG_2PI = math.log(2 * math.pi)


# --------------------------------------------------------------------------- helpers


def tiny_model(d: int = 2, data_dim: int = 5, n_centroids: int = 4, T: float = 0.7, lam: float = 0.05):
    """A small RHVAE with smooth (tanh) networks and a Gaussian (σ = 1) decoder, so the
    NumPy reference below can re-implement its Hamiltonian exactly."""
    body = lambda: aet.MLP([6], final_activation=nn.tanh)  # noqa: E731
    enc = aet.JointGaussianLogEncoder(body(), d)
    dec = aet.SimpleGaussianDecoder(body(), data_dim)
    return aet.RHVAE(enc, dec, rhvae.MetricNetwork(body(), d), n_centroids, T, lam)


def _jit(fn, model, **kw):
    """``fn(model, variables, x, key, **kw)`` jitted (the public functions are pure and not jitted)."""
    return jax.jit(functools.partial(fn, model, **kw))


def random_metric(rng, n: int, d: int, scale: float = 1.0):
    c = scale * rng.standard_normal((n, d))
    A = rng.standard_normal((n, d, d))
    return c, A @ np.swapaxes(A, -1, -2) + 0.1 * np.eye(d)


def f64_variables(model, rng, batch: int = 3, data_dim: int = 5, metric=None):
    """float64 variables with a random stored metric, and a float64 batch x (call under x64)."""
    x = jnp.asarray(rng.standard_normal((batch, data_dim)))
    v = _init64(model, batch, data_dim)
    c, M = random_metric(rng, model.n_centroids, model.latent_dim) if metric is None else metric
    v = {**v, "metric": {**v["metric"], "centroids": jnp.asarray(c), "M": jnp.asarray(M)}}
    return v, x


@functools.lru_cache(maxsize=None)
def _init64(model, batch, data_dim):
    v = jax.jit(model.init)(jax.random.key(0), jnp.zeros((batch, data_dim), jnp.float64))
    return jax.tree_util.tree_map(lambda a: jnp.asarray(a, jnp.float64), v)


def np_ginv(z, c, M, T, lam):
    """G⁻¹(z) = Σᵢ Mᵢ exp(−‖z − cᵢ‖²/T²) + λI, one point at a time (float64)."""
    out = []
    for zb in np.atleast_2d(z):
        G = lam * np.eye(len(zb))
        for ci, Mi in zip(c, M):
            G = G + Mi * np.exp(-np.sum((zb - ci) ** 2) / T**2)
        out.append(G)
    return np.stack(out)


def np_dense(p, h):
    return h @ np.asarray(p["kernel"]) + np.asarray(p["bias"])


def np_hamiltonian(v, model, x, z, rho):
    """H(z, ρ) for the tiny model in NumPy: decoder μ = tanh(z W₀ + b₀) W + b, σ = 1."""
    p = v["params"]["decoder"]
    mu = np_dense(p["mu"], np.tanh(np_dense(p["body"]["dense_0"], z)))
    loglik = np.sum(-0.5 * (x - mu) ** 2 - 0.5 * LOG_2PI, axis=-1)
    d = z.shape[-1]
    logprior = -0.5 * (d * LOG_2PI + np.sum(z**2, -1))
    Gi = np_ginv(z, np.asarray(v["metric"]["centroids"]), np.asarray(v["metric"]["M"]), model.T, model.lam)
    logdetG = -np.linalg.slogdet(Gi)[1]
    quad = np.einsum("bi,bij,bj->b", rho, Gi, rho)
    return -loglik - logprior + 0.5 * (d * LOG_2PI + logdetG) + 0.5 * quad


def np_grad(f, a, h=1e-5):
    """Central finite differences of a per-example function f: (b, d) → (b,)."""
    g = np.zeros_like(a)
    for j in range(a.shape[1]):
        e = np.zeros_like(a)
        e[:, j] = h
        g[:, j] = (f(a + e) - f(a - e)) / (2 * h)
    return g


def np_general_leapfrog(H, z, rho, eps, n):
    """The paper's generalised leapfrog, each implicit equation by n fixed-point
    iterations from the base point; ∇H by finite differences (float64)."""
    gz = lambda zz, rr: np_grad(lambda a: H(a, rr), zz)  # noqa: E731
    grho = lambda zz, rr: np_grad(lambda a: H(zz, a), rr)  # noqa: E731
    rt = rho.copy()
    for _ in range(n):
        rt = rho - eps / 2 * gz(z, rt)
    g0 = grho(z, rt)
    zb = z.copy()
    for _ in range(n):
        zb = z + eps / 2 * (g0 + grho(zb, rt))
    return zb, rt - eps / 2 * gz(zb, rt)


# --------------------------------------------------------------------------- the metric

D3 = dict(d=3, n_centroids=5)  # the 3-D model (two off-diagonal layouts to check)


@functools.partial(jax.jit, static_argnums=0)
def _metric_parts(model, v, z, rho):
    Gi = rhvae.G_inv(model, v, z)
    return (Gi, rhvae.metric_tensor(model, v, z), rhvae.log_volume(model, v, z),
            rhvae.logdet_inverse(Gi), rhvae.riemannian_logprior(rho, Gi), jax.vmap(rhvae.metric_fn(model, v))(z))


def test_G_inv_metric_tensor_logdet_against_numpy(rng):
    with jax.enable_x64(True):
        model = tiny_model(**D3)
        v, _ = f64_variables(model, rng)
        c, M = np.asarray(v["metric"]["centroids"]), np.asarray(v["metric"]["M"])
        z, rho = rng.standard_normal((7, 3)), rng.standard_normal((7, 3))
        z[:2] = c[:2] + 60.0  # far from every centroid
        Gi, G, logvol, logdet_i, logp_rho, G_fn = map(np.asarray, _metric_parts(model, v, jnp.asarray(z),
                                                                             jnp.asarray(rho)))
        assert Gi.shape == (7, 3, 3) and Gi.dtype == np.float64
        np.testing.assert_allclose(Gi, np_ginv(z, c, M, model.T, model.lam), rtol=1e-12, atol=1e-14)
        np.testing.assert_array_equal(Gi, np.swapaxes(Gi, 1, 2))  # exactly symmetric
        assert np.min(np.linalg.eigvalsh(Gi)) >= model.lam * (1 - 1e-10)  # ≥ λ: positive-definite
        # far from every centroid only λI is left (the Gaussian weights underflow to 0)
        np.testing.assert_allclose(Gi[:2], np.broadcast_to(model.lam * np.eye(3), (2, 3, 3)), rtol=0, atol=1e-15)
        # G is the inverse; log det by Cholesky against LU (numpy.linalg.slogdet)
        np.testing.assert_allclose(G @ Gi, np.broadcast_to(np.eye(3), G.shape), atol=1e-11)
        np.testing.assert_allclose(logvol, 0.5 * np.linalg.slogdet(G)[1], rtol=1e-12)
        np.testing.assert_allclose(logdet_i, np.linalg.slogdet(Gi)[1], rtol=1e-12)
        # log N(ρ; 0, G(z)) against scipy with the explicit covariance
        ref = [scipy.stats.multivariate_normal(np.zeros(3), np.linalg.inv(g)).logpdf(r) for g, r in zip(Gi, rho)]
        np.testing.assert_allclose(logp_rho, ref, rtol=1e-11)
        # metric_fn (for aet.geometry): one point (d,) → (d, d), the same matrix
        np.testing.assert_allclose(G_fn, G, rtol=1e-12)
    # float32: still an inverse to single precision
    v32 = jax.tree_util.tree_map(lambda a: jnp.asarray(a, jnp.float32), v)
    Gi, G = _metric_parts(model, v32, jnp.asarray(z[2:], jnp.float32), jnp.asarray(rho[2:], jnp.float32))[:2]
    np.testing.assert_allclose(np.asarray(G @ Gi), np.broadcast_to(np.eye(3), G.shape), atol=2e-4)


def test_metric_network_and_update_metric_match_numpy(rng):
    with jax.enable_x64(True):
        model = tiny_model(**D3)
        v, _ = f64_variables(model, rng)
        xc = rng.standard_normal((5, 5))
        new = jax.jit(rhvae.update_metric, static_argnums=0)(model, v, jnp.asarray(xc))
        p = v["params"]
        # encoder means and L = vec_to_ltri(exp(diag), lower) re-implemented in NumPy
        h = np.tanh(np_dense(p["encoder"]["body"]["dense_0"], xc))
        np.testing.assert_allclose(np.asarray(new["metric"]["centroids"]), np_dense(p["encoder"]["mu"], h), rtol=1e-12)
        pm = p["metric_network"]
        out = np_dense(pm["ltri"], np.tanh(np_dense(pm["body"]["dense_0"], xc)))
        L = np.zeros((5, 3, 3))
        L[:, range(3), range(3)] = np.exp(out[:, :3])
        L[:, [1, 2, 2], [0, 0, 1]] = out[:, 3:]  # strict lower triangle, row by row
        np.testing.assert_allclose(np.asarray(new["metric"]["M"]), L @ np.swapaxes(L, 1, 2), rtol=1e-12)
        np.testing.assert_array_equal(np.asarray(new["metric"]["x"]), xc)
        assert v["metric"]["x"].shape == (5, 5)  # init made the collection from n_centroids


# --------------------------------------------------------------------------- Hamiltonian and leapfrog


@functools.partial(jax.jit, static_argnums=(0, 5))
def _step(model, v, x, z, rho, n, eps):
    """The loss's leapfrog step (split H = V + K) → (z̄, ρ̄, ρ̃), and the same step
    with the whole H passed as the kinetic part."""
    V, K = rhvae._energies(model, v, x, rhvae.stored_metric(model, v))
    grad_v = jax.grad(lambda a: jnp.sum(V(a)))
    zb, rb, _, rt, _ = rhvae._leapfrog_step(grad_v, K, z, rho, grad_v(z), eps, n)
    H = functools.partial(rhvae.hamiltonian, model, v, x)
    zb2, rb2 = rhvae.general_leapfrog(lambda a: jnp.zeros(a.shape[:-1], a.dtype), H, z, rho, eps, n)
    # residuals of the two implicit equations, with ∇_z H by jax.grad of the full H and G⁻¹ from G_inv
    r1 = rt - (rho - eps / 2 * jax.grad(lambda a: jnp.sum(H(a, rt)))(z))
    Gi = lambda a: rhvae.G_inv(model, v, a)  # noqa: E731
    r2 = zb - (z + eps / 2 * jnp.einsum("bij,bj->bi", Gi(z) + Gi(zb), rt))
    return zb, rb, zb2, rb2, jnp.max(jnp.abs(r1)), jnp.max(jnp.abs(r2)), H(z, rho)


def test_hamiltonian_and_leapfrog_match_numpy(rng):
    with jax.enable_x64(True):
        model = tiny_model()
        v, x = f64_variables(model, rng)
        z, rho = 0.5 * rng.standard_normal((3, 2)), rng.standard_normal((3, 2))
        eps = 0.1  # large enough that every term of the step matters
        zb, rb, zb2, rb2, _, _, H = map(np.asarray, _step(model, v, x, jnp.asarray(z), jnp.asarray(rho), 5, eps))
        H_np = lambda a, b: np_hamiltonian(v, model, np.asarray(x), a, b)  # noqa: E731
        np.testing.assert_allclose(H, H_np(z, rho), rtol=1e-12)
        z_ref, rho_ref = np_general_leapfrog(H_np, z, rho, eps, 5)
        assert np.max(np.abs(z_ref - z)) > 1e-2  # the step moves
        # finite differences (h = 1e-5) limit the agreement to ~1e-9
        np.testing.assert_allclose(zb, z_ref, atol=1e-8)
        np.testing.assert_allclose(rb, rho_ref, atol=1e-8)
        # the whole H passed as the "kinetic" part gives the same step
        np.testing.assert_allclose(zb2, zb, atol=1e-13)
        np.testing.assert_allclose(rb2, rb, atol=1e-13)


def test_fixed_points_are_reached_and_the_step_is_reversible(rng):
    with jax.enable_x64(True):
        model = tiny_model()
        v, x = f64_variables(model, rng)
        z, rho = jnp.asarray(0.5 * rng.standard_normal((3, 2))), jnp.asarray(rng.standard_normal((3, 2)))
        # defaults (ε = 1e-4, 5 iterations): both equations solved to rounding (measured 0.0)
        r1, r2 = map(float, _step(model, v, x, z, rho, 5, 1e-4)[4:6])
        assert r1 < 1e-13 and r2 < 1e-13, (r1, r2)
        # a 1000× larger step still converges in 5 iterations (measured 1.4e-7 and 4.7e-8)
        r1, r2 = map(float, _step(model, v, x, z, rho, 5, 0.1)[4:6])
        assert r1 < 1e-5 and r2 < 1e-5, (r1, r2)
        # reversibility: step, flip the momentum, step again → back to (z, −ρ)
        errs = {}
        for n in (5, 30):
            z1, r1_ = _step(model, v, x, z, rho, n, 0.1)[:2]
            z2, r2_ = _step(model, v, x, z1, -r1_, n, 0.1)[:2]
            errs[n] = max(float(jnp.max(jnp.abs(z2 - z))), float(jnp.max(jnp.abs(-r2_ - rho))))
        assert errs[30] < 1e-12, errs  # exact implicit solves: reversible to rounding (measured 0.0)
        assert errs[5] < 1e-5, errs  # 5 iterations at a large ε = 0.1 (measured 2.4e-7)
    # float32 at the defaults: residuals at single-precision rounding (measured 0.0)
    v32, x32, z32, rho32 = jax.tree_util.tree_map(lambda a: jnp.asarray(a, jnp.float32), (v, x, z, rho))
    r1, r2 = map(float, _step(model, v32, x32, z32, rho32, 5, 1e-4)[4:6])
    assert r1 < 1e-6 and r2 < 1e-6, (r1, r2)


def test_constant_metric_reduces_to_hvae_leapfrog(rng):
    with jax.enable_x64(True):
        model = tiny_model()  # λ = 0.05
        zeros = (np.zeros((4, 2)), np.zeros((4, 2, 2)))  # M = 0: G⁻¹ = λI everywhere
        v, x = f64_variables(model, rng, metric=zeros)
        z, rho = jnp.asarray(rng.standard_normal((3, 2))), jnp.asarray(rng.standard_normal((3, 2)))
        zb, rb = _step(model, v, x, z, rho, 5, 0.05)[:2]
        # H = U(z) + λ/2‖ρ‖² + const (mass I/λ): with ρ' = √λ ρ and ε' = √λ ε it is the
        # identity-mass leapfrog of the HVAE
        grad_u = lambda a: jax.grad(lambda b: jnp.sum(aet.hvae.potential_energy(model, v, x, b)))(a)  # noqa: E731
        s = math.sqrt(model.lam)
        zh, rh = jax.jit(aet.hvae.leapfrog, static_argnums=0)(grad_u, z, s * rho, s * 0.05)
        assert np.max(np.abs(np.asarray(zh - z))) > 1e-3  # the step moves
        np.testing.assert_allclose(np.asarray(zb), np.asarray(zh), rtol=1e-13, atol=1e-14)
        np.testing.assert_allclose(np.asarray(rb), np.asarray(rh) / s, rtol=1e-13, atol=1e-14)


# --------------------------------------------------------------------------- ELBO and loss


def test_elbo_tends_to_the_vae_elbo_as_eps_vanishes(rng):
    """With ε → 0 the flow is the identity up to tempering: z_K = z₀, ρ_K = √β₀ ρ₀ = γ,
    so the exact ELBO is log p(x|z₀) + log p(z₀) − log q(z₀|x) (any error in the
    momentum densities or the tempering Jacobian would leave an offset)."""
    with jax.enable_x64(True):
        model = tiny_model()
        v, x = f64_variables(model, rng, batch=4)
        ps = _jit(rhvae.phase_space, model, eps=1e-10, beta0=0.3)(v, x, jax.random.key(3))  # jitted: faster
        np.testing.assert_allclose(np.asarray(ps.zK), np.asarray(ps.z0), atol=1e-8)
        np.testing.assert_allclose(np.asarray(ps.rhoK), np.asarray(ps.gamma), atol=1e-8)
        # the reference, from the shared VAE pieces and float64 NumPy
        enc = model.apply(v, x, method="encode")
        z0 = np.asarray(ps.z0)
        mu, logsig = np.asarray(enc.mu), np.asarray(enc.logsigma)
        logq = np.sum(-0.5 * ((z0 - mu) / np.exp(logsig)) ** 2 - logsig - 0.5 * LOG_2PI, -1)
        logprior = -0.5 * np.sum(z0**2 + LOG_2PI, -1)
        loglik = np.asarray(aet.decoder_loglikelihood(model.decoder, x, model.apply(v, ps.z0, method="decode")))
        np.testing.assert_allclose(np.asarray(ps.elbo), loglik + logprior - logq, atol=1e-7)
        # the momentum terms cancel: log N(ρ_K; 0, G(z_K)) = log N(γ; 0, G(z₀)) when nothing moves,
        # and log N(γ; 0, G) = log N(ρ₀; 0, G/β₀) − ½·d·log β₀ = logq_momentum − logdet for β_K = 1
        np.testing.assert_allclose(np.asarray(ps.logdet), 0.5 * 2 * math.log(0.3), rtol=1e-12)
        np.testing.assert_allclose(np.asarray(ps.logp_momentum), np.asarray(ps.logq_momentum - ps.logdet),
                                   atol=1e-7)
        np.testing.assert_allclose(np.asarray(_jit(rhvae.elbo, model, eps=1e-10)(v, x, jax.random.key(3))),
                                   np.asarray(ps.elbo), rtol=1e-12)


def rising_to_4(beta0, k, K):
    """A linear schedule from β₀ up to β_K = 4."""
    return beta0 + (4.0 - beta0) * jnp.asarray(k) / K


def expected_tempering_shift(d: int, beta_K: float) -> float:
    """E[ELBO(β_K)] − E[ELBO(β_K = 1)] as ε → 0: ρ_K = γ/√β_K with γ ~ N(0, G(z₀)), so the
    per-example difference is −½(1/β_K − 1)·γᵀG⁻¹γ − ½·d·log β_K, and E[γᵀG⁻¹γ] = d."""
    return 0.5 * d * (1.0 - 1.0 / beta_K) - 0.5 * d * math.log(beta_K)


@pytest.mark.parametrize("scale", [1.0, 30.0])  # two different stored metrics
@pytest.mark.parametrize("sched, beta_K", [(aet.hvae.null_tempering, 0.3), (rising_to_4, 4.0)])
def test_elbo_shift_for_schedules_not_ending_at_one(rng, sched, beta_K, scale):
    """ε → 0: against ``quadratic_tempering`` (β_K = 1) with the same draws, the mean ELBO moves by
    ½d(1 − 1/β_K) − ½d·log β_K whatever the metric, to within a few Monte-Carlo standard errors.
    (Without the tempering's log-determinant it moves by ½d(1 − 1/β_K) only: 1.2 or 1.4 nats off.)"""
    with jax.enable_x64(True):
        model = tiny_model()
        v, _ = f64_variables(model, rng)
        v = {**v, "metric": {**v["metric"], "M": scale * v["metric"]["M"]}}
        x = jnp.asarray(np.tile(rng.standard_normal((4, 5)), (500, 1)))
        key = jax.random.key(4)
        kw = dict(eps=1e-9, beta0=0.3, metric_source="stored")
        ps = _jit(rhvae.phase_space, model, tempering=sched, **kw)(v, x, key)
        diff = np.asarray(ps.elbo) - np.asarray(_jit(rhvae.elbo, model, **kw)(v, x, key))
        np.testing.assert_allclose(np.asarray(ps.rhoK), np.asarray(ps.gamma) / math.sqrt(beta_K), atol=1e-6)
        np.testing.assert_allclose(np.asarray(ps.logdet), 0.5 * 2 * math.log(0.3 / beta_K), rtol=1e-12)
    se = diff.std(ddof=1) / math.sqrt(diff.size)
    assert abs(diff.mean() - expected_tempering_shift(2, beta_K)) < 4 * se, (diff.mean(), se)


class _Identity(nn.Module):
    @nn.compact
    def __call__(self, x):
        return x


def test_elbo_stays_below_the_exact_log_evidence_of_a_linear_gaussian_model():
    """p(z) = N(0, I), p(x|z) = N(Wz + b, I) with orthogonal columns of W, so log p(x) =
    log N(x; b, WWᵀ + I) and the exact posterior is diagonal; with q(z|x) the exact posterior
    and a schedule ending at β_K = 4 the RHVAE ELBO must stay below log p(x) on average
    (without the ½·d·log β_K term it exceeds it by about 0.75 nats)."""
    d, D, n = 2, 3, 4000
    w = np.array([1.5, 0.7])
    W = np.zeros((D, d))
    W[0, 0], W[1, 1] = w
    b = np.array([0.3, -0.2, 0.1])
    var = 1.0 / (1.0 + w**2)  # posterior variances
    enc = aet.JointGaussianLogEncoder(_Identity(), d)
    dec = aet.SimpleGaussianDecoder(_Identity(), D)
    model = aet.RHVAE(enc, dec, rhvae.MetricNetwork(_Identity(), d), 3, 0.8, 0.1)
    rng = np.random.default_rng(2)
    x = rng.standard_normal((n, D))
    with jax.enable_x64(True):
        v = _init64(model, 1, D)
        params = {
            "encoder": {"mu": {"kernel": jnp.asarray(W * var), "bias": jnp.asarray(-(b @ W) * var)},
                        "logsigma": {"kernel": jnp.zeros((D, d)), "bias": jnp.asarray(0.5 * np.log(var))}},
            "decoder": {"mu": {"kernel": jnp.asarray(W.T), "bias": jnp.asarray(b)}},
            "metric_network": v["params"]["metric_network"],
        }
        c, M = random_metric(np.random.default_rng(3), 3, d)
        v = {"params": params, "metric": {**v["metric"], "centroids": jnp.asarray(c), "M": jnp.asarray(M)}}
        elbo = np.asarray(rhvae.elbo(model, v, jnp.asarray(x), jax.random.key(0), eps=1e-3, beta0=0.3,
                                     tempering=rising_to_4, metric_source="stored"))
    logpx = scipy.stats.multivariate_normal(b, W @ W.T + np.eye(D)).logpdf(x)
    gap = elbo - logpx
    se = gap.std(ddof=1) / math.sqrt(n)
    assert gap.mean() + 4 * se < 0, (gap.mean(), se)


def test_loss_check_grads_float64(rng):
    with jax.enable_x64(True):
        model = tiny_model()
        v, x = f64_variables(model, rng, batch=4)
        flat, unravel = ravel_pytree(v["params"])
        key = jax.random.key(5)

        def f(p):
            return rhvae.loss(model, {**v, "params": unravel(p)}, x, key, eps=0.02)

        f = jax.jit(f)  # the loss is pure: jit it for the many evaluations

        value = f(flat)
        assert value.dtype == jnp.float64 and np.isfinite(float(value))
        check_grads(f, (flat,), order=1, modes=("rev",), atol=1e-5, rtol=1e-5)


def test_loss_vmap_jit_and_metric_sources(rng):
    with jax.enable_x64(True):
        model = tiny_model()
        v, _ = f64_variables(model, rng, batch=4)
        x = jnp.asarray(rng.standard_normal((3, 4, 5)))  # 3 batches of 4
        keys = jax.random.split(jax.random.key(1), 3)
        loss = functools.partial(rhvae.loss, model, eps=0.02)
        eager = jnp.stack([jax.jit(loss)(v, x[i], keys[i]) for i in range(3)])  # one jit per batch
        batched = jax.jit(jax.vmap(lambda xb, k: loss(v, xb, k)))(x, keys)  # vmap inside an outer jit
        np.testing.assert_allclose(np.asarray(batched), np.asarray(eager), rtol=1e-12)
        # when the stored centroid data is the batch itself, the Julia way ("centroids":
        # recompute cᵢ, Mᵢ from the stored data inside the loss) and the paper's ("batch")
        # build the same metric and give the same loss
        v2 = rhvae.update_metric(model, v, x[0])
        julia = loss(v2, x[0], keys[0], metric_source="centroids")
        np.testing.assert_allclose(float(julia), float(eager[0]), rtol=1e-12)


# --------------------------------------------------------------------------- training


@pytest.fixture(scope="module")
def trained(digits):
    train, _ = digits
    enc = aet.JointGaussianLogEncoder(aet.MLP([32], final_activation=nn.relu), 2)
    dec = aet.BernoulliDecoder(aet.MLP([32], final_activation=nn.relu), 64)
    met = rhvae.MetricNetwork(aet.MLP([32], final_activation=nn.relu), 2)
    model = aet.RHVAE(enc, dec, met, 32, 0.8, 1e-2)
    # ε = 1e-3: at ε = 3e-3 the untrained metric (a sum over the 128 batch centroids) leaves a
    # fixed-point residual of 1.05e-3 in the first update, above the default tolerance 1e-3, and fit stops
    loss = functools.partial(rhvae.loss, model, eps=0.001)
    variables, history = aet.train.fit(model, loss, train, key=jax.random.key(0), epochs=5, batch_size=128,
                                       optimizer=optax.adam(3e-3), progress=False)
    return model, variables, history, train


def test_fit_trains_and_learns_a_metric_that_grows_off_the_data(trained):
    model, variables, history, train = trained
    losses = history["train"]["loss"]
    # measured 45.9 → 30.3 over 5 epochs (ε = 1e-3); require a 5-nat fall
    assert losses[-1] < losses[0] - 5.0, losses
    # the stored metric was recomputed from training points chosen by fit
    xs = np.asarray(train.x)
    xc = np.asarray(variables["metric"]["x"])
    assert all(np.any(np.all(xs == row, axis=1)) for row in xc)
    np.testing.assert_allclose(np.asarray(variables["metric"]["centroids"]),
                               np.asarray(model.apply(variables, jnp.asarray(xc), method="encode").mu), rtol=1e-5)
    mu = np.asarray(model.apply(variables, jnp.asarray(xs), method="encode").mu)
    logvol_data = np.asarray(rhvae.log_volume(model, variables, jnp.asarray(mu)))
    # points 4 standard deviations beyond the codes' range, on a ring around them
    centre, sd = mu.mean(0), mu.std(0)
    radius = np.max(np.linalg.norm((mu - centre) / sd, axis=1)) + 4.0
    ang = np.linspace(0, 2 * np.pi, 64, endpoint=False)
    far = centre + radius * sd * np.stack([np.cos(ang), np.sin(ang)], 1)
    logvol_far = np.asarray(rhvae.log_volume(model, variables, jnp.asarray(far, jnp.float32)))
    assert np.all(logvol_far <= math.log(100.0) + 1e-4)  # G ≥ I/λ nowhere: √det G ≤ 1/λ = 100
    ratio = np.exp(np.min(logvol_far) - np.median(logvol_data))
    # measured 14.9 at ε = 3e-3 (min over the ring of √det G / median over the data); require 5
    assert ratio > 5.0, ratio


N_SAMPLES = 1000  # one compiled sampler (n is static) for both sampling tests


def test_samples_lie_where_the_learned_volume_is_small(trained):
    model, variables, _, train = trained
    s = aet.sample(model, variables, jax.random.key(4), N_SAMPLES)
    assert s.z.shape == (N_SAMPLES, 2) and s.x.shape == (N_SAMPLES, 64)
    assert np.all(np.isfinite(np.asarray(s.z)))
    mu = model.apply(variables, jnp.asarray(train.x), method="encode").mu
    lv_samples = np.asarray(rhvae.log_volume(model, variables, s.z))
    lv_data = np.asarray(rhvae.log_volume(model, variables, mu))
    # measured: median log √det G = 0.44 at the samples, −0.07 at the data codes and
    # log(1/λ) = 4.6 far away; 90% quantile at the samples 1.57
    assert np.median(lv_samples) < np.median(lv_data) + 1.5
    assert np.quantile(lv_samples, 0.9) < math.log(100.0) - 2.0


def test_sampler_matches_closed_form(trained):
    """All N centroids at c with Mᵢ = (m/N)·I: √det G⁻¹(z) = m·exp(−‖z − c‖²/T²) + λ (d = 2).
    With m = 10⁴ the floor λ = 0.01 carries ~10⁻⁵ of the mass inside the box, so the
    target is N(c, (T²/2)·I) up to a truncation at 3T = 4.2 standard deviations."""
    model, variables, _, _ = trained
    n, T = model.n_centroids, model.T
    c = np.array([0.5, -1.0], np.float32)
    metric = {**variables["metric"], "centroids": jnp.broadcast_to(jnp.asarray(c), (n, 2)),
              "M": jnp.broadcast_to(1e4 / n * jnp.eye(2), (n, 2, 2))}
    z = np.asarray(aet.sample(model, {**variables, "metric": metric}, jax.random.key(1), N_SAMPLES, margin=3.0).z)
    sd = T / math.sqrt(2)
    # Monte-Carlo tolerances: 5 standard errors of the mean and of the variance
    # (measured: mean off by ≤ 0.02 of 0.089 allowed, variance by ≤ 8% of 22%)
    np.testing.assert_allclose(z.mean(0), c, atol=5 * sd / math.sqrt(N_SAMPLES))
    np.testing.assert_allclose(z.var(0), sd**2, rtol=5 * math.sqrt(2 / N_SAMPLES))


def test_volume_sampler_matches_a_grid_reference(trained):
    """All centroids at c with Mᵢ = (m/N)·I (d = 2): G⁻¹(z) = (m·exp(−‖z − c‖²/T²) + λ)·I, so
    target="volume" samples p(z) ∝ √det G(z) = 1/(m·exp(−‖z − c‖²/T²) + λ) on the box and the
    default target its reciprocal. m = 0.1: a hole of radius ≈ T around c, 11× less dense than the
    rest. Each sampler's mean of ‖z − c‖² and mass within T of c against a 400×400 grid
    integration of its own density, and against the other's, which must be told apart."""
    model, variables, _, _ = trained
    n, T, lam, m, margin = model.n_centroids, model.T, model.lam, 0.1, 3.0
    c = np.array([0.5, -1.0], np.float32)
    v = {**variables, "metric": {**variables["metric"], "centroids": jnp.broadcast_to(jnp.asarray(c), (n, 2)),
                                 "M": jnp.broadcast_to(m / n * jnp.eye(2), (n, 2, 2))}}
    g = np.linspace(-margin * T, margin * T, 401)
    mid = 0.5 * (g[1:] + g[:-1])  # cell centres, offsets from c
    r2 = mid[:, None] ** 2 + mid[None, :] ** 2
    refs = {}
    for target, p in (("volume", 1.0 / (m * np.exp(-r2 / T**2) + lam)), ("inverse_volume", m * np.exp(-r2 / T**2) + lam)):
        p = p / p.sum()
        refs[target] = (float(np.sum(p * r2)), float(np.sum(p * (r2 < T**2))))
    for target, other in (("volume", "inverse_volume"), ("inverse_volume", "volume")):
        z = np.asarray(aet.sample(model, v, jax.random.key(2), N_SAMPLES, margin=margin, target=target).z)
        assert np.all(np.abs(z - c) <= margin * T + 1e-5)  # inside the box
        r2_s = np.sum((z - c) ** 2, axis=1)
        se = r2_s.std() / math.sqrt(N_SAMPLES)  # chains are independent, one draw each
        assert abs(r2_s.mean() - refs[target][0]) < 5 * se, (target, r2_s.mean(), refs[target])
        assert abs(r2_s.mean() - refs[other][0]) > 10 * se, (target, r2_s.mean(), refs[other])
        inner, frac = refs[target][1], float(np.mean(r2_s < T**2))
        assert abs(frac - inner) < 5 * math.sqrt(inner * (1 - inner) / N_SAMPLES), (target, frac, inner)
    with pytest.raises(ValueError, match="`target`"):
        aet.sample(model, variables, jax.random.key(2), 4, target="prior")


# --------------------------------------------------------------------------- compiled structure


def test_train_step_is_one_xla_computation_without_host_callbacks():
    enc = aet.JointGaussianLogEncoder(aet.MLP([32], final_activation=nn.relu), 2)
    dec = aet.BernoulliDecoder(aet.MLP([32], final_activation=nn.relu), 64)
    model = aet.RHVAE(enc, dec, rhvae.MetricNetwork(aet.MLP([32], final_activation=nn.relu), 2), 32, 0.8, 1e-2)
    x = jnp.zeros((128, 64))
    v = jax.jit(model.init)(jax.random.key(0), x)
    step = aet.train.make_step(functools.partial(rhvae.loss, model, K=3, n_fixed_point=5), optax.adam(1e-3))
    state = aet.train.init_state(v, optax.adam(1e-3))
    text = step.lower(state, x, jax.random.key(1)).as_text()
    assert text.count("func.func public @main") == 1
    assert "callback" not in text.lower()
    targets = set(re.findall(r'custom_call @([\w.]+)|call_target_name = "([\w.]+)"', text))
    names = {a or b for a, b in targets}
    assert all("lapack" in n or "cholesky" in n or "trsm" in n or "Sharding" in n for n in names), names


# --------------------------------------------------------------------------- convergence and gradient modes


@functools.partial(jax.jit, static_argnums=(0, 5))
def _step_info(model, v, x, z, rho, n, eps):
    """general_leapfrog's residuals, and the same relative residuals computed here
    from the two implicit equations (∇_z H by jax.grad of the full H, G⁻¹ from G_inv)."""
    H = functools.partial(rhvae.hamiltonian, model, v, x)
    zb, rb, info = rhvae.general_leapfrog(lambda a: jnp.zeros(a.shape[:-1], a.dtype), H, z, rho, eps, n,
                                          return_info=True)
    # ρ̃ is not returned: recover it from ρ̄ = ρ̃ − ε/2·∇_z H(z̄, ρ̃) by solving with many iterations
    rt = jax.lax.fori_loop(0, 200, lambda _, r: rho - eps / 2 * jax.grad(lambda a: jnp.sum(H(a, r)))(z), rho)
    return zb, rb, info, rt


def test_fixed_point_residuals_are_reported(rng):
    with jax.enable_x64(True):
        model = tiny_model()
        v, x = f64_variables(model, rng)
        z, rho = jnp.asarray(0.5 * rng.standard_normal((3, 2))), jnp.asarray(rng.standard_normal((3, 2)))
        norm = lambda a: np.linalg.norm(np.asarray(a), axis=-1)  # noqa: E731
        gi = lambda a: np.asarray(rhvae.G_inv(model, v, a))  # noqa: E731
        for n, eps in [(2, 0.1), (3, 0.3)]:
            zb, rb, info, _ = _step_info(model, v, x, z, rho, n, eps)
            assert info.rho.shape == info.z.shape == (3,)
            # the z equation's residual at z̄, from G⁻¹ directly: ‖z + ε/2 (G⁻¹(z) + G⁻¹(z̄)) ρ̃ − z̄‖ / ‖z̄ − z‖;
            # ρ̃ from n iterations (what the step used) is re-derived with general_leapfrog's own ρ map
            H = functools.partial(rhvae.hamiltonian, model, v, x)
            r = rho
            for _ in range(n):
                r = rho - eps / 2 * jax.grad(lambda a: jnp.sum(H(a, r)))(z)
            res_rho = norm(rho - eps / 2 * jax.grad(lambda a: jnp.sum(H(a, r)))(z) - r) / norm(r - rho)
            z_next = np.asarray(z) + eps / 2 * np.einsum("bij,bj->bi", gi(z) + gi(zb), np.asarray(r))
            res_z = norm(z_next - zb) / norm(zb - z)
            np.testing.assert_allclose(np.asarray(info.rho), res_rho, rtol=1e-6)
            np.testing.assert_allclose(np.asarray(info.z), res_z, rtol=1e-6)
            assert np.all(res_z > 1e-8)  # few iterations at a large step: a visible residual
        # the default 5 iterations at ε = 1e-4 converge to rounding
        _, _, info, _ = _step_info(model, v, x, z, rho, 5, 1e-4)
        assert float(jnp.max(info.max())) < 1e-9


def _divergent_setting(rng):
    """A tiny RHVAE whose stored metric makes ε·G⁻¹ large: the fixed points diverge."""
    model = tiny_model(lam=0.05)
    v, x = f64_variables(model, rng, batch=4)
    c, M = random_metric(rng, model.n_centroids, model.latent_dim, scale=0.3)
    v = {**v, "metric": {**v["metric"], "centroids": jnp.asarray(c), "M": 1e4 * jnp.asarray(M)}}
    return model, v, x


def test_non_convergent_fixed_points_give_nan_and_are_reported(rng):
    with jax.enable_x64(True):
        model, v, x = _divergent_setting(rng)
        key = jax.random.key(3)
        kw = dict(eps=0.05, metric_source="stored")
        ps = _jit(rhvae.phase_space, model, **kw)(v, x, key)
        res = np.asarray(ps.fixed_point_residual)
        assert np.any(res > 0.5), res  # the iteration does not contract
        elbo = np.asarray(_jit(rhvae.elbo, model, **kw)(v, x, key))
        np.testing.assert_array_equal(np.isnan(elbo), res > 0.5)  # NaN exactly where unconverged
        value, m = _jit(rhvae.loss, model, aux=True, **kw)(v, x, key)
        assert np.isnan(float(value)) and float(m["converged"]) == 0.0
        assert float(m["fixed_point_residual"]) == pytest.approx(float(res.max()))
        # a small ε converges
        value, m = _jit(rhvae.loss, model, aux=True, eps=1e-6, metric_source="stored")(v, x, key)
        assert np.isfinite(float(value)) and float(m["converged"]) == 1.0 and float(m["fixed_point_residual"]) < 1e-6


def _strong_metric_setting(rng, n: int = 64):
    """The tiny RHVAE with a stored metric 30× the random one: fixed points converge for
    small ε·n and not for large, and a batch of n start points (z, ρ)."""
    model = tiny_model()
    v, _ = f64_variables(model, rng, batch=4)
    c, M = random_metric(rng, model.n_centroids, model.latent_dim, scale=0.5)
    v = {**v, "metric": {**v["metric"], "centroids": jnp.asarray(c), "M": 30 * jnp.asarray(M)}}
    x = jnp.asarray(rng.standard_normal((n, 5)))
    z, rho = jnp.asarray(0.5 * rng.standard_normal((n, 2))), jnp.asarray(2 * rng.standard_normal((n, 2)))
    return model, v, x, z, rho


@functools.partial(jax.jit, static_argnums=(0, 6))
def _step_logdet(model, v, x, z, rho, eps, n):
    """Per example: log|det ∂(z̄, ρ̄)/∂(z, ρ)| of the step as computed (jacfwd) and its residual."""

    def one(xi, zr):
        H = functools.partial(rhvae.hamiltonian, model, v, xi[None])

        def step(s):
            zb, rb, info = rhvae.general_leapfrog(lambda a: jnp.zeros(a.shape[:-1]), H, s[None, :2], s[None, 2:],
                                                  eps, n, return_info=True)
            return jnp.concatenate([zb[0], rb[0]]), info.max()[0]

        jac, res = jax.jacfwd(step, has_aux=True)(zr)
        return jnp.linalg.slogdet(jac)[1], res

    return jax.vmap(one)(x, jnp.concatenate([z, rho], axis=-1))


def test_default_fixed_point_tol_bounds_the_volume_error(rng):
    """An exactly solved step is symplectic (log|det J| = 0, what the ELBO assumes); below the
    default tolerance the computed step's |log det J| stays under 0.03 nats, while steps the old
    default (0.5) accepted were off by more than a nat (benchmarks/fixed_point_tolerance.py)."""
    import inspect

    tol = inspect.signature(rhvae.loss).parameters["fixed_point_tol"].default
    assert tol == inspect.signature(rhvae.elbo).parameters["fixed_point_tol"].default == rhvae.FIXED_POINT_TOL
    with jax.enable_x64(True):
        model, v, x, z, rho = _strong_metric_setting(rng)
        out = [_step_logdet(model, v, x, z, rho, eps, n) for eps in (0.003, 0.01, 0.03) for n in (1, 2, 3, 5)]
    logdet = np.abs(np.concatenate([np.asarray(o[0]) for o in out]))
    res = np.concatenate([np.asarray(o[1]) for o in out])
    # the exactly solved step (many iterations at a small ε): volume-preserving to rounding
    with jax.enable_x64(True):
        ld_exact, res_exact = map(np.asarray, _step_logdet(model, v, x, z, rho, 0.003, 20))
    solved = res_exact < 1e-9
    assert solved.sum() > 32 and np.abs(ld_exact[solved]).max() < 1e-8
    below = res <= tol
    assert below.sum() > 100 and (~below).sum() > 100
    assert logdet[below].max() < 0.03, logdet[below].max()
    assert np.max(logdet[(res <= 0.5) & ~below]) > 1.0


def test_a_step_with_residual_above_the_default_tolerance_is_flagged(rng):
    """Residuals between the default tolerance and the old default 0.5: NaN ELBO, converged 0."""
    with jax.enable_x64(True):
        model, v, x, _, _ = _strong_metric_setting(rng, n=16)
        key = jax.random.key(1)
        kw = dict(eps=0.01, n_fixed_point=2, metric_source="stored")
        res = np.asarray(_jit(rhvae.phase_space, model, **kw)(v, x, key).fixed_point_residual)
        flagged = res > rhvae.FIXED_POINT_TOL
        assert np.any(flagged & (res < 0.5)) and np.any(~flagged), res
        elbo = np.asarray(_jit(rhvae.elbo, model, **kw)(v, x, key))
        np.testing.assert_array_equal(np.isnan(elbo), flagged)
        value, m = _jit(rhvae.loss, model, aux=True, **kw)(v, x, key)
        assert np.isnan(float(value)) and float(m["converged"]) == 0.0
        assert float(m["fixed_point_residual"]) == pytest.approx(float(res.max()))


def test_fit_stops_on_a_non_convergent_fixed_point(rng):
    model, v, x = _divergent_setting(rng)
    v = jax.tree_util.tree_map(lambda a: jnp.asarray(a, jnp.float32), v)
    x = jnp.asarray(np.tile(np.asarray(x, np.float32), (8, 1)))
    loss = functools.partial(rhvae.loss, model, eps=0.05, metric_source="stored")
    with pytest.raises(aet.train.NonFiniteError, match="fixed-point iterations did not converge") as err:
        aet.train.fit(model, loss, x, key=jax.random.key(0), epochs=1, batch_size=8, variables=v, progress=False)
    assert err.value.step == 0 and err.value.terms["converged"] == 0.0


def test_detached_flow_gradient(rng):
    """Same value; the decoder's gradient is then that of log p(x|z_K) at a fixed z_K."""
    with jax.enable_x64(True):
        model = tiny_model()
        v, x = f64_variables(model, rng)
        key = jax.random.key(5)
        kw = dict(eps=0.05, K=2)
        # each loss compiled once, with its gradient (a forward-only compile as well would double the cost)
        full = jax.jit(jax.value_and_grad(lambda p: rhvae.loss(model, {**v, "params": p}, x, key, **kw)))
        det = jax.jit(jax.value_and_grad(
            lambda p: rhvae.loss(model, {**v, "params": p}, x, key, flow_gradient="detached", **kw)))
        (value_det, g_det), (value_full, g_full) = det(v["params"]), full(v["params"])
        assert float(value_det) == pytest.approx(float(value_full), rel=1e-13)
        zK = jax.jit(functools.partial(rhvae.phase_space, model, **kw))(v, x, key).zK

        def ref(p):  # only the likelihood at the (constant) end point depends on the decoder
            return -jnp.mean(aet.base.loglikelihood(model, {**v, "params": p}, x, zK))

        g_det, g_full = g_det["decoder"], g_full["decoder"]
        g_ref = jax.jit(jax.grad(ref))(v["params"])["decoder"]
        flat = lambda t: ravel_pytree(t)[0]  # noqa: E731
        np.testing.assert_allclose(flat(g_det), flat(g_ref), rtol=1e-10, atol=1e-12)
        assert np.max(np.abs(flat(g_full) - flat(g_ref))) > 1e-6  # the full gradient also goes through the flow


def test_fit_checks_n_centroids_before_training(rng, tmp_path):
    enc = aet.JointGaussianLogEncoder(aet.MLP([4]), 2)
    dec = aet.BernoulliDecoder(aet.MLP([4]), 5)
    model = aet.RHVAE(enc, dec, rhvae.MetricNetwork(aet.MLP([4]), 2), 16)
    x = jnp.asarray(rng.uniform(size=(12, 5)) > 0.5, jnp.float32)
    calls = []
    with pytest.raises(ValueError, match="n_centroids"):
        aet.train.fit(model, functools.partial(rhvae.loss, model), x, key=jax.random.key(0), epochs=2,
                      batch_size=4, checkpoint_dir=str(tmp_path), callbacks=[lambda *a: calls.append(a)],
                      progress=False)
    assert calls == [] and list(tmp_path.iterdir()) == []  # no epoch ran


# --------------------------------------------------------------------------- float32 hazards


def test_metric_network_diagonal_is_finite_at_large_pre_activations():
    """exp(v) up to the cap (identical values), its tangent line beyond: exp(89) was inf in float32."""
    v = jnp.asarray([-5.0, 0.0, 3.0, 9.5, 10.0, 10.5, 89.0, 1e4], jnp.float32)
    out = np.asarray(rhvae.capped_exp(v, 10.0))
    assert np.all(np.isfinite(out)) and np.all(out > 0)
    np.testing.assert_allclose(out[:5], np.exp(np.asarray(v[:5], np.float64)), rtol=1e-6)
    np.testing.assert_allclose(out[5:], np.exp(10.0) * (1.0 + np.asarray(v[5:], np.float64) - 10.0), rtol=1e-6)
    g = np.asarray(jax.vmap(jax.grad(lambda a: rhvae.capped_exp(a, 10.0)))(v))
    assert np.all(np.isfinite(g)) and np.all(g > 0)  # never a zero gradient: the optimiser can come back
    # the network: a dense head whose diagonal pre-activations are 89 gives a finite factor
    net = rhvae.MetricNetwork(_Identity(), 2)
    x = jnp.ones((1, 3), jnp.float32)
    params = {"params": {"ltri": {"kernel": jnp.zeros((3, 3)), "bias": jnp.asarray([89.0, 3.0, 0.5])}}}
    L = np.asarray(net.apply(params, x))[0]
    assert np.all(np.isfinite(L)) and L[0, 0] == pytest.approx(np.exp(10.0) * 80.0, rel=1e-6)
    assert L[1, 1] == pytest.approx(math.exp(3.0), rel=1e-6) and L[1, 0] == pytest.approx(0.5)


@pytest.mark.parametrize("l11, lam", [(1.0, 1e-7), (1.0, 1e-8), (10.0, 1e-6), (10.0, 1e-8)])
def test_logdet_of_a_near_rank_1_inverse_metric_is_finite_in_float32(l11, lam):
    """G⁻¹ = L Lᵀ + λI with L = [[l11, 0], [30, 1e-6]] (det M = l11²·1e-12) and a tiny λ: the
    float32 Cholesky gave NaN; the pivoted, λ-floored one is finite and within 0.15 of float64."""
    L = np.array([[l11, 0.0], [30.0, 1e-6]], np.float32)
    c = jnp.zeros((1, 2), jnp.float32)
    metric = rhvae.Metric(c, jnp.asarray(L @ L.T)[None], 0.8, np.float32(lam))
    z = jnp.zeros((3, 2), jnp.float32) + jnp.asarray([[0.0], [0.1], [0.3]], jnp.float32)
    ginv = rhvae.inverse_metric(metric, z)
    old = 2 * jnp.sum(jnp.log(jnp.diagonal(jnp.linalg.cholesky(ginv), axis1=-2, axis2=-1)), -1)
    assert np.any(np.isnan(np.asarray(old)))  # the hazard
    new = np.asarray(rhvae.logdet_inverse(ginv, metric.lam))
    L64 = L.astype(np.float64)
    w = np.exp(-np.sum(np.asarray(z, np.float64) ** 2, -1) / 0.8**2)
    ref = [np.linalg.slogdet(wi * (L64 @ L64.T) + float(np.float32(lam)) * np.eye(2))[1] for wi in w]
    assert np.all(np.isfinite(new))
    # at the centroid (weight 1) the rounding leaves the last pivot at or below λ and the floor
    # gives it back; elsewhere float32 cannot hold eigenvalues below ~ε_mach·‖G⁻¹‖ and the error
    # stays within the documented log(1 + 4·ε_mach·‖G⁻¹‖/λ)
    assert abs(new[0] - ref[0]) < 0.15, (new[0], ref[0])
    bound = np.log1p(4 * np.finfo(np.float32).eps * np.linalg.norm(L64 @ L64.T) / lam)
    assert np.all(np.abs(new - ref) < bound), (new, ref, bound)


def test_pivoted_logdet_matches_lu_and_has_exact_gradients():
    """Ordinary positive-definite matrices: the pivoted log-determinant equals LU's (float64) and
    its first and second derivatives pass check_grads (the full flow gradient needs both)."""
    with jax.enable_x64(True):
        A = np.random.default_rng(0).standard_normal((3, 4, 4))
        A = A @ np.swapaxes(A, 1, 2) + 0.1 * np.eye(4)
        np.testing.assert_allclose(np.asarray(rhvae.logdet_inverse(jnp.asarray(A), 0.1)),
                                   np.linalg.slogdet(A)[1], rtol=1e-12)
        check_grads(lambda a: rhvae.logdet_inverse(a, 0.1), (jnp.asarray(A),), order=2, modes=("rev",))


# --------------------------------------------------------------------------- bad input


def test_bad_input_raises_value_error_naming_the_argument(rng):
    enc = aet.JointGaussianLogEncoder(aet.MLP([4]), 2)
    dec = aet.BernoulliDecoder(aet.MLP([4]), 5)
    met = rhvae.MetricNetwork(aet.MLP([4]), 2)
    for kw, name in [(dict(T=0.0), "T"), (dict(T=-1.0), "T"), (dict(lam=-0.1), "lam"), (dict(lam=0.0), "lam")]:
        with pytest.raises(ValueError, match=f"`{name}`"):
            aet.RHVAE(enc, dec, met, 4, **kw)
    with pytest.raises(ValueError, match="n_centroids"):
        aet.RHVAE(enc, dec, met, 0)
    model = aet.RHVAE(enc, dec, met, 4)
    x = jnp.asarray(rng.uniform(size=(3, 5)), jnp.float32)
    v = jax.jit(model.init)(jax.random.key(0), x)
    with pytest.raises(ValueError, match="n_centroids"):  # 4 centroids from 3 points
        rhvae.update_metric(model, v, x)
    trainer = aet.train.make_trainer(model, functools.partial(rhvae.loss, model), optax.adam(1e-3))
    with pytest.raises(ValueError, match="n_centroids"):  # what fit runs after each epoch
        trainer.end_epoch(trainer.init(v), x)
    key = jax.random.key(1)
    for kw, name in [(dict(K=0), "K"), (dict(eps=0.0), "eps"), (dict(eps=-1e-3), "eps"),
                     (dict(beta0=0.0), "beta0"), (dict(beta0=1.5), "beta0"), (dict(n_fixed_point=0), "n_fixed_point"),
                     (dict(flow_gradient="none"), "flow_gradient"), (dict(fixed_point_tol=0.0), "fixed_point_tol")]:
        with pytest.raises(ValueError, match=f"`{name}`"):
            rhvae.loss(model, v, x, key, **kw)
        with pytest.raises(ValueError, match=f"`{name}`"):
            rhvae.elbo(model, v, x, key, **kw)
