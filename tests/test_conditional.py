"""Conditional models: q(z|x, c), p(x|z, c) with the pair convention ``x = (x, c)``.

References: a classifier trained on the digits (does a label make its digit?),
the exact reduction of a constant label to the unconditional model, the closed
form log p(x|c) of a conditional linear-Gaussian model, and a loss that checks
that ``fit`` keeps x and y paired through its shuffles.
"""
from __future__ import annotations

import functools
import json
import os

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from scipy import stats

import aetk_jax as aet
from aetk_jax import builders, cli
from conftest import Identity, small_vae_parts

# the CLI names whose models are conditional (VAMP is not: its pseudo-inputs carry no condition)
SUPPORTED = ["vae", "betavae", "iwae", "miwae", "ciwae", "piwae", "mmdvae", "infomaxvae", "betatcvae",
             "ae", "wae", "rae_l2", "rae_gp", "hvae", "rhvae"]
N_IN, K = 12, 3


def _recipe(name: str, n_conditions: int = 0, condition_dim: int = 0):
    """The CLI's recipe for ``name`` on 12 features (tiny networks), made conditional like ``--condition-on-labels``."""
    # one leapfrog step keeps the Hamiltonian models' compilation short (the checks hold for any K)
    extra = {"dataset_size": 100} if name == "betatcvae" else {"K": 1} if name in ("hvae", "rhvae") else {}
    r = builders.build(name, (N_IN,), latent_dim=2, hidden=(8,), **extra)
    if not (n_conditions or condition_dim):
        return r
    model = r.model.clone(n_conditions=n_conditions, condition_dim=condition_dim)
    return r._replace(model=model, loss=functools.partial(r.loss.func, model, **r.loss.keywords))


def _batch(n: int = 6, seed: int = 0):
    rng = np.random.default_rng(seed)
    return jnp.asarray(rng.uniform(size=(n, N_IN)), jnp.float32), jnp.asarray(rng.integers(0, K, n), jnp.int32)


# --------------------------------------------------------------------------- generation per label


@pytest.mark.slow
def test_conditional_vae_generates_the_requested_digit(digits):
    """Samples drawn for label k are recognised as digit k by a logistic regression trained on the digits.

    The classifier scores 96.7 % on the held-out digits. An unconditional model's
    samples do not depend on the label, so they would score 10 % on average;
    0.6 leaves room for a short run's blurry samples (measured: 99 % after 5 epochs).
    """
    from sklearn.linear_model import LogisticRegression

    train, _ = digits
    clf = LogisticRegression(max_iter=2000).fit(train.x, train.y)
    enc = aet.JointGaussianLogEncoder(aet.MLP([64], final_activation=nn.relu), 4)
    dec = aet.BernoulliDecoder(aet.MLP([64], final_activation=nn.relu), 64)
    model = aet.VAE(enc, dec, n_conditions=10)
    variables, history = aet.train.fit(model, functools.partial(aet.vae.loss, model), train, key=jax.random.key(0),
                                       epochs=4, batch_size=32, optimizer=optax.adam(3e-3), progress=False)
    assert history["train"]["loss"][-1] < history["train"]["loss"][0]
    labels = jnp.repeat(jnp.arange(10), 20)
    x = np.asarray(aet.sample(model, variables, jax.random.key(1), 200, condition=labels).x)
    recognised = [np.mean(clf.predict(x[np.asarray(labels) == k]) == k) for k in range(10)]
    assert np.mean(recognised) > 0.6, recognised


# --------------------------------------------------------------------------- a constant label changes nothing


def _conditioned_nets(params, n_in: int, d: int):
    """The networks that see the condition and their data widths: the encoder [x, e(c)], the decoder
    [z, e(c)] and, for an RHVAE, the metric network [x, e(c)]."""
    nets = [("encoder", n_in), ("decoder", d)]
    return nets + [("metric_network", n_in)] if "metric_network" in params else nets


def _absorb_label(params, c0: int, n_in: int, d: int):
    """Unconditional parameters equal to the conditional ones at the constant label ``c0``.

    The bodies' first layers see [x, onehot(c)] and [z, onehot(c)]: at c = c0 the
    condition adds row ``n_in + c0`` (``d + c0``) of the kernel to the layer's input,
    i.e. it is a bias. Remove the condition's rows and add that row to the bias.
    """
    out = jax.tree_util.tree_map(lambda a: a, params)
    for net, width in _conditioned_nets(params, n_in, d):
        layer = out[net]["body"]["dense_0"]
        kernel = layer["kernel"]
        out[net]["body"]["dense_0"] = {"kernel": kernel[:width], "bias": layer["bias"] + kernel[width + c0]}
    return out


