"""Latent-space geometry: pullback metrics against finite differences, curve
length/energy against closed forms and NumPy quadrature, and fitted geodesics
against the straight line (Euclidean) and the Poincaré half-plane's distance."""
from __future__ import annotations

import functools
import os
import subprocess
import sys

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.flatten_util import ravel_pytree
from scipy import integrate

import aetk_jax as aet
from aetk_jax import geometry as geo
from aetk_jax import geometry_plots as gplots

# Metric functions at module level, so each fit_geodesic program compiles once per module.


def euclidean(z):
    return jnp.eye(z.shape[0], dtype=z.dtype)


def poincare(z):
    """The hyperbolic half-plane, G = I / y²."""
    return jnp.eye(2, dtype=z.dtype) / z[1] ** 2


def poincare_distance(a, b) -> float:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.arccosh(1.0 + np.sum((a - b) ** 2) / (2.0 * a[1] * b[1])))


def central_jacobian(f, z, h=1e-6):
    """(m, d) Jacobian of f (flattened) at z by central differences, float64 NumPy."""
    z = np.asarray(z, np.float64)
    E = h * np.eye(z.shape[0])
    vals = np.asarray(jax.jit(jax.vmap(lambda x: jnp.ravel(f(x))))(jnp.asarray(np.concatenate([z + E, z - E]))))
    d = z.shape[0]
    return ((vals[:d] - vals[d:]) / (2 * h)).T


# ----------------------------------------------------------------------------- pullback metrics


def test_pullback_metric_linear_is_AtA_both_modes():
    rng = np.random.default_rng(0)
    with jax.enable_x64(True):
        for m, d in [(5, 3), (2, 4)]:  # m ≥ d (jacfwd) and m < d (jacrev)
            A = rng.normal(size=(m, d))
            z = jnp.asarray(rng.normal(size=d))
            Gs = jax.jit(
                lambda z: [geo.pullback_metric(lambda z: jnp.asarray(A) @ z, z, mode=m) for m in ("auto", "fwd", "rev")]
            )(z)
            for G in Gs:
                assert G.shape == (d, d)
                np.testing.assert_allclose(np.asarray(G), A.T @ A, rtol=1e-12, atol=1e-12)


def test_pullback_metric_picks_jacfwd_or_jacrev_by_shape(monkeypatch):
    calls = []
    real_fwd, real_rev = jax.jacfwd, jax.jacrev
    monkeypatch.setattr(jax, "jacfwd", lambda f: (calls.append("fwd"), real_fwd(f))[1])
    monkeypatch.setattr(jax, "jacrev", lambda f: (calls.append("rev"), real_rev(f))[1])
    geo.pullback_metric(lambda z: jnp.concatenate([z, z, z]), jnp.ones(2))  # m = 6 ≥ d = 2
    geo.pullback_metric(lambda z: jnp.sum(z**2, keepdims=True), jnp.ones(3))  # m = 1 < d = 3
    assert calls == ["fwd", "rev"]


def _nonlinear(seed, m, d):
    rng = np.random.default_rng(seed)
    W1, b1, W2 = rng.normal(size=(7, d)), rng.normal(size=7), rng.normal(size=(m, 7))

    def f(z):
        return jnp.tanh(jnp.asarray(W2) @ jnp.tanh(jnp.asarray(W1) @ z + jnp.asarray(b1))) + 0.1 * z[0] * z[-1]

    return f


def test_pullback_metric_nonlinear_matches_finite_differences():
    with jax.enable_x64(True):
        for m, d in [(6, 3), (2, 4)]:
            f = _nonlinear(1, m, d)
            z = jnp.asarray(np.random.default_rng(2).normal(size=d))
            J = central_jacobian(f, z)
            G_ref = J.T @ J
            Gs = jax.jit(lambda z: [geo.pullback_metric(f, z, mode=m) for m in ("fwd", "rev", "auto")])(z)
            for G in Gs:
                np.testing.assert_allclose(np.asarray(G), G_ref, rtol=1e-7, atol=1e-9)
            # batches by vmap
            Z = jnp.asarray(np.random.default_rng(3).normal(size=(4, d)))
            Gb = jax.jit(jax.vmap(lambda z: geo.pullback_metric(f, z)))(Z)
            for i in (0, 3):
                Ji = central_jacobian(f, Z[i])
                np.testing.assert_allclose(np.asarray(Gb[i]), Ji.T @ Ji, rtol=1e-7, atol=1e-9)


