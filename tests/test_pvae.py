"""Poincaré ball maps, the wrapped and Riemannian normals (densities, samplers, gradients), the Poincaré VAE."""
from __future__ import annotations

import functools
import json
import math
import os

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import scipy.integrate as si

import aetk_jax as aet
from aetk_jax import builders, cli
from aetk_jax import poincare as pb
from aetk_jax import pvae

from _conditional_checks import BODIES, K, LATENT, N_IN, check_conditional_loss
from _conditional_checks import batch as cond_batch
from conftest import small_vae_parts

CS = (0.3, 1.0, 2.5)


def _points(rng, n, d, c, scale=0.8):
    """Points of the c-ball at Euclidean radius up to ``scale``/√c."""
    x = rng.normal(size=(n, d))
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return x * rng.uniform(0, scale, size=(n, 1)) / np.sqrt(c)


def test_mobius_addition_identities():
    rng = np.random.default_rng(0)
    with jax.enable_x64(True):
        for c in CS:
            x, y = _points(rng, 6, 3, c), _points(rng, 6, 3, c)
            zero = np.zeros_like(x)
            np.testing.assert_allclose(np.asarray(pb.mobius_add(zero, x, c)), x, atol=1e-14)
            np.testing.assert_allclose(np.asarray(pb.mobius_add(x, zero, c)), x, atol=1e-14)
            np.testing.assert_allclose(np.asarray(pb.mobius_add(-x, x, c)), 0.0, atol=1e-14)
            # left cancellation (−x) ⊕ (x ⊕ y) = y
            np.testing.assert_allclose(np.asarray(pb.mobius_add(-x, pb.mobius_add(x, y, c), c)), y, atol=1e-12)


def test_exp_and_log_maps_invert_each_other_and_the_distance_is_the_arccosh_formula():
    rng = np.random.default_rng(1)
    with jax.enable_x64(True):
        for c in CS:
            x, y = _points(rng, 8, 3, c), _points(rng, 8, 3, c)
            u = rng.normal(size=(8, 3)) * 0.7
            np.testing.assert_allclose(np.asarray(pb.logmap(x, pb.expmap(x, u, c), c)), u, atol=1e-10)
            np.testing.assert_allclose(np.asarray(pb.expmap(x, pb.logmap(x, y, c), c)), y, atol=1e-12)
            np.testing.assert_allclose(np.asarray(pb.logmap0(pb.expmap0(u, c), c)), u, atol=1e-10)
            np.testing.assert_allclose(np.asarray(pb.expmap(np.zeros_like(u), u, c)), np.asarray(pb.expmap0(u, c)),
                                       atol=1e-14)
            nx, ny = np.sum(x * x, 1), np.sum(y * y, 1)
            ref = np.arccosh(1 + 2 * c * np.sum((x - y) ** 2, 1) / ((1 - c * nx) * (1 - c * ny))) / np.sqrt(c)
            np.testing.assert_allclose(np.asarray(pb.distance(x, y, c)), ref, rtol=1e-12)
            # exp_x moves the Riemannian length λ_x‖u‖ along a geodesic
            lam = 2 / (1 - c * nx)
            np.testing.assert_allclose(np.asarray(pb.distance(x, pb.expmap(x, u, c), c)),
                                       lam * np.linalg.norm(u, axis=1), rtol=1e-10)


def test_parallel_transport_keeps_the_riemannian_norm_and_reduces_to_a_rescaling_at_the_origin():
    rng = np.random.default_rng(2)
    with jax.enable_x64(True):
        for c in CS:
            x, y, v = _points(rng, 5, 3, c), _points(rng, 5, 3, c), rng.normal(size=(5, 3))
            lam = lambda p: 2 / (1 - c * np.sum(p * p, 1))  # noqa: E731
            pv = np.asarray(pb.transport(x, y, v, c))
            np.testing.assert_allclose(lam(y) * np.linalg.norm(pv, axis=1), lam(x) * np.linalg.norm(v, axis=1),
                                       rtol=1e-12)
            zero = np.zeros_like(x)
            np.testing.assert_allclose(np.asarray(pb.transport(zero, y, v, c)), np.asarray(pb.transport0(y, v, c)),
                                       atol=1e-14)
            np.testing.assert_allclose(np.asarray(pb.transport(x, zero, v, c)), np.asarray(pb.transport_to0(x, v, c)),
                                       atol=1e-12)
            # the geodesic's own velocity is transported onto the (reversed) velocity at its end
            np.testing.assert_allclose(np.asarray(pb.transport(x, y, pb.logmap(x, y, c), c)),
                                       -np.asarray(pb.logmap(y, x, c)), atol=1e-10)