def test_unconditional_models_are_unchanged_by_the_new_fields():
    """n_conditions = condition_dim = 0: the model's encode/decode are its encoder/decoder applied directly."""
    enc, dec = small_vae_parts(data_dim=N_IN)
    model = aet.VAE(enc, dec)
    x, _ = _batch()
    variables = model.init(jax.random.key(0), x)
    assert set(variables["params"]) == {"encoder", "decoder"}
    assert variables["params"]["encoder"]["body"]["dense_0"]["kernel"].shape == (N_IN, 32)
    enc_out = enc.apply({"params": variables["params"]["encoder"]}, x)
    np.testing.assert_array_equal(aet.base.encode(model, variables, x).mu, enc_out.mu)
    z = enc_out.mu
    np.testing.assert_array_equal(aet.base.decode(model, variables, z).logits,
                                  dec.apply({"params": variables["params"]["decoder"]}, z).logits)


# --------------------------------------------------------------------------- every model takes pairs


def _pad(params, n_in: int, d: int):
    """Conditional parameters from unconditional ones: zero kernel rows for the condition's inputs."""
    out = jax.tree_util.tree_map(lambda a: a, params)
    for net, width in _conditioned_nets(params, n_in, d):
        layer = out[net]["body"]["dense_0"]
        layer["kernel"] = jnp.concatenate([layer["kernel"], jnp.zeros((K, layer["kernel"].shape[1]))], axis=0)
    return out


@pytest.mark.parametrize("name", SUPPORTED)
def test_every_supported_model_is_conditional(name):
    """For every supported CLI model: the loss takes (x, c) pairs with finite gradients that reach the
    condition's inputs of the encoder and the decoder (and the RHVAE's metric network); at a constant
    label it equals the unconditional loss at the absorbed parameters (same key, same draws: the
    HVAE's/RHVAE's momenta and leapfrog paths too); and with zero weights on the condition (the
    unconditional parameters padded) every labelling gives the unconditional loss."""
    cond, plain = _recipe(name, n_conditions=K), _recipe(name)
    x, c = _batch()
    variables = cond.model.init(jax.random.key(3), (x, c))
    enc_kernel = variables["params"]["encoder"]["body"]["dense_0"]["kernel"]
    assert enc_kernel.shape[0] == N_IN + K
    assert variables["params"]["decoder"]["body"]["dense_0"]["kernel"].shape[0] == 2 + K
    c0, key = 2, jax.random.key(4)
    absorbed = {"params": _absorb_label(variables["params"], c0, N_IN, 2)}
    padded = {"params": _pad(absorbed["params"], N_IN, 2)}
    assert jax.tree_util.tree_structure(padded["params"]) == jax.tree_util.tree_structure(variables["params"])

    # two compilations: the conditional loss with its gradient (all four of its calls share their shapes)
    # and the unconditional loss
    grad_and_metrics = jax.jit(jax.value_and_grad(lambda v, data: cond.loss(v, data, key, aux=True), has_aux=True))
    (value, _), grads = grad_and_metrics(variables, (x, c))
    m = {"plain": jax.jit(lambda v: plain.loss(v, x, key, aux=True)[1])(absorbed),
         "constant": grad_and_metrics(variables, (x, jnp.full(6, c0, jnp.int32)))[0][1],
         "other": grad_and_metrics(variables, (x, jnp.zeros(6, jnp.int32)))[0][1],
         "padded": grad_and_metrics({**variables, **padded}, (x, c))[0][1]}
    assert np.isfinite(value)
    assert all(np.all(np.isfinite(g)) for g in jax.tree_util.tree_leaves(grads))
    # the condition's kernel rows receive gradient: c reaches the encoder and the decoder (and L_ψ)
    for net, width in _conditioned_nets(variables["params"], N_IN, 2):
        assert np.any(np.asarray(grads["params"][net]["body"]["dense_0"]["kernel"][width:]) != 0), net
    want = m["plain"]
    assert not np.allclose(m["other"]["loss"], want["loss"], rtol=1e-3)
    np.testing.assert_allclose(m["padded"]["loss"], want["loss"], rtol=2e-6, atol=1e-6)
    if name == "rae_l2":  # its penalty Σ‖θ‖² counts the condition's kernel rows: compare the rest
        want = {k: v for k, v in want.items() if k not in ("loss", "regularisation")}
    for k in want:
        np.testing.assert_allclose(m["constant"][k], want[k], rtol=2e-6, atol=1e-6, err_msg=k)
    if name == "infomaxvae":  # the critic's loss too (the critic sees x alone)
        assert np.isfinite(aet.infomaxvae.mi_loss(cond.model, variables, (x, c), jax.random.key(1)))


