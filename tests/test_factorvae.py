"""FactorVAE: the discriminator's density-ratio estimate of the total correlation against the closed
form of correlated Gaussians, the permutation, the two phases' losses against float64 NumPy
re-implementations (and which parameters each one trains), a digits run, a user-registered
likelihood, bad arguments, and the conditional FactorVAE (its two losses on (x, c) pairs; ``fit`` and
``aet.sample(condition=)`` are in ``tests/test_adversarial.py``)."""
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
from _conditional_checks import BODIES, K, LATENT, N_IN, check_conditional_loss
from _conditional_checks import batch as cond_batch
from conftest import FixedScaleDecoder, small_vae_parts

import aetk_jax as aet
from aetk_jax import aae, factorvae


def _disc(width=32):
    return aae.Discriminator(aet.MLP([width, width], activation=aae.leaky_relu, final_activation=aae.leaky_relu))


def _model(hidden=16, width=16, latent=2, decoder=None):
    enc, dec = small_vae_parts(latent_dim=latent, hidden=hidden)
    return factorvae.FactorVAE(enc, decoder or dec, _disc(width))


# the correlation matrices of the TC test: exact TC = −½ log det R = 0.1385 and 0.8519 nats
R_WEAK = np.array([[1.0, 0.4, 0.2], [0.4, 1.0, 0.3], [0.2, 0.3, 1.0]])
R_STRONG = np.array([[1.0, 0.8, 0.6], [0.8, 1.0, 0.7], [0.6, 0.7, 1.0]])


def test_discriminator_estimate_tends_to_the_gaussian_total_correlation():
    """Train only the discriminator (the library's discriminator loss, on fresh draws of N(0, R) and
    their per-dimension permutation) and read TC ≈ mean D(z) on 20 000 new draws.

    Measured (1 500 Adam steps of 256 codes, seeds 0 and 1): 0.140 / 0.158 for TC = 0.139 and
    0.892 / 0.814 for TC = 0.852 (at most 0.04 away), and ±0.008 for independent dimensions. The
    tolerance 0.08 is a tenth of the strong case's TC and well inside the 0.71 between the two cases."""
    d, steps, batch = 3, 1500, 256
    model = factorvae.FactorVAE(aet.JointGaussianLogEncoder(aet.MLP([4]), d), aet.BernoulliDecoder(aet.MLP([4]), 2),
                                _disc(64))
    variables = model.init(jax.random.key(0), jnp.zeros((2, 2)))
    opt = optax.adam(1e-3)

    def with_disc(p):
        return {"params": {**variables["params"], "discriminator": p}}

    def train(chol, key):
        def body(carry, k):
            p, st = carry
            k1, k2 = jax.random.split(k)
            z = jax.random.normal(k1, (batch, d)) @ chol.T
            g = jax.grad(lambda q: factorvae.density_ratio_loss(model, with_disc(q), z, k2))(p)
            u, st = opt.update(g, st, p)
            return (optax.apply_updates(p, u), st), None

        p0 = variables["params"]["discriminator"]
        (p, _), _ = jax.lax.scan(body, (p0, opt.init(p0)), jax.random.split(key, steps))
        z = jax.random.normal(jax.random.key(99), (20000, d)) @ chol.T
        return factorvae.total_correlation(model, with_disc(p), z)

    chols = jnp.asarray(np.stack([np.linalg.cholesky(R_WEAK), np.linalg.cholesky(R_STRONG)]), jnp.float32)
    est = np.asarray(jax.jit(jax.vmap(train, in_axes=(0, None)))(chols, jax.random.key(1)))
    exact = [-0.5 * np.log(np.linalg.det(R)) for R in (R_WEAK, R_STRONG)]
    np.testing.assert_allclose(exact, [0.13854, 0.85187], atol=1e-4)
    np.testing.assert_allclose(est, exact, atol=0.08)


