"""Property tests (hypothesis) over every model's loss and the public entry points.

For random finite data in [0, 1] and hyper-parameters inside their documented
ranges every loss (and its aux terms) is finite, and the β-VAE loss is affine in
β with slope the closed-form Gaussian KL (a float64 NumPy reference). For
random malformed input (wrong rank, wrong feature count, integer/bool dtype,
NaN/inf entries, an empty batch, a non-array, a bad key, out-of-range
hyper-parameters) every entry point raises ``ValueError``/``TypeError`` whose
message names the offending argument — never a NaN result.

The models are tiny and initialised once at import; finite-value checks run
jitted with few distinct shapes (few compilations), malformed calls run eagerly
(validation runs before any computation).
"""
from __future__ import annotations

import functools
import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import aetk_jax as aet

D, LATENT, H = 6, 2, 8
X0 = jnp.full((2, D), 0.5, jnp.float32)
KEY = jax.random.key(0)


def _enc():
    return aet.JointGaussianLogEncoder(aet.MLP([H], final_activation=nn.relu), LATENT)


def _dec():
    return aet.BernoulliDecoder(aet.MLP([H], final_activation=nn.relu), D)


def _init(model):
    return model, model.init(jax.random.key(1), X0)


VAE = _init(aet.VAE(_enc(), _dec()))
GVAE = _init(aet.VAE(_enc(), aet.JointGaussianLogDecoder(aet.MLP([H], final_activation=nn.relu), D)))
AE = _init(aet.AE(aet.Encoder(aet.MLP([H], final_activation=nn.relu), LATENT),
                  aet.Decoder(aet.MLP([H], final_activation=nn.relu), D)))
MMD = _init(aet.MMDVAE(_enc(), _dec()))
HVAE = _init(aet.HVAE(_enc(), _dec()))
RHVAE = _init(aet.RHVAE(_enc(), _dec(), aet.rhvae.MetricNetwork(aet.MLP([H], final_activation=nn.relu), LATENT), 4, 0.8, 1e-2))
INFOMAX = _init(aet.InfoMaxVAE(_enc(), _dec(), aet.infomaxvae.MutualInfoNetwork(aet.MLP([H], final_activation=nn.relu))))

# --------------------------------------------------------------------------- strategies

B = 2  # one batch shape (that of X0): one compilation per loss and static configuration


@st.composite
def unit_data(draw, batch=B):
    """Finite float32 data in [0, 1], shape (batch, D)."""
    x = draw(hnp.arrays(np.float32, (batch, D), elements=st.floats(0.0, 1.0, width=32)))
    return jnp.asarray(x)


keys = st.integers(0, 2**31 - 1).map(jax.random.key)
SETTINGS = settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# --------------------------------------------------------------------------- finite in range

# HVAE and RHVAE jit internally and are called as users call them; the others are jitted
# here (one compilation each, fast examples; the eager value checks run in the malformed tests
# and in test_valid_calls_of_every_entry_point_are_finite).
_vae_loss = jax.jit(aet.vae.loss, static_argnums=0, static_argnames=("n_samples", "aux"))
_ae_loss = jax.jit(aet.ae.loss, static_argnums=0, static_argnames=("aux",))
_mmd_loss = jax.jit(aet.mmdvae.loss, static_argnums=0, static_argnames=("aux", "n_latent_samples"))
_infomax_loss = jax.jit(aet.infomaxvae.loss, static_argnums=0, static_argnames=("aux",))
_mll = jax.jit(aet.evaluate.marginal_loglikelihood, static_argnums=(0, 4))
_vae_elbo = aet.vae.elbo
_encode = jax.jit(aet.base.encode, static_argnums=0)
_reconstruct = jax.jit(aet.ae.reconstruct, static_argnums=0)


def _all_finite(out) -> bool:
    return all(bool(np.all(np.isfinite(np.asarray(v)))) for v in jax.tree_util.tree_leaves(out))