def test_covariates_enter_as_they_are():
    """condition_dim: the covariates are concatenated unchanged (a shift of one covariate by t equals
    adding t times its kernel row to the first layer's bias)."""
    enc, dec = small_vae_parts(data_dim=N_IN)
    model = aet.VAE(enc, dec, condition_dim=2)
    x, _ = _batch()
    c = jnp.asarray(np.random.default_rng(1).normal(size=(6, 2)), jnp.float32)
    variables = model.init(jax.random.key(0), (x, c))
    p = variables["params"]
    shifted = jax.tree_util.tree_map(lambda a: a, p)
    for net, width in (("encoder", N_IN), ("decoder", 2)):
        layer = shifted[net]["body"]["dense_0"]
        layer["bias"] = layer["bias"] + 0.7 * layer["kernel"][width + 1]
    key = jax.random.key(2)
    want = aet.vae.loss(model, {"params": shifted}, (x, c), key)
    got = aet.vae.loss(model, variables, (x, c.at[:, 1].add(0.7)), key)
    np.testing.assert_allclose(got, want, rtol=2e-6)


# --------------------------------------------------------------------------- exact likelihood


def _conditional_linear_gaussian(seed: int = 0):
    """p(z) = N(0, I), p(x|z, c) = N(W z + b + V_c, σ²I) with the exact posterior as encoder (Identity bodies):
    its mean (x − b − V_c) A is linear in [x, onehot(c)]."""
    D, d, k, sigma = 5, 2, 3, 0.5
    rng = np.random.default_rng(seed)
    q, _ = np.linalg.qr(rng.normal(size=(D, D)))
    s = np.array([1.5, 0.8])
    W, b, V = q[:, :d] * s, rng.normal(size=D) * 0.3, rng.normal(size=(k, D))
    S = 1.0 / (1.0 + s**2 / sigma**2)
    A = W * S / sigma**2
    model = aet.VAE(aet.JointGaussianLogEncoder(Identity(), d), aet.JointGaussianLogDecoder(Identity(), D),
                    n_conditions=k)
    params = {
        "encoder": {"mu": {"kernel": np.vstack([A, -V @ A]), "bias": -b @ A},
                    "logsigma": {"kernel": np.zeros((D + k, d)), "bias": 0.5 * np.log(S)}},
        "decoder": {"mu": {"kernel": np.vstack([W.T, V]), "bias": b},
                    "logsigma": {"kernel": np.zeros((d + k, D)), "bias": np.full(D, np.log(sigma))}},
    }
    c = np.array([0, 1, 2, 2, 1, 0])
    x = rng.normal(size=(6, D)) + b + V[c]
    logp = np.array([stats.multivariate_normal(b + V[ci], W @ W.T + sigma**2 * np.eye(D)).logpdf(xi)
                     for xi, ci in zip(x, c)])
    variables = {"params": jax.tree_util.tree_map(lambda a: jnp.asarray(a, jnp.float32), params)}
    return model, variables, (jnp.asarray(x, jnp.float32), jnp.asarray(c)), logp


def test_marginal_loglikelihood_of_a_conditional_model_is_exact_log_p_x_given_c():
    """With the exact posterior as proposal every importance weight is p(x|c): the estimate is exact."""
    model, variables, pair, logp = _conditional_linear_gaussian()
    ll = aet.evaluate.marginal_loglikelihood(model, variables, pair, jax.random.key(0), 16, chunk=8)
    np.testing.assert_allclose(ll, logp, rtol=2e-5)
    wrong = (pair[0], (pair[1] + 1) % 3)  # another label: another density (V_c ~ N(0, I) apart)
    other = np.asarray(aet.evaluate.marginal_loglikelihood(model, variables, wrong, jax.random.key(0), 16))
    assert np.all(np.abs(other - logp) > 0.1), other - logp