def test_permute_dims_permutes_every_dimension_independently():
    z = jnp.arange(40.0).reshape(10, 4) * jnp.array([1.0, 100.0, 1e4, 1e6])
    zp = factorvae.permute_dims(z, jax.random.key(0))
    zn, zpn = np.asarray(z), np.asarray(zp)
    perms = []
    for j in range(4):
        np.testing.assert_array_equal(np.sort(zpn[:, j]), np.sort(zn[:, j]))  # a permutation of column j
        perms.append(tuple(np.argsort(np.argsort(zpn[:, j]))))
    assert len(set(perms)) == 4  # each dimension has its own permutation
    assert not np.array_equal(zpn, zn)
    with pytest.raises(ValueError, match="batch of >= 2"):
        factorvae.permute_dims(z[:1], jax.random.key(0))


def _bce(logits, target):
    l = np.asarray(logits, np.float64)
    return np.mean(np.logaddexp(0.0, l) - target * l)


def _setup(digits):
    model = _model()
    x = jnp.asarray(digits[0].x[:16])
    return model, model.init(jax.random.key(0), x), x


def test_losses_match_numpy_and_train_their_own_parameters(digits):
    model, variables, x = _setup(digits)
    key = jax.random.key(4)
    enc = aet.base.encode(model, variables, x)
    z = aet.base.sample_posterior(model, enc, key, 1)[0]
    logits_z = np.asarray(aae.discriminate(model, variables, z), np.float64)
    # the VAE phase: −ELBO + γ mean D(z); γ = 0 is aet.vae.loss with the same key
    vae, vm = aet.vae.loss(model, variables, x, key, aux=True)
    for gamma in (0.0, 10.0):
        got, m = factorvae.loss(model, variables, x, key, gamma=gamma, aux=True)
        np.testing.assert_allclose(float(got), float(vae) + gamma * np.mean(logits_z), rtol=1e-5)
        np.testing.assert_allclose(float(m["tc"]), np.mean(logits_z), rtol=1e-5, atol=1e-7)
    # the discriminator phase: ½[BCE(D(z), 1) + BCE(D(z̄), 0)] with z̄ = permute_dims(z, fold_in(key, 1))
    zbar = factorvae.permute_dims(z, jax.random.fold_in(key, 1))
    logits_bar = aae.discriminate(model, variables, zbar)
    want = 0.5 * (_bce(logits_z, 1.0) + _bce(logits_bar, 0.0))
    np.testing.assert_allclose(float(factorvae.discriminator_loss(model, variables, x, key)), want, rtol=1e-5)
    # which parameters each loss moves
    g_vae = jax.grad(lambda v: factorvae.loss(model, v, x, key))(variables)["params"]
    g_disc = jax.grad(lambda v: factorvae.discriminator_loss(model, v, x, key))(variables)["params"]

    def size(tree):
        return max(float(jnp.max(jnp.abs(a))) for a in jax.tree_util.tree_leaves(tree))

    assert size(g_vae["discriminator"]) == 0.0 and size(g_vae["encoder"]) > 0 and size(g_vae["decoder"]) > 0
    assert size(g_disc["encoder"]) == 0.0 and size(g_disc["decoder"]) == 0.0 and size(g_disc["discriminator"]) > 0
    # the TC term's gradient reaches the encoder: γ changes the encoder's gradient
    g10 = jax.grad(lambda v: factorvae.loss(model, v, x, key, gamma=10.0))(variables)["params"]["encoder"]
    g0 = jax.grad(lambda v: factorvae.loss(model, v, x, key, gamma=0.0))(variables)["params"]["encoder"]
    assert size(jax.tree_util.tree_map(jnp.subtract, g10, g0)) > 1e-4


def test_variables_are_the_vaes_plus_a_discriminator(digits):
    model, variables, x = _setup(digits)
    vae = aet.VAE(model.encoder, model.decoder)
    template = vae.init(jax.random.key(0), x)
    rest = {k: v for k, v in variables["params"].items() if k != "discriminator"}
    assert jax.tree_util.tree_structure(rest) == jax.tree_util.tree_structure(template["params"])
    np.testing.assert_allclose(np.asarray(factorvae.elbo(model, variables, x, jax.random.key(1))),
                               np.asarray(aet.vae.elbo(vae, {"params": rest}, x, jax.random.key(1))), rtol=1e-6)


