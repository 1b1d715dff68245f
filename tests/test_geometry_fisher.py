"""Fisher–Rao pullback metrics and curvature diagnostics.

Fisher metrics against closed forms (float64 NumPy) for linear decoders of every
built-in type, against dense ``jax.jacfwd`` Jacobians and dense Fisher matrices
for MLP decoders, and against the Hessian of the expected negative
log-likelihood; scalar curvature against the half-plane (−2), the plane (0) and
the sphere (+2); the magnification factor against log √det G in closed form.
"""
from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import aetk_jax as aet
from aetk_jax import geometry as geo

D_LAT, N_OUT, K_CAT = 3, 5, 4


class Identity(nn.Module):
    """A body that passes z through: the decoder heads are then linear in z."""

    @nn.compact
    def __call__(self, z):
        return z


def tanh_mlp():
    return aet.MLP([6, 7], activation=nn.tanh, final_activation=nn.tanh)


def make_decoder(name, body):
    two = {"mu_body": body(), "sigma_body": body()}
    return {
        "bernoulli": lambda: aet.BernoulliDecoder(body(), N_OUT),
        "categorical": lambda: aet.CategoricalDecoder(body(), (2,), K_CAT),
        "simple_gaussian": lambda: aet.SimpleGaussianDecoder(body(), N_OUT),
        "joint_gaussian_log": lambda: aet.JointGaussianLogDecoder(body(), N_OUT),
        "split_gaussian_log": lambda: aet.SplitGaussianLogDecoder(body(), body(), N_OUT),
        "joint_gaussian": lambda: aet.JointGaussianDecoder(body(), N_OUT),
        "split_gaussian": lambda: aet.SplitGaussianDecoder(two["mu_body"], two["sigma_body"], N_OUT),
        "deterministic": lambda: aet.Decoder(body(), N_OUT),
    }[name]()


NAMES = ["bernoulli", "categorical", "simple_gaussian", "joint_gaussian_log", "split_gaussian_log",
         "joint_gaussian", "split_gaussian", "deterministic"]


def _init(decoder, seed=0):
    v = decoder.init(jax.random.key(seed), jnp.zeros((1, D_LAT), jnp.float64))
    # larger, float64 random parameters (the default init makes tiny biases)
    leaves, tree = jax.tree_util.tree_flatten(v)
    keys = jax.random.split(jax.random.key(seed + 1), len(leaves))
    return jax.tree_util.tree_unflatten(tree, [jax.random.normal(k, l.shape, jnp.float64) for k, l in zip(keys, leaves)])


def _np(tree):
    return jax.tree_util.tree_map(np.asarray, tree)


def _head(v, name):
    """(kernel (d, m), bias (m,)) of a linear head, float64 NumPy."""
    return np.asarray(v["kernel"]), np.asarray(v["bias"])


def closed_form_linear(name, v, z):
    """G(z) for a decoder with an identity body, written out from the heads' kernels (NumPy, float64)."""
    p = _np(v["params"])
    softplus = lambda a: np.log1p(np.exp(a))  # noqa: E731
    sigmoid = lambda a: 1 / (1 + np.exp(-a))  # noqa: E731
    if name == "bernoulli":
        K, b = _head(p["logits"], name)
        q = sigmoid(z @ K + b)
        return K @ np.diag(q * (1 - q)) @ K.T
    if name == "categorical":
        K, b = _head(p["logits"], name)
        logits = (z @ K + b).reshape(2, K_CAT)
        G = 0
        for g in range(2):
            pr = np.exp(logits[g]) / np.exp(logits[g]).sum()
            Kg = K.reshape(D_LAT, 2, K_CAT)[:, g]
            G = G + Kg @ (np.diag(pr) - np.outer(pr, pr)) @ Kg.T
        return G
    if name in ("simple_gaussian", "deterministic"):
        K, _ = _head(p["mu" if name == "simple_gaussian" else "out"], name)
        return K @ K.T
    Km, _ = _head(p["mu"], name)
    if name in ("joint_gaussian_log", "split_gaussian_log"):
        Ks, bs = _head(p["logsigma"], name)
        logsig = z @ Ks + bs
        return Km @ np.diag(np.exp(-2 * logsig)) @ Km.T + 2 * Ks @ Ks.T
    Ks, bs = _head(p["sigma"], name)  # σ = softplus(a) (+ tiny), dσ/da = sigmoid(a)
    a = z @ Ks + bs
    sig = softplus(a)
    return Km @ np.diag(1 / sig**2) @ Km.T + Ks @ np.diag(2 * sigmoid(a) ** 2 / sig**2) @ Ks.T