# --------------------------------------------------------------------------- sampling


def test_sample_with_labels_and_covariates():
    enc, dec = small_vae_parts(data_dim=N_IN)
    model = aet.VAE(enc, dec, n_conditions=K)
    x, c = _batch()
    variables = model.init(jax.random.key(0), (x, c))
    s = aet.sample(model, variables, jax.random.key(1), 5, condition=jnp.array([0, 1, 2, 1, 0]))
    assert s.z.shape == (5, 2) and s.x.shape == (5, N_IN)
    # the same key draws the same z; the label changes the decoded x
    s2 = aet.sample(model, variables, jax.random.key(1), 5, condition=jnp.full(5, 2))
    np.testing.assert_array_equal(s.z, s2.z)
    np.testing.assert_allclose(s.x[2], s2.x[2])
    assert not np.allclose(s.x[0], s2.x[0])
    cov = aet.VAE(enc, dec, condition_dim=2)
    cv = cov.init(jax.random.key(0), (x, jnp.zeros((6, 2))))
    assert aet.sample(cov, cv, jax.random.key(1), 4, condition=jnp.ones((4, 2))).x.shape == (4, N_IN)


def test_sample_rejects_bad_conditions():
    enc, dec = small_vae_parts(data_dim=N_IN)
    model, plain = aet.VAE(enc, dec, n_conditions=K), aet.VAE(enc, dec)
    x, c = _batch()
    variables, pv = model.init(jax.random.key(0), (x, c)), plain.init(jax.random.key(0), x)
    key = jax.random.key(1)
    with pytest.raises(ValueError, match="pass `condition`"):
        aet.sample(model, variables, key, 4)
    with pytest.raises(ValueError, match="not conditional"):
        aet.sample(plain, pv, key, 4, condition=jnp.zeros(4, jnp.int32))
    with pytest.raises(ValueError, match=r"`condition` must be labels of shape \(4,\)"):
        aet.sample(model, variables, key, 4, condition=jnp.zeros(3, jnp.int32))
    with pytest.raises(ValueError, match=r"outside \[0, 3\)"):
        aet.sample(model, variables, key, 4, condition=jnp.array([0, 1, 2, 3]))


def test_rae_samples_its_code_density_under_a_condition():
    r = _recipe("rae_l2", n_conditions=K)
    x, c = _batch(20)
    variables = r.model.init(jax.random.key(0), (x, c))
    variables = aet.rae.fit_code_density(r.model, variables, (x, c), 2, key=jax.random.key(1), n_iter=5)
    s = aet.sample(r.model, variables, jax.random.key(2), 4, condition=jnp.array([0, 1, 2, 0]))
    s0 = aet.sample(r.model, variables, jax.random.key(2), 4, condition=jnp.zeros(4, jnp.int32))
    np.testing.assert_array_equal(s.z, s0.z)
    assert s.x.shape == (4, N_IN) and not np.allclose(s.x[1], s0.x[1])
    with pytest.raises(ValueError, match="pass `condition`"):
        aet.sample(r.model, variables, jax.random.key(2), 4)


# --------------------------------------------------------------------------- fit with Dataset(x, y)


def test_fit_keeps_x_and_y_paired_through_the_shuffles():
    """y = argmax of x's first three features; a loss reporting the fraction of mismatched pairs
    sees 0 in every epoch (shuffling x alone would mismatch about 2/3), also on a one-device mesh."""
    rng = np.random.default_rng(0)
    x = rng.uniform(size=(96, N_IN)).astype(np.float32)
    y = np.argmax(x[:, :3], axis=1).astype(np.int32)
    enc, dec = small_vae_parts(data_dim=N_IN, hidden=8)
    model = aet.VAE(enc, dec, n_conditions=K)

    def loss_fn(variables, xy, key, aux=False):
        value, metrics = aet.vae.loss(model, variables, xy, key, aux=True)
        mismatch = jnp.mean((jnp.argmax(xy[0][:, :3], axis=1) != xy[1]).astype(jnp.float32))
        return (value, {**metrics, "mismatch": mismatch}) if aux else value

    mismatch_if_unpaired = np.mean(np.argmax(x[rng.permutation(96), :3], axis=1) != y)
    assert mismatch_if_unpaired > 0.4
    # a one-device mesh: the sharded path (the pair placed and constrained leaf by leaf); the digits test fits without
    _, history = aet.train.fit(model, loss_fn, aet.data.Dataset(x[:64], y[:64]), key=jax.random.key(0),
                               epochs=2, batch_size=16, val_data=aet.data.Dataset(x[64:], y[64:]),
                               progress=False, mesh=aet.parallel.data_mesh(jax.devices()[:1]))
    assert history["train"]["mismatch"] == [0.0, 0.0]
    assert history["val"]["mismatch"] == [0.0, 0.0]


