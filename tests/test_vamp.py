"""Pluggable priors and the VAMP model: the VampPrior and the Gaussian mixture against float64
NumPy, VAMP's bounds against the exact log p(x) of a linear-Gaussian model with a VampPrior (a
Gaussian mixture in closed form), samplers against the mixtures' moments, and digits training."""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.test_util import check_grads
from scipy import special, stats

import aetk_jax as aet
from aetk_jax import iwae, priors, vamp
from conftest import B, D, LATENT, SIGMA_X, linear_gaussian, small_vae_parts

K_COMP = 3


def _linear_vamp(seed: int = 0):
    """The conftest linear-Gaussian encoder/decoder under a VampPrior with K_COMP pseudo-inputs;
    returns (model, variables, x, exact log p(x), component means (K, d), scales (K, d))."""
    base, variables, x, *_ = linear_gaussian(mean_shift=0.3, sigma_scale=1.6)
    model = vamp.VAMP(base.encoder, base.decoder, K_COMP)
    u = np.random.default_rng(seed).normal(size=(K_COMP, D)) * 1.5
    variables = {"params": {**variables["params"], "prior": {"pseudo_inputs": jnp.asarray(u)}}}
    template = model.init(jax.random.key(0), x)
    assert jax.tree_util.tree_structure(template) == jax.tree_util.tree_structure(variables)
    p = jax.tree_util.tree_map(np.asarray, variables["params"])
    m = u @ p["encoder"]["mu"]["kernel"] + p["encoder"]["mu"]["bias"]  # q(z|u_k) means (K, d)
    s = np.exp(u @ p["encoder"]["logsigma"]["kernel"] + p["encoder"]["logsigma"]["bias"])
    Wk, b = p["decoder"]["mu"]["kernel"], p["decoder"]["mu"]["bias"]  # mu_x = z Wk + b
    comps = [stats.multivariate_normal(m[k] @ Wk + b, Wk.T @ np.diag(s[k] ** 2) @ Wk + SIGMA_X**2 * np.eye(D))
             for k in range(K_COMP)]
    logpx = special.logsumexp([c.logpdf(np.asarray(x)) for c in comps], axis=0) - np.log(K_COMP)
    return model, variables, x, logpx, m, s


def _np_mixture_logpdf(z, means, scales, log_weights):
    comp = stats.norm(means, scales).logpdf(z[..., None, :]).sum(-1)  # (..., K)
    return special.logsumexp(comp + log_weights, axis=-1)


def test_vamp_prior_density_matches_numpy():
    with jax.enable_x64(True):
        model, variables, _, _, m, s = _linear_vamp()
        z = np.random.default_rng(1).normal(size=(4, 7, LATENT)) * 2.0
        ref = _np_mixture_logpdf(z, m, s, np.full(K_COMP, -np.log(K_COMP)))
        np.testing.assert_allclose(vamp.log_prior(model, variables, jnp.asarray(z)), ref, rtol=1e-12)


def test_vamp_bounds_sit_below_and_reach_the_exact_log_px():
    with jax.enable_x64(True):
        model, variables, x, logpx, _, _ = _linear_vamp()
        keys = jax.random.split(jax.random.key(3), 4000)
        elbos = np.asarray(jax.jit(jax.vmap(lambda k: vamp.elbo(model, variables, x, k)))(keys))
        mean, se = elbos.mean(0), elbos.std(0) / np.sqrt(len(keys))
        assert np.all(mean < logpx - 0.3) and np.all(mean <= logpx + 4 * se)  # a strict bound here
        # the importance-weighted bound with this prior tightens to the mixture's exact log p(x)
        iw = np.asarray(jax.jit(jax.vmap(lambda k: iwae.elbo(model, variables, x, k, n_samples=2048)))(keys[:20]))
        assert np.all(np.abs(iw.mean(0) - logpx) < 0.03), iw.mean(0) - logpx
        # marginal_loglikelihood weighs its draws with the model's prior, not N(0, I)
        ll = np.asarray(aet.evaluate.marginal_loglikelihood(model, variables, x, jax.random.key(4), 8192))
        np.testing.assert_allclose(ll, logpx, atol=0.05)
        std_model = aet.VAE(model.encoder, model.decoder)
        ll_std = np.asarray(aet.evaluate.marginal_loglikelihood(std_model, {"params": {
            k: v for k, v in variables["params"].items() if k != "prior"}}, x, jax.random.key(4), 8192))
        assert np.max(np.abs(ll_std - logpx)) > 0.5  # the prior matters for this number


def test_gradients_reach_the_pseudo_inputs_and_are_exact():
    with jax.enable_x64(True):
        model, variables, x, *_ = _linear_vamp()
        # jitted: check_grads evaluates f many times (one compilation, not one dispatch per op each time)
        f = jax.jit(functools.partial(vamp.loss, model, x=x, key=jax.random.key(5), n_samples=3))
        g = jax.grad(f)(variables)["params"]["prior"]["pseudo_inputs"]
        assert np.all(np.isfinite(g)) and np.max(np.abs(g)) > 1e-3
        check_grads(f, (variables,), order=1, modes=["rev"], atol=1e-6, rtol=1e-6)