@pytest.mark.parametrize("name", NAMES)
def test_fisher_metric_of_linear_decoders_matches_closed_form(name):
    with jax.enable_x64(True):
        dec = make_decoder(name, Identity)
        v = _init(dec)
        metric = jax.jit(geo.fisher_metric_fn(dec, v))
        for z in np.random.default_rng(1).normal(size=(3, D_LAT)):
            G = np.asarray(metric(jnp.asarray(z)))
            np.testing.assert_allclose(G, closed_form_linear(name, v, z), rtol=1e-10, atol=1e-12)
            assert np.all(np.linalg.eigvalsh(G) > 0)


def dense_fisher(name, theta):
    """The dense Fisher matrix of the flattened parameters θ (ravel order), float64 NumPy."""
    if name == "bernoulli":
        q = 1 / (1 + np.exp(-np.ravel(theta.logits)))
        return np.diag(q * (1 - q))
    if name == "categorical":
        blocks = []
        for row in np.asarray(theta.logits).reshape(-1, K_CAT):
            pr = np.exp(row - row.max()) / np.exp(row - row.max()).sum()
            blocks.append(np.diag(pr) - np.outer(pr, pr))
        from scipy.linalg import block_diag

        return block_diag(*blocks)
    if name == "joint_gaussian_log":
        return np.diag(np.concatenate([np.exp(-2 * np.ravel(theta.logsigma)), np.full(N_OUT, 2.0)]))
    if name == "joint_gaussian":
        s = np.ravel(theta.sigma)
        return np.diag(np.concatenate([1 / s**2, 2 / s**2]))
    raise KeyError(name)


@pytest.mark.parametrize("name", ["bernoulli", "categorical", "joint_gaussian_log", "joint_gaussian"])
def test_fisher_metric_of_mlp_decoders_matches_dense_jacobian(name):
    with jax.enable_x64(True):
        dec = make_decoder(name, tanh_mlp)
        v = _init(dec, seed=3)
        metric = geo.fisher_metric_fn(dec, v)

        def flat_params(z):
            out = dec.apply(v, z[None])
            return jnp.concatenate([jnp.ravel(leaf[0]) for leaf in out])

        @jax.jit
        def both(z):  # one compilation: the metric, the dense Jacobian (m, d) and θ at each z
            return jax.vmap(lambda x: (metric(x), jax.jacfwd(flat_params)(x), dec.apply(v, x[None])))(z)

        zs = jnp.asarray(np.random.default_rng(2).normal(size=(2, D_LAT)))
        Gs, Js, thetas = both(zs)
        for i in range(2):
            theta = jax.tree_util.tree_map(lambda a: np.asarray(a[i, 0]), thetas)
            J = np.asarray(Js[i])
            np.testing.assert_allclose(np.asarray(Gs[i]), J.T @ dense_fisher(name, theta) @ J, rtol=1e-10, atol=1e-12)