def test_expected_pullback_metric_of_gaussian_decoder():
    with jax.enable_x64(True):
        mean_fn = _nonlinear(4, 5, 2)
        raw = _nonlinear(5, 5, 2)

        def sigma_fn(z):
            return jax.nn.softplus(raw(z))

        z = jnp.asarray([0.3, -0.7])
        Jm, Js = central_jacobian(mean_fn, z), central_jacobian(sigma_fn, z)
        G = np.asarray(jax.jit(lambda z: geo.expected_pullback_metric(mean_fn, sigma_fn, z))(z))
        np.testing.assert_allclose(G, Jm.T @ Jm + Js.T @ Js, rtol=1e-7, atol=1e-9)
        # the σ term is positive semi-definite and not negligible here
        assert np.linalg.eigvalsh(Js.T @ Js).max() > 1e-2


def test_decoder_metric_fn_matches_finite_differences():
    """The expected metric of log-σ and σ Gaussian decoders and JᵀJ of a Bernoulli decoder's
    probabilities, against central differences of the decoder outputs (float64)."""
    body = aet.MLP([8], activation=nn.tanh, final_activation=nn.tanh)
    decoders = [aet.JointGaussianLogDecoder(body, 5), aet.JointGaussianDecoder(body, 5), aet.BernoulliDecoder(body, 5)]
    enc = aet.JointGaussianLogEncoder(aet.MLP([8], final_activation=nn.tanh), 2)
    models = [aet.VAE(enc, dec) for dec in decoders]
    variables = jax.jit(lambda k: [m.init(k, jnp.ones((1, 5))) for m in models])(jax.random.key(7))
    with jax.enable_x64(True):
        z = jnp.asarray([0.4, -1.1])
        Gs = jax.jit(lambda z: [geo.decoder_metric_fn(m, v)(z) for m, v in zip(models, variables)])(z)

        def outputs(z):  # the quantities whose Jacobians enter each metric, concatenated
            o = [m.apply(v, z[None], method="decode") for m, v in zip(models, variables)]
            return jnp.concatenate(
                [o[0].mu[0], jnp.exp(o[0].logsigma[0]), o[1].mu[0], o[1].sigma[0], jax.nn.sigmoid(o[2].logits[0])]
            )

        J = central_jacobian(outputs, z)
        refs = [J[:10].T @ J[:10], J[10:20].T @ J[10:20], J[20:].T @ J[20:]]
        for G, G_ref in zip(Gs, refs):
            np.testing.assert_allclose(np.asarray(G), G_ref, rtol=1e-6, atol=1e-9)
        # the σ terms matter: without them the Gaussian metrics differ
        assert np.abs(refs[0] - J[:5].T @ J[:5]).max() > 1e-3


# ----------------------------------------------------------------------------- curves


def parabola(p, t):
    return p["a"] + p["b"] * t[:, None] + p["c"] * t[:, None] ** 2


def _random_params(module, t, seed, scale, replace=False):
    """Parameters of ``module`` perturbed (or replaced) by N(0, scale²) noise, in one jitted call."""

    @jax.jit
    def make(key):
        k1, k2 = jax.random.split(key)
        flat, unravel = ravel_pytree(module.init(k1, t))
        noise = scale * jax.random.normal(k2, flat.shape, flat.dtype)
        return unravel(noise if replace else flat + noise)

    return make(jax.random.key(seed))


def test_curve_velocity_of_a_parabola_is_exact():
    rng = np.random.default_rng(0)
    p = {k: jnp.asarray(rng.normal(size=3), jnp.float32) for k in "abc"}
    t = jnp.linspace(0.0, 1.0, 11)
    v = geo.curve_velocity(parabola, p, t)
    ref = np.asarray(p["b"])[None] + 2 * np.asarray(p["c"])[None] * np.asarray(t)[:, None]
    assert v.shape == (11, 3)
    np.testing.assert_allclose(np.asarray(v), ref, rtol=1e-6, atol=1e-6)


def test_neural_geodesic_velocity_matches_finite_differences():
    with jax.enable_x64(True):
        z0, z1 = jnp.asarray([0.0, 1.0]), jnp.asarray([2.0, -1.0])
        m = geo.NeuralGeodesic((8, 8), z0, z1)
        t = jnp.linspace(0.05, 0.95, 7)
        p = _random_params(m, t, 0, 0.5)
        h = 1e-6
        apply = jax.jit(m.apply)
        ref = (np.asarray(apply(p, t + h)) - np.asarray(apply(p, t - h))) / (2 * h)
        v = jax.jit(lambda p, t: geo.curve_velocity(m.apply, p, t))(p, t)
        np.testing.assert_allclose(np.asarray(v), ref, rtol=1e-7, atol=1e-8)