def kl_numpy(enc_out) -> np.ndarray:
    """KL(N(μ, σ²) ‖ N(0, I)) = ½ Σ (μ² + σ² − 1 − 2 log σ), float64, per example."""
    mu = np.asarray(enc_out.mu, np.float64)
    ls = np.asarray(enc_out.logsigma, np.float64)
    return 0.5 * np.sum(mu**2 + np.exp(2 * ls) - 1.0 - 2.0 * ls, axis=-1)


@SETTINGS
@given(x=unit_data(), key=keys, beta=st.floats(0.0, 20.0), n_samples=st.sampled_from([1, 2]))
def test_vae_loss_finite_and_affine_in_beta(x, key, beta, n_samples):
    model, v = VAE
    loss, aux = _vae_loss(model, v, x, key, beta=beta, n_samples=n_samples, aux=True)
    assert _all_finite((loss, aux))
    # loss(β) = −E log p(x|z) + β·KL with the same draws: slope = closed-form KL
    loss0, _ = _vae_loss(model, v, x, key, beta=0.0, n_samples=n_samples, aux=True)
    kl = kl_numpy(_encode(model, v, x)).mean()
    assert float(loss) - float(loss0) == pytest.approx(beta * kl, rel=1e-4, abs=1e-4)
    assert float(aux["kl"]) == pytest.approx(kl, rel=1e-5, abs=1e-6)
    assert kl >= 0.0


@SETTINGS
@given(x=unit_data(), key=keys, beta=st.floats(0.0, 20.0))
def test_gaussian_vae_loss_finite(x, key, beta):
    model, v = GVAE
    assert _all_finite(_vae_loss(model, v, x, key, beta=beta, aux=True))


@SETTINGS
@given(x=unit_data())
def test_ae_loss_finite_and_is_the_mse(x):
    model, v = AE
    loss = _ae_loss(model, v, x, None)
    xhat = np.asarray(_reconstruct(model, v, x), np.float64)
    assert np.isfinite(float(loss))
    assert float(loss) == pytest.approx(np.mean((xhat - np.asarray(x, np.float64)) ** 2), rel=1e-5, abs=1e-7)


@SETTINGS
@given(
    x=unit_data(), key=keys, alpha=st.floats(-5.0, 1.0), extra=st.floats(0.0, 20.0),
)
def test_mmdvae_loss_finite(x, key, alpha, extra):
    n_latent = 16
    model, v = MMD
    lam = 1.0 - alpha + extra  # the documented rule: α ≤ 1 and λ + α − 1 ≥ 0
    loss, aux = _mmd_loss(model, v, x, key, lam=lam, alpha=alpha, n_latent_samples=n_latent, aux=True)
    assert _all_finite((loss, aux))
    # with an MMD weight λ + α − 1 of 0 it is the β-VAE loss with β = 1 − α (same draws)
    loss0, _ = _mmd_loss(model, v, x, key, lam=1.0 - alpha, alpha=alpha, n_latent_samples=n_latent, aux=True)
    ref, _ = _vae_loss(model, v, x, key, beta=1.0 - alpha, n_samples=1, aux=True)
    assert float(loss0) == pytest.approx(float(ref), rel=1e-5, abs=1e-5)


@SETTINGS
@given(
    x=unit_data(), key=keys, eps=st.floats(1e-5, 0.1),
    beta0=st.floats(0.05, 1.0), tempering=st.sampled_from([aet.hvae.quadratic_tempering, aet.hvae.null_tempering]),
)
def test_hvae_loss_finite(x, key, eps, beta0, tempering):
    out = _hvae_loss(x, key, eps, beta0, tempering)
    assert _all_finite(out)


# the step size and β₀ enter traced, so each example reuses one compiled loss (not one per value)
@functools.partial(jax.jit, static_argnames=("tempering",))
def _hvae_loss(x, key, eps, beta0, tempering):
    model, v = HVAE
    return aet.hvae.loss(model, v, x, key, K=3, eps=eps, beta0=beta0, tempering=tempering, aux=True)


@jax.jit
def _rhvae_loss(x, key, eps, beta0):
    model, v = RHVAE
    return aet.rhvae.loss(model, v, x, key, K=3, eps=eps, beta0=beta0, n_fixed_point=5, aux=True)