def test_fit_checks_the_labels_on_the_host():
    enc, dec = small_vae_parts(data_dim=N_IN, hidden=8)
    model = aet.VAE(enc, dec, n_conditions=K)
    loss = functools.partial(aet.vae.loss, model)
    x, c = _batch(16)
    kw = dict(key=jax.random.key(0), epochs=1, batch_size=8, progress=False)
    with pytest.raises(ValueError, match=r"`data's labels y` holds 1 label\(s\) outside \[0, 3\)"):
        aet.train.fit(model, loss, aet.data.Dataset(np.asarray(x), np.r_[3, np.asarray(c)[1:]]), **kw)
    with pytest.raises(ValueError, match="`data` has no labels"):
        aet.train.fit(model, loss, np.asarray(x), **kw)
    with pytest.raises(ValueError, match="`val_data's labels y`"):
        aet.train.fit(model, loss, aet.data.Dataset(np.asarray(x), np.asarray(c)), **kw,
                      val_data=aet.data.Dataset(np.asarray(x), np.full(16, -1)))


# --------------------------------------------------------------------------- bad input


def test_bad_conditioning_arguments_name_the_argument():
    enc, dec = small_vae_parts(data_dim=N_IN)
    with pytest.raises(ValueError, match="`n_conditions` must be >= 0"):
        aet.VAE(enc, dec, n_conditions=-1)
    with pytest.raises(ValueError, match="`condition_dim` must be >= 0"):
        aet.VAE(enc, dec, condition_dim=-2)
    with pytest.raises(ValueError, match="`n_conditions` must be an int"):
        aet.VAE(enc, dec, n_conditions=2.5)
    with pytest.raises(ValueError, match="not both"):
        aet.VAE(enc, dec, n_conditions=2, condition_dim=3)
    with pytest.raises(ValueError, match="VampPrior"):
        aet.VAMP(enc, dec, n_conditions=3)
    with pytest.raises(ValueError, match="VampPrior"):
        aet.VAE(enc, dec, prior=aet.priors.VampPrior(4, (N_IN,)), condition_dim=1)


def test_losses_refuse_bad_pairs():
    enc, dec = small_vae_parts(data_dim=N_IN)
    model, plain = aet.VAE(enc, dec, n_conditions=K), aet.VAE(enc, dec)
    x, c = _batch()
    variables = model.init(jax.random.key(0), (x, c))
    key = jax.random.key(1)
    with pytest.raises(ValueError, match=r"outside \[0, 3\)"):
        aet.vae.loss(model, variables, (x, c.at[0].set(3)), key)
    with pytest.raises(ValueError, match=r"outside \[0, 3\)"):
        aet.iwae.loss(model, variables, (x, c.at[0].set(-1)), key)
    with pytest.raises(ValueError, match=r"`x` must be the pair \(x, c\)"):
        aet.vae.loss(model, variables, x, key)
    with pytest.raises(ValueError, match="not conditional"):
        aet.vae.loss(plain, plain.init(key, x), (x, c), key)
    with pytest.raises(TypeError, match="integer labels"):
        aet.vae.loss(model, variables, (x, c.astype(jnp.float32)), key)
    with pytest.raises(ValueError, match=r"labels of shape \(6,\)"):
        aet.vae.loss(model, variables, (x, c[:4]), key)
    with pytest.raises(ValueError, match="no condition was given"):
        model.apply(variables, x, method="encode")


# --------------------------------------------------------------------------- HVAE and RHVAE: potential, metric, sampler


def _rhvae(n_conditions: int = 0, condition_dim: int = 0, n_centroids: int = 5):
    """The CLI's RHVAE recipe on 12 features with ``n_centroids`` centroids, conditional when asked."""
    r = builders.build("rhvae", (N_IN,), latent_dim=2, hidden=(8,), n_centroids=n_centroids, K=1)
    if not (n_conditions or condition_dim):
        return r
    model = r.model.clone(n_conditions=n_conditions, condition_dim=condition_dim)
    return r._replace(model=model, loss=functools.partial(r.loss.func, model, **r.loss.keywords))