def test_neural_geodesic_end_points_are_exact_for_random_params():
    z0, z1 = jnp.asarray([-1.3, 0.7, 2.0]), jnp.asarray([0.4, -2.2, 1.1])
    m = geo.NeuralGeodesic((16, 16), z0, z1)
    t = jnp.linspace(0.0, 1.0, 20)
    apply = jax.jit(lambda p: (m.apply(p, t), m.apply(p, jnp.asarray(0.0)), m.apply(p, jnp.asarray(1.0))))
    a, b, tn = np.asarray(z0), np.asarray(z1), np.asarray(t)[:, None]
    for seed in range(3):
        # large random parameters: g(0), g(1) far from zero and from each other
        c, c_0, c_1 = (np.asarray(v) for v in apply(_random_params(m, t, seed, 3.0, replace=True)))
        assert c.shape == (20, 3) and c_0.shape == c_1.shape == (3,)
        assert np.abs(c - ((1 - tn) * a + tn * b)).max() > 0.1  # the curve does bend
        for got, want in [(c[0], a), (c[-1], b), (c_0, a), (c_1, b)]:
            np.testing.assert_allclose(got, want, rtol=0, atol=1e-6)


def _h2_geodesic(c, R, s0, s1):
    """A unit-speed-in-s hyperbolic geodesic (semicircle centre (c, 0), radius R),
    γ(t) = (c + R tanh s, R / cosh s), s = s0 + t (s1 − s0): constant speed |s1 − s0|."""

    def curve(p, t):
        s = s0 + t * (s1 - s0)
        return jnp.stack([c + R * jnp.tanh(s), R / jnp.cosh(s)], axis=-1)

    return curve


def test_length_and_energy_of_the_analytic_poincare_geodesic():
    with jax.enable_x64(True):
        curve = _h2_geodesic(0.5, 2.0, -1.2, 0.8)
        t = jnp.linspace(0.0, 1.0, 101)
        z = np.asarray(curve(None, t))
        d = poincare_distance(z[0], z[-1])
        L, E = (float(v) for v in jax.jit(
            lambda t: (geo.curve_length(poincare, curve, None, t), geo.curve_energy(poincare, curve, None, t))
        )(t))
        assert abs(d - 2.0) < 1e-12  # independent check of the parameterisation
        np.testing.assert_allclose(L, d, rtol=1e-12)
        np.testing.assert_allclose(E, L**2 / 2, rtol=1e-12)  # constant speed: equality


def test_length_energy_normalisation_is_the_documented_trapezoid_rule():
    with jax.enable_x64(True):
        rng = np.random.default_rng(1)
        p = {k: jnp.asarray(rng.normal(size=2) + [0.0, 3.0 if k == "a" else 0.0]) for k in "abc"}
        t = jnp.asarray(np.sort(rng.uniform(0.1, 0.9, size=13)))  # non-uniform, duration < 1
        z = np.asarray(parabola(p, t))
        assert z[:, 1].min() > 0.5  # inside the half-plane
        v = np.asarray(p["b"])[None] + 2 * np.asarray(p["c"])[None] * np.asarray(t)[:, None]
        q = np.sum(v**2, axis=1) / z[:, 1] ** 2  # γ̇ᵀ G γ̇ for G = I / y²
        L_ref = np.trapezoid(np.sqrt(q), np.asarray(t))
        E_ref = 0.5 * np.trapezoid(q, np.asarray(t))
        line = {"a": jnp.asarray([1.0, 2.0]), "b": jnp.asarray([3.0, -1.0]), "c": jnp.zeros(2)}

        @jax.jit
        def values(p, line, t):
            return (
                geo.curve_length(poincare, parabola, p, t),
                geo.curve_energy(poincare, parabola, p, t),
                geo.geodesic_loss(poincare, parabola, p, t),
                geo.geodesic_loss(poincare, parabola, p, t, objective="length"),
                geo.curve_length(euclidean, parabola, line, t),
                geo.curve_energy(euclidean, parabola, line, t),
            )

        L, E, loss_e, loss_l, Ll, El = (float(v) for v in values(p, line, t))
        np.testing.assert_allclose(L, L_ref, rtol=1e-12)
        np.testing.assert_allclose(E, E_ref, rtol=1e-12)
        np.testing.assert_allclose(loss_e, E, rtol=1e-12)
        np.testing.assert_allclose(loss_l, L, rtol=1e-12)
        T = float(t[-1] - t[0])
        # Cauchy–Schwarz: E ≥ L²/(2T), strictly for this non-constant speed
        assert E > L**2 / (2 * T) * (1 + 1e-3)
        # equality at constant speed: a straight segment at uniform pace in the Euclidean metric
        np.testing.assert_allclose(Ll, np.sqrt(10.0) * T, rtol=1e-12)
        np.testing.assert_allclose(El, Ll**2 / (2 * T), rtol=1e-12)