def _disc_grid(c, n_t=200, n_phi=128, t_max=7.0):
    """Nodes and Lebesgue weights on the c-disc in polar coordinates ρ = tanh(t)/√c (dense near the boundary)."""
    t, wt = np.polynomial.legendre.leggauss(n_t)
    t, wt = (t + 1) * t_max / 2, wt * t_max / 2
    phi = np.linspace(0, 2 * np.pi, n_phi, endpoint=False)
    T, P = np.meshgrid(t, phi, indexing="ij")
    rho = np.tanh(T) / np.sqrt(c)
    pts = np.stack([rho * np.cos(P), rho * np.sin(P)], -1).reshape(-1, 2)
    w = (wt[:, None] * (2 * np.pi / n_phi) * rho / np.cosh(T) ** 2 / np.sqrt(c)).ravel()  # ρ dρ dφ
    lam = 2 * np.cosh(T).ravel() ** 2  # λ_z = 2/(1 − cρ²)
    return pts, w * lam**2  # Riemannian volume λ² dρ ρ dφ


@pytest.mark.parametrize("family", pvae.DISTRIBUTIONS)
def test_densities_integrate_to_one_on_the_disc(family):
    with jax.enable_x64(True):
        for c, mu in ((1.0, [0.4, -0.3]), (0.5, [-0.9, 0.6])):
            pts, w = _disc_grid(c)
            sigma = np.array([0.6, 0.9]) if family == "wrapped" else np.array([0.7])
            logp = np.asarray(pvae._logpdf(family, jnp.asarray(pts), jnp.asarray(mu), jnp.asarray(sigma), c))
            np.testing.assert_allclose(np.sum(np.exp(logp) * w), 1.0, rtol=1e-7)