@pytest.mark.slow
@SETTINGS
@given(x=unit_data(), key=keys, eps=st.floats(1e-5, 0.05), beta0=st.floats(0.05, 1.0))
def test_rhvae_loss_finite(x, key, eps, beta0):
    # finite whenever the generalised leapfrog's fixed point converged; otherwise the loss is
    # the fixed-point check's deliberate NaN, flagged by converged = 0 and a finite residual
    # above the tolerance (at ε = 0.05 a draw can land just above 1e-3); small steps converge
    loss, m = out = _rhvae_loss(x, key, eps, beta0)
    if eps <= 0.02:
        assert float(m["converged"]) == 1.0, (eps, float(m["fixed_point_residual"]))
    if float(m["converged"]) == 1.0:
        assert _all_finite(out)
    else:
        residual = float(m["fixed_point_residual"])
        assert np.isnan(float(loss)) and np.isfinite(residual) and residual > aet.rhvae.FIXED_POINT_TOL


@SETTINGS
@given(x=unit_data(), key=keys, alpha=st.floats(0.0, 10.0), beta=st.floats(0.0, 10.0))
def test_infomaxvae_loss_finite(x, key, alpha, beta):
    model, v = INFOMAX
    out = _infomax_loss(model, v, x, key, alpha=alpha, beta=beta, aux=True)
    assert _all_finite(out)


@SETTINGS
@given(x=unit_data(), key=keys)
def test_marginal_loglikelihood_and_elbo_finite(x, key):
    model, v = VAE
    ll = _mll(model, v, x, key, 64)
    elbo = _vae_elbo(model, v, x, key, n_samples=4)
    assert ll.shape == elbo.shape == (x.shape[0],)
    assert _all_finite((ll, elbo))


# --------------------------------------------------------------------------- malformed input


def _call(name):
    """``f(x, key, **hyper)`` for each public entry point."""
    return {
        "vae.loss": lambda x, k, **h: aet.vae.loss(*VAE, x, k, **h),
        "vae.elbo": lambda x, k, **h: aet.vae.elbo(*VAE, x, k, **h),
        "ae.loss": lambda x, k, **h: aet.ae.loss(*AE, x, k, **h),
        "mmdvae.loss": lambda x, k, **h: aet.mmdvae.loss(*MMD, x, k, **h),
        "hvae.loss": lambda x, k, **h: aet.hvae.loss(*HVAE, x, k, **h),
        "hvae.elbo": lambda x, k, **h: aet.hvae.elbo(*HVAE, x, k, **h),
        "rhvae.loss": lambda x, k, **h: aet.rhvae.loss(*RHVAE, x, k, **h),
        "infomaxvae.loss": lambda x, k, **h: aet.infomaxvae.loss(*INFOMAX, x, k, **h),
        "infomaxvae.mi_loss": lambda x, k, **h: aet.infomaxvae.mi_loss(*INFOMAX, x, k, **h),
        "marginal_loglikelihood": lambda x, k, **h: aet.evaluate.marginal_loglikelihood(*VAE, x, k, **h),
        "evaluate.elbo": lambda x, k, **h: aet.evaluate.elbo(*VAE, x, k, **h),
    }[name]


ENTRY_POINTS = [
    "vae.loss", "vae.elbo", "ae.loss", "mmdvae.loss", "hvae.loss", "hvae.elbo", "rhvae.loss",
    "infomaxvae.loss", "infomaxvae.mi_loss", "marginal_loglikelihood", "evaluate.elbo",
]

# out-of-range hyper-parameters per entry point: (name, value)
BAD_HYPER = {
    "vae.loss": [("beta", -1e-3), ("beta", -5.0), ("beta", math.nan), ("beta", math.inf), ("n_samples", 0),
                 ("n_samples", -2), ("n_samples", 1.5)],
    "vae.elbo": [("n_samples", 0), ("n_samples", 2.0)],
    "mmdvae.loss": [("lam", -0.5), ("alpha", 1.5), ("n_latent_samples", 0), ("n_latent_samples", 1), ("n_samples", 0),
                    ("lam", math.nan)],
    "hvae.loss": [("K", 0), ("K", -1), ("K", 2.0), ("eps", 0.0), ("eps", -1e-3), ("eps", math.nan), ("beta0", 0.0),
                  ("beta0", 1.5), ("beta0", -0.3)],
    "hvae.elbo": [("K", 0), ("eps", -1.0), ("beta0", 2.0)],
    "rhvae.loss": [("K", 0), ("eps", 0.0), ("beta0", 0.0), ("beta0", 1.5), ("n_fixed_point", 0)],
    "infomaxvae.loss": [("alpha", -1.0), ("beta", -0.1), ("beta", math.inf)],
    "marginal_loglikelihood": [("n_importance", 0), ("n_importance", -3)],
}