def test_length_is_reparameterisation_invariant():
    with jax.enable_x64(True):
        p = {"a": jnp.asarray([-1.0, 1.0]), "b": jnp.asarray([2.0, 1.5]), "c": jnp.asarray([0.5, -1.8])}

        a, b, c = (np.asarray(p[k]) for k in "abc")

        def speed(t):  # analytic hyperbolic speed |γ̇| / y of the parabola
            return np.linalg.norm(b + 2 * c * t) / (a + b * t + c * t**2)[1]

        L_true = integrate.quad(speed, 0.0, 1.0, epsabs=1e-13, epsrel=1e-13)[0]

        def squared(q, t):  # the same curve run at the pace t ↦ t²
            return parabola(q, t**2)

        length = jax.jit(lambda t: jnp.stack([geo.curve_length(poincare, f, p, t) for f in (parabola, squared)]))
        errs = [np.abs(np.asarray(length(jnp.linspace(0.0, 1.0, n))) / L_true - 1) for n in (25, 100, 400)]
        # both converge to the same length, at second order (×16 less error per ×4 points);
        # measured errors at n = 400: 5.3e-6 (t) and 1.8e-5 (t²)
        assert errs[-1].max() < 3e-5
        assert np.all(errs[0] / errs[-1] > 200)
        # the pace changes the energy, not the length: E(t²) > E(t) here
        t = jnp.linspace(0.0, 1.0, 400)
        E1, E2 = jax.jit(lambda t: [geo.curve_energy(poincare, f, p, t) for f in (parabola, squared)])(t)
        assert float(E2) > 1.1 * float(E1)


# ----------------------------------------------------------------------------- fitted geodesics

T_FINE = np.linspace(0.0, 1.0, 2001)


@functools.partial(jax.jit, static_argnums=0)
def _fitted_length_jit(metric, params, z0, z1):
    module = geo.NeuralGeodesic((32, 32), z0, z1)
    return geo.curve_length(metric, module.apply, params, jnp.asarray(T_FINE, z0.dtype))


def _fitted_length(metric, params, z0, z1) -> float:
    """Length of the continuous fitted curve, on 2001 points."""
    return float(_fitted_length_jit(metric, params, z0, z1))


def _straight_poincare_length(a, b) -> float:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return integrate.quad(lambda t: np.linalg.norm(b - a) / ((1 - t) * a[1] + t * b[1]), 0.0, 1.0)[0]


def test_fit_geodesic_euclidean_is_the_straight_line():
    z0, z1 = jnp.asarray([-1.0, 0.5]), jnp.asarray([2.0, -1.0])
    params, curve = geo.fit_geodesic(euclidean, z0, z1, jax.random.key(0))
    assert curve.shape == (50, 2)
    t = np.linspace(0.0, 1.0, 50)[:, None]
    line = (1 - t) * np.asarray(z0) + t * np.asarray(z1)
    # measured 4.9e-5 (energy minimisation also gives the uniform pace); tolerance 1e-3
    assert np.abs(np.asarray(curve) - line).max() < 1e-3
    # measured relative error 1.2e-7 (float32); tolerance 1e-4
    L = _fitted_length(euclidean, params, z0, z1)
    assert abs(L / np.linalg.norm(np.asarray(z1) - np.asarray(z0)) - 1) < 1e-4
    c = np.asarray(curve)
    assert np.abs(c[0] - np.asarray(z0)).max() < 1e-6 and np.abs(c[-1] - np.asarray(z1)).max() < 1e-6