def test_riemannian_normaliser_against_quadrature_in_higher_dimensions():
    c = 0.7
    with jax.enable_x64(True):
        for d in (3, 5):
            for s in (0.05, 0.5, 2.0):
                f = lambda r: np.exp(-r * r / (2 * s * s)) * (np.sinh(np.sqrt(c) * r) / np.sqrt(c)) ** (d - 1)  # noqa
                top = s * ((d - 1) * np.sqrt(c) * s + 20)
                ref = (np.log(si.quad(f, 0, top, limit=400, epsabs=0, epsrel=1e-13)[0]) + np.log(2)
                       + d / 2 * np.log(np.pi) - math.lgamma(d / 2))
                np.testing.assert_allclose(float(pvae.riemannian_log_normaliser(jnp.asarray(s), c, d)), ref,
                                           rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("family", pvae.DISTRIBUTIONS)
def test_samplers_draw_from_their_densities(family):
    # the Euclidean mean of the ball coordinates, by sampling and by integrating the density on the disc
    c, mu, n = 1.0, np.array([0.5, 0.2]), 8000
    sig = np.array([0.5, 0.8]) if family == "wrapped" else np.array([0.6])
    pts, w = _disc_grid(c)
    with jax.enable_x64(True):
        p = np.exp(np.asarray(pvae._logpdf(family, jnp.asarray(pts), jnp.asarray(mu), jnp.asarray(sig), c))) * w
        draw = jax.jit(functools.partial(pvae._sample, family, c=c))
        z = np.asarray(draw(jax.random.key(0), jnp.tile(jnp.asarray(mu), (n, 1)), jnp.tile(jnp.asarray(sig), (n, 1))))
    assert np.all(np.sum(z * z, 1) < 1 / c)
    for f in (lambda q: q[:, 0], lambda q: q[:, 1], lambda q: np.sum(q * q, 1)):
        expected = np.sum(f(pts) * p)
        assert abs(f(z).mean() - expected) < 4 * f(z).std() / np.sqrt(n), (family, f(z).mean(), expected)


@pytest.mark.parametrize("d", [2, 3])
def test_riemannian_radius_gradient_is_the_derivative_of_the_mean_radius(d):
    # E[r](σ) by quadrature; d/dσ by central differences; the sampler's implicit gradients, mean ± s.e.
    c, n = 1.0, 5000

    def mean_radius(s):
        f = lambda r: np.exp(-r * r / (2 * s * s)) * np.sinh(np.sqrt(c) * r) ** (d - 1)  # noqa: E731
        top = s * ((d - 1) * s + 20)
        return si.quad(lambda r: r * f(r), 0, top, epsrel=1e-12)[0] / si.quad(f, 0, top, epsrel=1e-12)[0]

    with jax.enable_x64(True):
        for s in (0.3, 1.5):  # the chi-like and the Gaussian envelope
            ref = (mean_radius(s * (1 + 1e-5)) - mean_radius(s * (1 - 1e-5))) / (2e-5 * s)
            sig = jnp.full((n,), s)
            draw = lambda q: pvae._implicit_radius(q, pvae._draw_radius(jax.random.key(5), q, c, d), c, d)  # noqa
            r, dr = jax.jit(lambda q: jax.jvp(draw, (q,), (jnp.ones(n),)))(sig)
            r, dr = np.asarray(r), np.asarray(dr)
            assert abs(r.mean() - mean_radius(s)) < 4 * r.std() / np.sqrt(n)
            assert abs(dr.mean() - ref) < 4 * dr.std() / np.sqrt(n), (d, s, dr.mean(), ref)


def _pvae(family="wrapped", c=1.0, hidden=64):
    _, dec = small_vae_parts(latent_dim=2, hidden=hidden)
    enc = pvae.PoincareEncoder(aet.MLP([hidden], final_activation=jax.nn.relu), 2)
    return aet.PoincareVAE(enc, dec, curvature=c, distribution=family)


@pytest.mark.slow
def test_poincare_vae_trains_on_digits_and_is_scored_and_sampled(digits):
    train, val = digits
    model = _pvae()
    variables, history = aet.train.fit(model, functools.partial(pvae.loss, model), train, key=jax.random.key(0),
                                       optimizer=optax.adam(3e-3), epochs=6, batch_size=64, progress=False)
    losses = history["train"]["loss"]
    assert losses[-1] < losses[0] - 5.0, losses
    xv = jnp.asarray(val.x[:200])
    elbo_fn = jax.jit(functools.partial(aet.evaluate.elbo, model, n_samples=4))
    elbo = float(jnp.mean(elbo_fn(variables, xv, jax.random.key(1))))
    # measured: −26.74 after 6 epochs; the best decoder that ignores z (per-pixel training means) scores −27.17
    assert elbo > -27.1, elbo
    assert history["train"]["kl"][-1] > 0.5  # the code is in use
    ll = float(jnp.mean(aet.evaluate.marginal_loglikelihood(model, variables, xv, jax.random.key(2), 64)))
    assert elbo < ll < 0.0, (elbo, ll)
    s = aet.sample(model, variables, jax.random.key(3), 5)
    assert s.x.shape == (5, 64) and np.all(np.sum(np.asarray(s.z) ** 2, 1) < 1.0)


def test_riemannian_family_kl_estimate_has_finite_gradients():
    # the Monte-Carlo KL of the Riemannian family (draws, log q, log p) differentiated in μ and σ, c = 0.5
    model = _pvae("riemannian", c=0.5, hidden=8)
    assert model.encoder.curvature == 0.5 and model.encoder.distribution == "riemannian"
    assert model.prior.curvature == 0.5 and model.prior.distribution == "riemannian"
    mu = jnp.asarray([[0.2, -0.4], [0.0, 0.0], [1.3, 0.1]])  # the last 0.08 from the boundary (1/√c = 1.41)
    sigma = jnp.asarray([[0.05], [0.7], [3.0]])

    def kl(m, s):
        enc_out = pvae.PoincareParams(m, s)
        z = aet.encoder_sample(model.encoder, enc_out, jax.random.key(0))
        return jnp.sum(aet.encoder_logposterior(model.encoder, z, enc_out) - model.prior(z))

    value, g = jax.jit(jax.value_and_grad(kl, argnums=(0, 1)))(mu, sigma)
    assert np.isfinite(float(value)) and all(bool(jnp.all(jnp.isfinite(a))) for a in g)


@pytest.mark.parametrize("make, name", [
    (lambda: _pvae(c=0.0), "curvature"),
    (lambda: _pvae(c=-1.0), "curvature"),
    (lambda: _pvae(family="gaussian"), "distribution"),
    (lambda: pvae.PoincareEncoder(aet.MLP([4]), 2, curvature=-2.0), "curvature"),
    (lambda: pvae.PoincarePrior(0.0), "curvature"),
    (lambda: aet.PoincareVAE(pvae.PoincareEncoder(aet.MLP([4]), 2, curvature=2.0),
                             small_vae_parts(latent_dim=2)[1], curvature=1.0), "curvature"),
])
def test_bad_hyper_parameters_raise_value_error_naming_them(make, name):
    with pytest.raises(ValueError, match=f"`{name}`"):
        make()


# ---------------------------------------------------------------------------------------------
# conditional Poincaré VAE, the command line


@pytest.mark.parametrize("family", pvae.DISTRIBUTIONS)
def test_poincare_vae_is_conditional(family):
    """q(z|x, c) on the disc and p(x|z, c) (``_conditional_checks``, the Monte-Carlo KL with the same draws);
    samples per label lie in the disc of the model's curvature."""
    plain = builders.build("pvae", (N_IN,), latent_dim=LATENT, hidden=(8,), curvature=2.0).model
    model = pvae.PoincareVAE(plain.encoder.clone(distribution=None), plain.decoder, curvature=2.0,
                             distribution=family, n_conditions=K)
    x, c = cond_batch()
    variables = model.init(jax.random.key(3), (x, c))
    # the condition's kernel rows ×5: at initialisation a relabelling moves the Riemannian loss by < 0.1 %
    params = jax.tree_util.tree_map(lambda a: a, variables["params"])
    for path, width in BODIES.items():
        layer = params[path[0]][path[1]][path[2]]
        layer["kernel"] = layer["kernel"].at[width:].multiply(5.0)
    variables = {**variables, "params": params}
    check_conditional_loss(model, variables, pvae.loss, BODIES, trained=BODIES)
    s = aet.sample(model, variables, jax.random.key(1), 64, condition=jnp.zeros(64, jnp.int32) + 1)
    assert np.all(np.linalg.norm(np.asarray(s.z), axis=1) < 1 / np.sqrt(2.0))


def test_cli_curvature_and_arch_conv_reach_the_poincare_vae(tmp_path, capsys):
    digits = aet.data.load_digits()[0]
    args = ["train", "--model", "pvae", "--arch", "conv", "--curvature", "0.5", "--hidden", "16"]
    _, cfg = cli.resolve_config(cli._parser().parse_args(args))
    assert cfg["curvature"] == 0.5
    model = cli._recipe(cfg, digits).model
    assert model.curvature == 0.5 and model.encoder.c == 0.5 and model.prior.curvature == 0.5
    assert isinstance(model.encoder.body, aet.layers.ConvEncoderBody)
    assert isinstance(model.decoder.body, aet.layers.ConvDecoderBody)
    _, default = cli.resolve_config(cli._parser().parse_args(["train", "--model", "pvae"]))
    assert cli._recipe(default, digits).model.curvature == 1.0
    for argv, match in ((["--model", "svae", "--curvature", "2"], "--curvature applies to --model pvae"),
                        (["--model", "pvae", "--curvature", "0"], "--curvature must be > 0"),
                        (["--model", "pvae", "--curvature", "nan"], "--curvature must be > 0")):
        assert cli.main(["train", *argv, "--out", str(tmp_path / "x"), "--no-progress"]) == 2
        assert match in capsys.readouterr().err
    with pytest.raises(ValueError, match="curvature"):
        builders.build("vae", (64,), curvature=0.5)


@pytest.mark.slow
def test_cli_trains_a_convolutional_poincare_vae(tmp_path):
    out = str(tmp_path / "pvae")
    assert cli.main(["train", "--model", "pvae", "--arch", "conv", "--curvature", "0.5", "--epochs", "1",
                     "--hidden", "16", "--out", out, "--no-progress"]) == 0
    with open(os.path.join(out, "config.json")) as f:
        assert json.load(f)["curvature"] == 0.5
    with open(os.path.join(out, "results.json")) as f:
        res = json.load(f)
    # 64 · log 2 = 44.4 nats is a coin flip per pixel
    assert -44.4 < res["val_elbo"] <= res["val_loglikelihood"] + 0.5 < 0.5