def test_fisher_metric_is_the_hessian_of_the_expected_negative_loglikelihood():
    # E_{x∼p(x|z0)}[−log p(x|z)] in closed form: Bernoulli Σ softplus(l) − p0·l; Gaussian
    # Σ ½(σ0² + (μ0 − μ)²)/σ² + log σ + const. Its Hessian at z = z0 is the Fisher metric.
    with jax.enable_x64(True):
        z0 = jnp.asarray([0.3, -0.7, 1.1])
        for name in ("bernoulli", "joint_gaussian_log"):
            dec = make_decoder(name, tanh_mlp)
            v = _init(dec, seed=5)
            out0 = jax.tree_util.tree_map(lambda a: a[0], dec.apply(v, z0[None]))

            def expected_nll(z):
                out = jax.tree_util.tree_map(lambda a: a[0], dec.apply(v, z[None]))
                if name == "bernoulli":
                    return jnp.sum(jax.nn.softplus(out.logits) - jax.nn.sigmoid(out0.logits) * out.logits)
                var0 = jnp.exp(2 * out0.logsigma)
                return jnp.sum(0.5 * (var0 + (out0.mu - out.mu) ** 2) * jnp.exp(-2 * out.logsigma) + out.logsigma)

            H, G = jax.jit(lambda z: (jax.hessian(expected_nll)(z), geo.fisher_metric_fn(dec, v)(z)))(z0)
            np.testing.assert_allclose(np.asarray(G), np.asarray(H), rtol=1e-9, atol=1e-11)


def test_fisher_metric_of_a_model_equals_that_of_its_decoder():
    dec = aet.BernoulliDecoder(tanh_mlp(), N_OUT)
    model = aet.VAE(aet.JointGaussianLogEncoder(tanh_mlp(), D_LAT), dec)
    v = model.init(jax.random.key(0), jnp.zeros((1, N_OUT)))
    dec_vars = {"params": v["params"]["decoder"]}
    z = jnp.asarray([0.2, -0.4, 0.9])
    G_model, G_dec = jax.jit(lambda z: (geo.fisher_metric_fn(model, v)(z), geo.fisher_metric_fn(dec, dec_vars)(z)))(z)
    np.testing.assert_allclose(np.asarray(G_model), np.asarray(G_dec), rtol=1e-6, atol=1e-7)


class PoissonDecoder(nn.Module):
    """A user's decoder: log-rates η (λ = exp η)."""

    body: nn.Module
    n_out: int

    @nn.compact
    def __call__(self, z):
        return nn.Dense(self.n_out, name="log_rate")(self.body(z))


class UnregisteredDecoder(nn.Module):
    """A decoder with no registered Fisher information."""

    @nn.compact
    def __call__(self, z):
        return z


@geo.fisher_information.register(PoissonDecoder)
def _poisson_fisher(decoder, dec_out):
    rate = jnp.exp(dec_out)  # Fisher of a Poisson in its log-rate: diag(λ)
    return lambda t: rate * t


def test_user_registered_fisher_and_unregistered_decoder_error():
    with jax.enable_x64(True):
        dec = PoissonDecoder(Identity(), N_OUT)
        v = _init(dec)
        z = np.asarray([0.1, 0.5, -0.3])
        K, b = _head(_np(v["params"]["log_rate"]), "poisson")
        expected = K @ np.diag(np.exp(z @ K + b)) @ K.T  # Jᵀ diag(λ) J
        np.testing.assert_allclose(np.asarray(geo.fisher_metric_fn(dec, v)(jnp.asarray(z))), expected, rtol=1e-10)
    with pytest.raises(TypeError, match=r"Unregistered.*\n.*@aet\.geometry\.fisher_information\.register\(UnregisteredDecoder\)"):
        geo.fisher_metric_fn(UnregisteredDecoder(), {})
    with pytest.raises(TypeError, match="model"):
        geo.fisher_metric_fn("decoder", {})


# ----------------------------------------------------------------------------- curvature and magnification


def half_plane(z):
    return jnp.eye(z.shape[0], dtype=z.dtype) / z[-1] ** 2


def sphere(z):
    """The unit sphere in stereographic coordinates: G = 4 I / (1 + ‖z‖²)²."""
    return 4.0 * jnp.eye(z.shape[0], dtype=z.dtype) / (1.0 + z @ z) ** 2


def plane(z):
    return jnp.asarray([[2.0, 0.5], [0.5, 1.0]], z.dtype)


def _curvature(metric, z):
    return np.asarray(jax.jit(geo.scalar_curvature, static_argnums=0)(metric, z))