@pytest.mark.parametrize(
    "z0, z1",
    [((-2.0, 0.5), (2.0, 0.5)), ((0.0, 0.5), (4.0, 2.0))],
)
def test_fit_geodesic_poincare_matches_the_hyperbolic_distance(z0, z1):
    z0, z1 = jnp.asarray(z0), jnp.asarray(z1)
    params, curve = geo.fit_geodesic(poincare, z0, z1, jax.random.key(1))  # default settings
    d = poincare_distance(z0, z1)
    assert _straight_poincare_length(z0, z1) > 1.1 * d  # clearly curved: the straight segment is ≥ 10 % longer (1.9× and 1.2×)
    # measured relative errors 2.3e-6 and 2.4e-6 (defaults: 3000 steps, float32); tolerance 1e-3
    L = _fitted_length(poincare, params, z0, z1)
    assert abs(L / d - 1) < 1e-3
    # the points lie on the semicircle through z0 and z1 centred on the x axis
    a, b = np.asarray(z0, np.float64), np.asarray(z1, np.float64)
    c = (np.sum(b**2) - np.sum(a**2)) / (2 * (b[0] - a[0]))
    R = np.hypot(a[0] - c, a[1])
    radii = np.hypot(np.asarray(curve[:, 0], np.float64) - c, np.asarray(curve[:, 1], np.float64))
    # measured max relative radius error 8.6e-4 and 1.3e-3 (positions converge at first
    # order, the length at second); tolerance 5e-3
    assert np.abs(radii / R - 1).max() < 5e-3


def test_fit_geodesic_vmapped_over_end_points_matches_single_fits():
    Z0 = jnp.asarray([[-2.0, 0.5], [0.0, 0.5], [-1.0, 1.0]])
    Z1 = jnp.asarray([[2.0, 0.5], [4.0, 2.0], [1.0, 1.0]])
    keys = jax.random.split(jax.random.key(3), 3)
    P, C = jax.vmap(lambda a, b, k: geo.fit_geodesic(poincare, a, b, k))(Z0, Z1, keys)
    assert C.shape == (3, 50, 2)
    for i in range(3):
        p, c = geo.fit_geodesic(poincare, Z0[i], Z1[i], keys[i])
        # measured max |Δ| 5e-7 between batched and single fits; tolerance 1e-4
        np.testing.assert_allclose(np.asarray(C[i]), np.asarray(c), atol=1e-4)
        p_i = jax.tree_util.tree_map(lambda x: x[i], P)
        L = _fitted_length(poincare, p_i, Z0[i], Z1[i])
        assert abs(L / poincare_distance(Z0[i], Z1[i]) - 1) < 1e-3  # measured ≤ 3.1e-6


def test_fit_geodesic_objective_length_and_custom_optimizer():
    import optax

    z0, z1 = jnp.asarray([-1.0, 1.0]), jnp.asarray([1.0, 1.0])
    params, curve = geo.fit_geodesic(
        poincare, z0, z1, jax.random.key(2), steps=1500, objective="length", optimizer=optax.adam(5e-3), n_t=30
    )
    assert curve.shape == (30, 2)
    # measured relative error 4.2e-5; tolerance 2e-3
    assert abs(_fitted_length(poincare, params, z0, z1) / poincare_distance(z0, z1) - 1) < 2e-3


# ----------------------------------------------------------------------------- validation