MALFORMED_X = ["rank1", "rank3", "features-", "features+", "int32", "uint8", "bool", "nan", "inf", "-inf", "empty", "list"]


def malform(x: np.ndarray, kind: str, pos: int):
    if kind == "rank1":
        return jnp.asarray(x[0])
    if kind == "rank3":
        return jnp.asarray(x[..., None])
    if kind == "features-":
        return jnp.asarray(x[:, :-1])
    if kind == "features+":
        return jnp.asarray(np.concatenate([x, x[:, :1]], axis=1))
    if kind == "int32":
        return jnp.asarray((x * 255).astype(np.int32))
    if kind == "uint8":
        return jnp.asarray((x * 255).astype(np.uint8))
    if kind == "bool":
        return jnp.asarray(x > 0.5)
    if kind in ("nan", "inf", "-inf"):
        y = x.copy()
        y.flat[pos % y.size] = {"nan": np.nan, "inf": np.inf, "-inf": -np.inf}[kind]
        return jnp.asarray(y)
    if kind == "empty":
        return jnp.asarray(x[:0])
    if kind == "list":
        return x.tolist()
    raise AssertionError(kind)


@settings(max_examples=40, deadline=None)
@given(
    name=st.sampled_from(ENTRY_POINTS), kind=st.sampled_from(MALFORMED_X),
    x=unit_data().map(np.asarray), pos=st.integers(0, 10**6),
)
def test_malformed_data_raises_naming_x(name, kind, x, pos):
    bad = malform(x, kind, pos)
    with pytest.raises((ValueError, TypeError), match="`x`"):
        _call(name)(bad, KEY)


@settings(max_examples=20, deadline=None)
@given(
    name=st.sampled_from([n for n in ENTRY_POINTS if n != "ae.loss"]),  # the AE's key is unused (documented)
    key=st.sampled_from([None, "seed", 3, np.zeros(2, np.float32), np.zeros(3, np.uint32)]),
)
def test_malformed_key_raises_naming_key(name, key):
    with pytest.raises(TypeError, match="`key`"):
        _call(name)(X0, key)


@settings(max_examples=30, deadline=None)
@given(name=st.sampled_from(sorted(BAD_HYPER)), data=st.data())
def test_out_of_range_hyper_parameters_raise_naming_them(name, data):
    arg, value = data.draw(st.sampled_from(BAD_HYPER[name]))
    with pytest.raises((ValueError, TypeError), match=f"`{arg}`"):
        _call(name)(X0, KEY, **{arg: value})


@settings(max_examples=20, deadline=None)
@given(n=st.sampled_from([0, -1, 2.5, None]), model=st.sampled_from(["vae", "hvae", "mmd"]))
def test_sample_rejects_bad_counts(n, model):
    m, v = {"vae": VAE, "hvae": HVAE, "mmd": MMD}[model]
    with pytest.raises((ValueError, TypeError), match="`n`"):
        aet.sample(m, v, KEY, n)


def test_valid_calls_of_every_entry_point_are_finite():
    """The calls the malformed tests perturb are themselves valid (eager, so every value
    check runs) and finite."""
    for name in ENTRY_POINTS:
        if name == "marginal_loglikelihood":
            out = _mll(*VAE, X0, KEY, 64)
        else:
            kw = {"aux": True} if name.endswith("loss") else {}
            out = _call(name)(X0, KEY, **kw)
        assert _all_finite(out), name
    s = aet.sample(*VAE, KEY, 3)
    assert s.x.shape == (3, D) and _all_finite(s)