def _hamiltonian_recipe(name: str, **condition):
    return _rhvae(**condition) if name == "rhvae" else _recipe(name, **condition)


@pytest.mark.parametrize("name", ["hvae", "rhvae"])
def test_hamiltonian_models_take_covariates_as_they_are(name):
    """condition_dim: a shift of one covariate by t equals adding t times its kernel row to the first-layer
    bias of every network that sees the condition (encoder, decoder, and the RHVAE's metric network):
    the same loss, with the same key (the same z₀, momenta and leapfrog path)."""
    r = _hamiltonian_recipe(name, condition_dim=2)
    x, _ = _batch()
    cov = jnp.asarray(np.random.default_rng(1).normal(size=(6, 2)), jnp.float32)
    variables = r.model.init(jax.random.key(0), (x, cov))
    shifted = jax.tree_util.tree_map(lambda a: a, variables["params"])
    for net, width in _conditioned_nets(shifted, N_IN, 2):
        layer = shifted[net]["body"]["dense_0"]
        assert layer["kernel"].shape[0] == width + 2, net
        layer["bias"] = layer["bias"] + 0.7 * layer["kernel"][width + 1]
    loss, moved = jax.jit(functools.partial(r.loss, key=jax.random.key(2))), cov.at[:, 1].add(0.7)
    want, got, unmoved = loss({**variables, "params": shifted}, (x, cov)), loss(variables, (x, moved)), \
        loss(variables, (x, cov))
    assert np.isfinite(want)
    np.testing.assert_allclose(got, want, rtol=2e-6)
    assert not np.allclose(got, unmoved, rtol=1e-4)


@pytest.mark.parametrize("name", ["hvae", "rhvae"])
def test_hamiltonian_models_evaluate_log_p_x_given_c(name):
    """aet.evaluate.marginal_loglikelihood of a conditional HVAE/RHVAE at a constant label equals the
    unconditional model's at the absorbed parameters (same key); another label gives another log p(x|c).
    (Their ``aet.evaluate.elbo`` is their ``elbo``, the loss's "elbo" metric that
    ``test_every_supported_model_is_conditional`` compares.)"""
    cond, plain = _hamiltonian_recipe(name, n_conditions=K), _hamiltonian_recipe(name)
    x, c = _batch()
    variables = cond.model.init(jax.random.key(3), (x, c))
    absorbed = {**plain.model.init(jax.random.key(3), x), "params": _absorb_label(variables["params"], 2, N_IN, 2)}
    key, two = jax.random.key(5), jnp.full(6, 2, jnp.int32)
    ll = lambda m, v, d: np.asarray(aet.evaluate.marginal_loglikelihood(m, v, d, key, 8))  # noqa: E731
    want = ll(plain.model, absorbed, x)
    assert np.all(np.isfinite(want))
    np.testing.assert_allclose(ll(cond.model, variables, (x, two)), want, rtol=2e-6, atol=1e-5)
    assert not np.allclose(ll(cond.model, variables, (x, jnp.zeros(6, jnp.int32))), want, rtol=1e-4)