def test_bad_inputs_raise_naming_the_argument():
    z = jnp.zeros(2)
    key = jax.random.key(0)
    with pytest.raises(ValueError, match="z_init"):
        geo.fit_geodesic(euclidean, jnp.zeros((1, 2)), z, key)
    with pytest.raises(ValueError, match="z_init"):
        geo.fit_geodesic(euclidean, jnp.zeros(3), z, key)
    with pytest.raises(TypeError, match="z_end"):
        geo.fit_geodesic(euclidean, z, jnp.zeros(2, jnp.int32), key)
    with pytest.raises(ValueError, match="z_end"):
        geo.fit_geodesic(euclidean, z, jnp.asarray([0.0, jnp.nan]), key)
    with pytest.raises(ValueError, match="n_t"):
        geo.fit_geodesic(euclidean, z, z, key, n_t=1)
    with pytest.raises(ValueError, match="steps"):
        geo.fit_geodesic(euclidean, z, z, key, steps=0)
    with pytest.raises(TypeError, match="steps"):
        geo.fit_geodesic(euclidean, z, z, key, steps=10.0)
    with pytest.raises(ValueError, match="metric_fn"):
        geo.fit_geodesic(lambda z: jnp.eye(3), z, z, key)
    with pytest.raises(ValueError, match="metric_fn"):
        geo.fit_geodesic(lambda z: z, z, z, key)
    with pytest.raises(TypeError, match="metric_fn"):
        geo.fit_geodesic("euclidean", z, z, key)
    with pytest.raises(ValueError, match="objective"):
        geo.fit_geodesic(euclidean, z, z, key, objective="area")
    with pytest.raises(ValueError, match="features"):
        geo.fit_geodesic(euclidean, z, z, key, features=(0,))
    with pytest.raises(TypeError, match="key"):
        geo.fit_geodesic(euclidean, z, z, None)
    with pytest.raises(ValueError, match="`t`"):
        geo.curve_length(euclidean, parabola, {"a": z, "b": z, "c": z}, jnp.zeros((3, 1)))
    with pytest.raises(ValueError, match="`t`"):
        geo.curve_energy(euclidean, parabola, {"a": z, "b": z, "c": z}, jnp.asarray([0.0]))
    with pytest.raises(ValueError, match="non-decreasing"):
        geo.curve_length(euclidean, parabola, {"a": z, "b": z, "c": z}, jnp.asarray([0.5, 0.2]))
    with pytest.raises(ValueError, match="metric_fn"):
        geo.curve_energy(lambda z: jnp.eye(3), parabola, {"a": z, "b": z, "c": z}, jnp.linspace(0, 1, 4))
    with pytest.raises(ValueError, match="`z`"):
        geo.pullback_metric(lambda z: z, jnp.zeros((4, 2)))
    with pytest.raises(ValueError, match="mode"):
        geo.pullback_metric(lambda z: z, z, mode="both")
    with pytest.raises(ValueError, match="z_init"):
        geo.NeuralGeodesic((4,), jnp.zeros(2), jnp.zeros(3)).init(key, jnp.linspace(0, 1, 3))
    with pytest.raises(ValueError, match="extent"):
        gplots.metric_volume_grid(euclidean, (1.0, 0.0, 0.0, 1.0))


# ----------------------------------------------------------------------------- plots


def test_metric_volume_grid_matches_closed_form():
    X, Y, V = gplots.metric_volume_grid(poincare, (-1.0, 2.0, 0.5, 3.0), n=40)
    assert X.shape == Y.shape == V.shape == (40, 40)
    np.testing.assert_allclose(X[0], np.linspace(-1.0, 2.0, 40), rtol=1e-6)
    np.testing.assert_allclose(Y[:, 0], np.linspace(0.5, 3.0, 40), rtol=1e-6)
    np.testing.assert_allclose(V, -2.0 * np.log(Y), rtol=1e-5, atol=1e-5)  # log √det(I/y²) = −2 log y


def test_plot_latent_metric_writes_a_png(tmp_path):
    from matplotlib.figure import Figure  # no pyplot: the backend is left alone

    rng = np.random.default_rng(0)
    codes = np.stack([rng.uniform(-2, 2, 300), rng.uniform(0.3, 3, 300)], axis=1)
    labels = rng.integers(0, 3, 300)
    t = np.linspace(0, 1, 50)
    geod = np.asarray(_h2_geodesic(0.0, 2.0, -0.9, 0.9)(None, jnp.asarray(t)))
    fig = Figure(figsize=(9, 4))
    axes = fig.subplots(1, 2)
    mesh = gplots.plot_latent_metric(axes[0], poincare, codes, labels=labels, geodesics=[geod], n=60)
    # the heat map shows −2 log y over the codes' padded range
    arr = np.asarray(mesh.get_array()).reshape(60, 60)
    assert np.isclose(arr.max(), -2 * np.log(codes[:, 1].min() - 0.1 * np.ptp(codes[:, 1])), rtol=1e-4)
    grid = gplots.metric_volume_grid(poincare, (-2.0, 2.0, 0.3, 3.0), n=30)
    gplots.plot_latent_metric(axes[1], grid, codes, geodesics=[geod], colorbar=False)
    path = tmp_path / "metric.png"
    fig.savefig(path, dpi=80)
    assert path.exists() and path.stat().st_size > 20_000


def test_importing_aetk_jax_does_not_import_matplotlib():
    code = "import sys, aetk_jax, aetk_jax.geometry_plots; print('matplotlib' in sys.modules)"
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, env=env)
    assert out.stdout.strip() == "False"