def test_mixture_of_gaussians_prior_density_and_sampler():
    with jax.enable_x64(True):
        enc, dec = small_vae_parts(latent_dim=2, hidden=8)
        model = aet.VAE(enc, dec, prior=priors.MixtureOfGaussians(4, 2))
        x = jnp.asarray(np.random.default_rng(0).uniform(size=(5, 64)))
        variables = model.init(jax.random.key(0), x)
        pr = {**variables["params"]["prior"], "logits": jnp.asarray([0.5, -1.0, 0.0, 2.0]),
              "log_scales": jnp.asarray(np.random.default_rng(2).normal(size=(4, 2)) * 0.3)}
        variables = {"params": {**variables["params"], "prior": pr}}
        p = jax.tree_util.tree_map(np.asarray, pr)
        z = np.random.default_rng(1).normal(size=(6, 2)) * 2
        ref = _np_mixture_logpdf(z, p["means"], np.exp(p["log_scales"]), p["logits"] - special.logsumexp(p["logits"]))
        np.testing.assert_allclose(aet.base.log_prior(model, variables, jnp.asarray(z)), ref, rtol=1e-12)
        # sampler moments: mean Σπm, covariance Σπ(diag s² + m mᵀ) − mean meanᵀ
        pi = np.exp(p["logits"] - special.logsumexp(p["logits"]))
        mean = pi @ p["means"]
        cov = sum(pi[k] * (np.diag(np.exp(2 * p["log_scales"][k])) + np.outer(p["means"][k], p["means"][k]))
                  for k in range(4)) - np.outer(mean, mean)
        draws = np.asarray(aet.sample(model, variables, jax.random.key(7), 40000).z)
        se = np.sqrt(np.diag(cov) / len(draws))
        assert np.all(np.abs(draws.mean(0) - mean) < 5 * se)
        np.testing.assert_allclose(np.cov(draws.T), cov, atol=0.05 * np.max(np.abs(cov)))


def test_vamp_sampler_draws_from_the_pseudo_input_posteriors():
    with jax.enable_x64(True):
        model, variables, _, _, m, s = _linear_vamp()
        draws = np.asarray(aet.sample(model, variables, jax.random.key(8), 30000).z)
        mean = m.mean(0)
        cov = np.mean([np.diag(s[k] ** 2) + np.outer(m[k], m[k]) for k in range(K_COMP)], axis=0) - np.outer(mean, mean)
        assert np.all(np.abs(draws.mean(0) - mean) < 5 * np.sqrt(np.diag(cov) / len(draws)))
        np.testing.assert_allclose(np.cov(draws.T), cov, atol=0.05 * np.max(np.abs(cov)))


def test_standard_normal_prior_module_equals_no_prior():
    enc, dec = small_vae_parts(latent_dim=2, hidden=8)
    x = jnp.asarray(np.random.default_rng(0).uniform(size=(5, 64)), jnp.float32)
    plain, explicit = aet.VAE(enc, dec), aet.VAE(enc, dec, prior=priors.StandardNormal())
    variables = plain.init(jax.random.key(0), x)
    for fn in (aet.vae.loss, iwae.loss, aet.hvae.loss):  # jitted: op by op the HVAE loss alone takes ~10 s
        np.testing.assert_allclose(jax.jit(functools.partial(fn, explicit))(variables, x, jax.random.key(1)),
                                   jax.jit(functools.partial(fn, plain))(variables, x, jax.random.key(1)), rtol=2e-6)


@pytest.mark.parametrize("make", [
    lambda: vamp.VAMP(*small_vae_parts(), 0),
    lambda: priors.MixtureOfGaussians(0, 2),
    lambda: priors.VampPrior(-1, (64,)),
])
def test_bad_n_components_raise_value_error_naming_it(make):
    with pytest.raises(ValueError, match="`n_components`"):
        make()


def test_vamp_trains_on_digits(digits):
    train, val = digits
    model = aet.VAMP(*small_vae_parts(latent_dim=2, hidden=64), n_components=20)
    variables, history = aet.train.fit(model, functools.partial(vamp.loss, model), train, key=jax.random.key(0),
                                       optimizer=optax.adam(3e-3), epochs=6, batch_size=64, progress=False)
    losses = history["train"]["loss"]
    assert losses[-1] < losses[0] - 5.0, losses
    elbo = float(jnp.mean(vamp.elbo(model, variables, jnp.asarray(val.x), jax.random.key(1), n_samples=8)))
    # measured: held-out ELBO −27.0 after 6 epochs (−45 at initialisation)
    assert elbo > -29.0, elbo