def test_rhvae_metric_at_a_constant_label_is_the_unconditional_metric():
    """The metric of a conditional RHVAE built from centroid pairs (xᵢ, c₀) (centroids μ(xᵢ, c₀), factors
    L_ψ(xᵢ, c₀)) is the unconditional RHVAE's metric from xᵢ at the absorbed parameters: the same stored
    centroids and Mᵢ, the same G⁻¹(z), the same loss with metric_source="centroids"; the
    centroid selection on (x, c₀) picks the same rows; another label gives another metric."""
    cond, plain = _rhvae(n_conditions=K), _rhvae()
    x, c = _batch(10)
    variables = cond.model.init(jax.random.key(3), (x, c))
    assert variables["metric"]["condition"].shape == (5,)
    absorbed = {**plain.model.init(jax.random.key(3), x), "params": _absorb_label(variables["params"], 1, N_IN, 2)}
    one, key = jnp.full(10, 1, jnp.int32), jax.random.key(7)
    picked = aet.rhvae.select_centroid_data(cond.model, variables, (x, one), key)
    np.testing.assert_array_equal(picked[0], aet.rhvae.select_centroid_data(plain.model, absorbed, x, key))
    np.testing.assert_array_equal(picked[1], jnp.ones(5, jnp.int32))
    cv = aet.rhvae.update_metric(cond.model, variables, picked)
    pv = aet.rhvae.update_metric(plain.model, absorbed, picked[0])
    stored_x, stored_c = aet.rhvae.centroid_data(cond.model, cv)
    assert stored_c.dtype == jnp.int32
    np.testing.assert_array_equal(stored_c, picked[1])
    np.testing.assert_array_equal(stored_x, picked[0])
    for k in ("centroids", "M"):
        np.testing.assert_allclose(cv["metric"][k], pv["metric"][k], rtol=2e-6, atol=1e-7, err_msg=k)
    z = jax.random.normal(jax.random.key(8), (7, 2))
    want = np.asarray(aet.rhvae.G_inv(plain.model, pv, z))
    np.testing.assert_allclose(aet.rhvae.G_inv(cond.model, cv, z), want, rtol=2e-6, atol=1e-7)
    # the loss with the metric recomputed from the stored centroid pairs (metric_source="stored" uses the
    # stored centroids and Mᵢ compared above)
    got, want_loss = jax.jit(lambda cv, pv: (cond.loss(cv, (x, one), key, metric_source="centroids"),
                                             plain.loss(pv, x, key, metric_source="centroids")))(cv, pv)
    np.testing.assert_allclose(got, want_loss, rtol=2e-6)
    other = aet.rhvae.update_metric(cond.model, variables, (picked[0], jnp.zeros(5, jnp.int32)))
    assert not np.allclose(aet.rhvae.G_inv(cond.model, other, z), want, rtol=1e-3)


def test_rhvae_samples_its_metric_and_decodes_under_the_condition():
    """aet.sample(rhvae, ..., condition=c): codes from the metric's density (the same key, the same codes for
    every condition), decoded with p(x|z, c); a missing condition or a label out of range is refused."""
    r = _rhvae(n_conditions=K)
    x, c = _batch(10)
    variables = r.model.init(jax.random.key(0), (x, c))
    variables = aet.rhvae.update_metric(r.model, variables, (x[:5], c[:5]))
    labels, key = jnp.array([0, 1, 2, 1]), jax.random.key(1)
    s = aet.sample(r.model, variables, key, 4, condition=labels, n_steps=3, n_leapfrog=2)
    s0 = aet.sample(r.model, variables, key, 4, condition=jnp.zeros(4, jnp.int32), n_steps=3, n_leapfrog=2)
    assert s.z.shape == (4, 2) and s.x.shape == (4, N_IN)
    np.testing.assert_array_equal(s.z, s0.z)
    decoded = aet.decoders.decoder_mean(r.model.decoder, aet.base.decode(r.model, variables, s.z, labels))
    np.testing.assert_allclose(s.x, decoded, rtol=1e-6)
    np.testing.assert_allclose(s.x[0], s0.x[0], rtol=1e-6)
    assert not np.allclose(s.x[1], s0.x[1], rtol=1e-3)
    with pytest.raises(ValueError, match="pass `condition`"):
        aet.sample(r.model, variables, key, 4)
    with pytest.raises(ValueError, match=r"`condition` holds 1 label\(s\) outside \[0, 3\)"):
        aet.sample(r.model, variables, key, 4, condition=jnp.array([0, 1, 2, 3]))