@pytest.mark.slow
def test_trains_on_digits(digits):
    train, val = digits
    model = _model(hidden=32, width=32, latent=4)
    x_val = jnp.asarray(val.x)
    v0 = model.init(jax.random.key(0), x_val[:2])
    elbo = jax.jit(functools.partial(factorvae.elbo, model, n_samples=4))
    before = float(jnp.mean(elbo(v0, x_val, jax.random.key(9))))
    loss_fn = functools.partial(factorvae.loss, model, gamma=10.0)
    variables, history = aet.train.fit(model, loss_fn, train, key=jax.random.key(0), optimizer=optax.adam(3e-3),
                                       epochs=5, batch_size=64, progress=False, variables=v0)
    after = float(jnp.mean(elbo(variables, x_val, jax.random.key(9))))
    loss = history["train"]["loss"]
    assert loss[-1] < loss[0], loss
    assert len(history["train"]["discriminator_loss"]) == 5
    # measured (seeds 0, 1): held-out ELBO −51.4 / −50.0 before, −28.5 / −28.4 after (gains of 22.8 and
    # 21.6); require half the gain and an ELBO above −33
    assert after > before + 11.0 and after > -33.0, (before, after)


def test_user_registered_likelihood(digits):
    """The reconstruction term is the user's log-likelihood: loss − KL − γ·TC = −mean log p(x|z)."""
    model = factorvae.FactorVAE(aet.JointGaussianLogEncoder(aet.MLP([16]), 2), FixedScaleDecoder(64), _disc(8))
    x = jnp.asarray(digits[0].x[:8])
    variables = model.init(jax.random.key(0), x)
    key = jax.random.key(3)
    value, m = factorvae.loss(model, variables, x, key, gamma=3.0, aux=True)
    z = aet.base.elbo_terms(model, variables, x, key).z[0]
    mu = np.asarray(aet.base.decode(model, variables, z).mu, np.float64)
    nll = np.mean(np.sum(0.5 * ((np.asarray(x) - mu) / 0.5) ** 2 + math.log(0.5) + 0.5 * math.log(2 * math.pi), 1))
    np.testing.assert_allclose(float(value - m["kl"] - 3.0 * m["tc"]), nll, rtol=1e-5)


def test_bad_hyperparameters_raise(digits):
    model, variables, x = _setup(digits)
    key = jax.random.key(0)
    with pytest.raises(ValueError, match="gamma"):
        factorvae.loss(model, variables, x, key, gamma=-1.0)
    for fn in (factorvae.loss, factorvae.discriminator_loss):
        with pytest.raises(ValueError, match="`x`"):
            fn(model, variables, x[:1], key)
    with pytest.raises(ValueError, match="discriminator"):
        factorvae.loss(model, {"params": {k: v for k, v in variables["params"].items() if k != "discriminator"}},
                       x, key)
    loss_fn = functools.partial(factorvae.loss, model)
    with pytest.raises(ValueError, match="optimizer"):
        aet.train.make_trainer(model, loss_fn, {"autoencoder": optax.adam(1e-3)})
    with pytest.raises(TypeError, match="optimizer"):
        aet.train.make_trainer(model, loss_fn, "adam")


def test_conditional_losses_reduce_to_the_unconditional_ones():
    """Both phases' losses take (x, c): at a constant label they equal the unconditional losses at the
    absorbed parameters (the same codes, the same permutation), with zero condition rows every labelling
    does, and the VAE phase's loss trains the condition's rows of the encoder and decoder. The
    discriminator sees the codes alone (its first layer has d inputs): the TC is that of
    q(z) = E_{x,c} q(z|x, c)."""
    enc, dec = small_vae_parts(data_dim=N_IN, hidden=8)
    model = factorvae.FactorVAE(enc, dec, _disc(8), n_conditions=K)
    variables = model.init(jax.random.key(3), cond_batch())
    assert variables["params"]["discriminator"]["body"]["dense_0"]["kernel"].shape[0] == LATENT
    check_conditional_loss(model, variables, functools.partial(factorvae.loss, gamma=3.0), BODIES, trained=BODIES)
    check_conditional_loss(model, variables, factorvae.discriminator_loss, BODIES, trained={})
    x, c = cond_batch()
    with pytest.raises(ValueError, match=r"`x` needs a batch of >= 2"):
        factorvae.loss(model, variables, (x[:1], c[:1]), jax.random.key(0))
    with pytest.raises(ValueError, match=r"`x` must be the pair \(x, c\)"):
        factorvae.discriminator_loss(model, variables, x, jax.random.key(0))