def test_mmdvae_compares_the_codes_with_the_models_prior():
    # the same codes against N(0, I) and against a one-component mixture moved to (4, 4): the MMD
    # sees the moved prior; and the mixture's parameters receive the MMD's gradient
    enc, dec = small_vae_parts(latent_dim=2, hidden=8)
    x = jnp.asarray(np.random.default_rng(0).uniform(size=(200, 64)), jnp.float32)
    plain = aet.MMDVAE(enc, dec)
    variables = plain.init(jax.random.key(0), x)
    mog = aet.MMDVAE(enc, dec, prior=priors.MixtureOfGaussians(1, 2))
    v_mog = {"params": {**variables["params"], "prior": {
        "means": jnp.full((1, 2), 4.0), "log_scales": jnp.zeros((1, 2)), "logits": jnp.zeros(1)}}}
    kw = dict(lam=10.0, alpha=0.0, n_latent_samples=200, aux=True)
    # jitted: run op by op, the loss and its gradient take ~30 s on CPU (one dispatch and compile per op)
    _, m_plain = jax.jit(functools.partial(aet.mmdvae.loss, plain, **kw))(variables, x, jax.random.key(1))
    _, m_mog = jax.jit(functools.partial(aet.mmdvae.loss, mog, **kw))(v_mog, x, jax.random.key(1))
    # measured: 0.010 against N(0, I), 0.65 against the moved prior
    assert float(m_plain["mmd"]) < 0.05 and float(m_mog["mmd"]) > 0.5, (m_plain["mmd"], m_mog["mmd"])
    g = jax.jit(jax.grad(lambda v: aet.mmdvae.loss(mog, v, x, jax.random.key(1), lam=10.0)))(v_mog)["params"]["prior"]
    assert float(jnp.abs(g["means"]).sum()) > 1e-3


def test_vamp_without_a_known_data_shape_says_how_to_give_it():
    enc, _ = small_vae_parts()
    dec = aet.MLP([4])  # a decoder with no output_shape
    with pytest.raises(TypeError, match="data_shape="):
        vamp.VAMP(enc, dec, 3)
    assert vamp.VAMP(enc, dec, 3, data_shape=(64,)).prior.data_shape == (64,)


def _model_with_prior(name, enc, dec, prior):
    kw = {} if prior is None else {"prior": prior}
    if name == "hvae":
        return aet.HVAE(enc, dec, **kw), functools.partial(aet.hvae.loss, K=2, eps=0.01)
    if name == "rhvae":
        metric = aet.rhvae.MetricNetwork(aet.MLP([8]), 2)
        return aet.RHVAE(enc, dec, metric, 4, 0.8, 1e-2, **kw), functools.partial(
            aet.rhvae.loss, K=1, eps=0.001, fixed_point_tol=1e30)
    if name == "infomaxvae":
        critic = aet.infomaxvae.MutualInfoNetwork(aet.MLP([8]))
        return aet.InfoMaxVAE(enc, dec, critic, **kw), functools.partial(aet.infomaxvae.loss, alpha=0.0)
    return aet.IWAE(enc, dec, **kw), iwae.loss


@pytest.mark.parametrize("name", ["hvae", "rhvae", "infomaxvae", "iwae"])
def test_every_model_creates_and_uses_a_learned_prior(name):
    # the prior's parameters exist after init, and each model's loss scores its codes with that prior:
    # a one-component mixture at N(0, I) gives the standard-normal prior's loss, a moved one a worse
    # loss, and its parameters receive the gradient
    enc, dec = small_vae_parts(latent_dim=2, hidden=8)
    x = jnp.asarray(np.random.default_rng(0).uniform(size=(6, 64)) > 0.5, jnp.float32)
    model, loss = _model_with_prior(name, enc, dec, priors.MixtureOfGaussians(1, 2))
    variables = model.init(jax.random.key(0), x)
    assert set(variables["params"]["prior"]) == {"means", "log_scales", "logits"}
    at = lambda mean: {**variables, "params": {**variables["params"], "prior": {  # noqa: E731
        "means": jnp.full((1, 2), mean), "log_scales": jnp.zeros((1, 2)), "logits": jnp.zeros(1)}}}
    value = jax.jit(lambda v: loss(model, v, x, jax.random.key(1)))
    plain, plain_loss = _model_with_prior(name, enc, dec, None)
    if name == "infomaxvae":
        # the standard prior's KL is in closed form, the mixture's a Monte-Carlo estimate: at alpha = 0 the
        # loss is aet.vae.loss's with the same prior and key (its docstring's identity)
        ref = aet.vae.loss(aet.VAE(enc, dec, prior=priors.MixtureOfGaussians(1, 2)), at(0.0), x, jax.random.key(1))
    else:
        ref = plain_loss(plain, plain.init(jax.random.key(0), x), x, jax.random.key(1))
    np.testing.assert_allclose(float(value(at(0.0))), float(ref), rtol=1e-6)
    assert float(value(at(3.0))) > float(value(at(0.0))) + 1.0  # codes near 0 are improbable under N((3, 3), I)
    g = jax.jit(jax.grad(lambda v: loss(model, v, x, jax.random.key(1))))(at(0.0))["params"]["prior"]
    assert float(jnp.abs(g["means"]).sum()) > 0