def conformal(z):
    """G = e^{2φ} I with φ = x²/2 + y: K = −e^{−2φ} Δφ, so R = −2 e^{−2φ}."""
    return jnp.exp(z[0] ** 2 + 2 * z[1]) * jnp.eye(2, dtype=z.dtype)


def test_scalar_curvature_of_half_plane_plane_and_sphere():
    with jax.enable_x64(True):
        rng = np.random.default_rng(0)
        p = np.stack([rng.uniform(-3, 3, 6), rng.uniform(0.1, 3, 6)], axis=1)
        pts = jnp.asarray(p)
        np.testing.assert_allclose(_curvature(half_plane, pts), -2.0, rtol=1e-10)
        np.testing.assert_allclose(_curvature(sphere, pts), 2.0, rtol=1e-10)
        np.testing.assert_allclose(_curvature(plane, pts), 0.0, atol=1e-12)
        np.testing.assert_allclose(_curvature(conformal, pts), -2 * np.exp(-(p[:, 0] ** 2 + 2 * p[:, 1])), rtol=1e-9)
        # general d: hyperbolic space of dimension d has R = −d(d − 1)
        np.testing.assert_allclose(_curvature(half_plane, jnp.asarray([[0.3, -0.2, 0.8]])), -6.0, rtol=1e-10)


def test_christoffel_symbols_of_the_half_plane():
    # G = I/y²: Γˣ_xy = Γˣ_yx = −1/y, Γʸ_xx = 1/y, Γʸ_yy = −1/y, the others 0
    with jax.enable_x64(True):
        y = 0.7
        gam = np.asarray(geo.christoffel_symbols(half_plane, jnp.asarray([0.4, y])))
        expected = np.zeros((2, 2, 2))
        expected[0, 0, 1] = expected[0, 1, 0] = -1 / y
        expected[1, 0, 0] = 1 / y
        expected[1, 1, 1] = -1 / y
        np.testing.assert_allclose(gam, expected, atol=1e-12)


def test_magnification_factor_closed_form_and_fisher_of_a_linear_gaussian():
    pts = jnp.asarray([[0.0, 0.5], [1.0, 2.0], [-2.0, 0.25]])
    np.testing.assert_allclose(np.asarray(geo.magnification_factor(half_plane, pts)),
                               -2 * np.log(np.asarray(pts[:, 1])), rtol=1e-6)
    assert np.isclose(float(geo.magnification_factor(half_plane, pts[1])), -2 * np.log(2.0), rtol=1e-6)
    with jax.enable_x64(True):  # a fixed-σ linear decoder: G = KKᵀ, log √det G constant
        dec = make_decoder("simple_gaussian", Identity)
        v = _init(dec)
        K = np.asarray(v["params"]["mu"]["kernel"])
        mf = np.asarray(geo.magnification_factor(geo.fisher_metric_fn(dec, v), jnp.ones((4, D_LAT))))
        np.testing.assert_allclose(mf, 0.5 * np.linalg.slogdet(K @ K.T)[1], rtol=1e-10)
    with pytest.raises(ValueError, match="`z`"):
        geo.magnification_factor(half_plane, jnp.ones((2, 2, 2)))


def test_run_plots_writes_the_fisher_metric_map_for_vae_family_models_only(tmp_path):
    from aetk_jax import builders, run_plots

    z = np.random.default_rng(0).normal(size=(60, 2)).astype(np.float32)
    labels = np.repeat(np.arange(4), 15)
    for name, written in (("vae", True), ("ae", False)):
        recipe = builders.build(name, (16,), hidden=(8,))
        v = recipe.model.init(jax.random.key(0), jnp.zeros((1, 16)))
        paths = run_plots.fisher_plots(recipe, v, z, labels, str(tmp_path), jax.random.key(1))
        assert [p.endswith("fisher_metric.png") for p in paths] == ([True] if written else [])
    assert (tmp_path / "fisher_metric.png").stat().st_size > 10_000