def test_hamiltonian_models_refuse_bad_pairs():
    """Labels outside [0, n_conditions), data without labels, and pairs given to an unconditional RHVAE's
    metric functions: ValueError naming the argument."""
    hv, rh, plain = _recipe("hvae", n_conditions=K), _rhvae(n_conditions=K), _rhvae()
    x, c = _batch(10)
    key = jax.random.key(1)
    hvv, rhv = hv.model.init(key, (x, c)), rh.model.init(key, (x, c))
    for r, v in ((hv, hvv), (rh, rhv)):
        with pytest.raises(ValueError, match=r"`x\[1\] \(the condition\)` holds 1 label\(s\) outside \[0, 3\)"):
            r.loss(v, (x, c.at[0].set(3)), key)
        with pytest.raises(ValueError, match=r"`x` must be the pair \(x, c\)"):
            r.loss(v, x, key)
    with pytest.raises(ValueError, match=r"`x_centroids` must be the pair \(x, c\)"):
        aet.rhvae.update_metric(rh.model, rhv, x[:5])
    with pytest.raises(ValueError, match=r"`x_centroids\[1\] \(the condition\)` holds 1 label\(s\) outside"):
        aet.rhvae.update_metric(rh.model, rhv, (x[:5], jnp.array([0, 1, 2, -1, 0])))
    with pytest.raises(ValueError, match=r"`x` must be the pair \(x, c\)"):
        aet.rhvae.select_centroid_data(rh.model, rhv, x, key)
    with pytest.raises(ValueError, match="`x_centroids` is a tuple, but RHVAE is not conditional"):
        aet.rhvae.update_metric(plain.model, plain.model.init(key, x), (x[:5], c[:5]))
    with pytest.raises(ValueError, match="no condition was given"):
        rh.model.apply(rhv, x, method="metric_factor")
    with pytest.raises(ValueError, match="no stored centroid conditions"):
        aet.rhvae.centroid_data(rh.model, {**rhv, "metric": {k: v for k, v in rhv["metric"].items()
                                                             if k != "condition"}})


@pytest.mark.slow
def test_conditional_rhvae_fits_digit_pairs_and_its_centroids_are_pairs(digits):
    """fit on Dataset(x, y) of the digits: the end-of-epoch update stores training pairs (xᵢ, yᵢ) (each stored
    row is a training digit with its own label) and the centroids are μ(xᵢ, yᵢ) at the final parameters
    (with other labels the codes differ)."""
    train, _ = digits
    r = builders.build("rhvae", (64,), latent_dim=2, hidden=(16,), n_centroids=8, K=1)
    model = r.model.clone(n_conditions=10)
    loss = functools.partial(r.loss.func, model, **r.loss.keywords)
    xs, ys = np.asarray(train.x[:128]), np.asarray(train.y[:128])
    variables, history = aet.train.fit(model, loss, aet.data.Dataset(xs, ys), key=jax.random.key(0), epochs=1,
                                       batch_size=64, progress=False)
    assert np.all(np.isfinite(history["train"]["loss"]))
    stored_x, stored_y = aet.rhvae.centroid_data(model, variables)
    for xi, yi in zip(np.asarray(stored_x), np.asarray(stored_y)):
        rows = np.flatnonzero(np.all(xs == xi, axis=1))
        assert rows.size and yi in ys[rows]
    assert len(np.unique(np.asarray(stored_y))) > 1
    mu = lambda y: aet.encoders.encoder_mean(model.encoder, aet.base.encode(model, variables, (stored_x, y)))  # noqa: E731
    np.testing.assert_allclose(variables["metric"]["centroids"], mu(stored_y), rtol=1e-5, atol=1e-6)
    assert not np.allclose(variables["metric"]["centroids"], mu((stored_y + 1) % 10), atol=1e-3)


# --------------------------------------------------------------------------- the command line


@pytest.mark.slow
def test_cli_condition_on_labels_trains_evaluates_and_plots_per_class(tmp_path, capsys):
    out = str(tmp_path / "cvae")
    status = cli.main(["train", "--condition-on-labels", "--epochs", "1", "--out", out, "--hidden", "16",
                       "--no-progress"])
    assert status == 0
    assert os.path.exists(os.path.join(out, "samples_per_class.png"))
    with open(os.path.join(out, "config.json")) as f:
        assert json.load(f)["condition_on_labels"] is True
    with open(os.path.join(out, "results.json")) as f:
        assert "samples_per_class.png" in json.load(f)["plots"]
    capsys.readouterr()
    assert cli.main(["evaluate", out, "--n-importance", "8"]) == 0
    res = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert np.isfinite(res["val_loglikelihood"]) and res["val_loglikelihood"] < 0


def test_cli_condition_on_labels_refuses_vamp_and_unlabelled_data(tmp_path, capsys):
    assert cli.main(["train", "--condition-on-labels", "--model", "vamp", "--out", str(tmp_path / "v"),
                     "--no-progress"]) == 2
    assert "VampPrior" in capsys.readouterr().err
    path = tmp_path / "x.npy"
    np.save(path, np.random.default_rng(0).uniform(size=(40, 6)).astype(np.float32))
    assert cli.main(["train", "--condition-on-labels", "--data", str(path), "--out", str(tmp_path / "n"),
                     "--no-progress"]) == 2
    assert "have no labels" in capsys.readouterr().err
