"""Disentangled β-VAE (capacity annealing): the schedule C(e), the loss against a float64 NumPy
re-implementation, ``fit`` giving the loss its epoch (exactly, traced, compiled once), a digits run,
a user-registered likelihood, bad arguments, and the conditional model (the loss on (x, c) pairs, ``fit`` on
``Dataset(x, y)`` with the epoch, ``aet.sample(condition=)``)."""
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
from _conditional_checks import BODIES, K, N_IN, check_conditional_loss
from _conditional_checks import batch as cond_batch
from conftest import FixedScaleDecoder, small_vae_parts

import aetk_jax as aet
from aetk_jax import disentangledbetavae as dbv


def _schedule(e, C, W):
    """C(e) = C·min(e/W, 1) from the paper's description, in float64."""
    return C if W == 0 else C * min(e / W, 1.0)


def test_capacity_schedule():
    for C, W in ((50.0, 25), (7.0, 3), (2.5, 0)):
        for e in (0, 1, 2, 3, 10, 25, 26, 100):
            np.testing.assert_allclose(float(dbv.capacity(e, C, W)), _schedule(e, C, W), rtol=1e-6)
        assert float(dbv.capacity(None, C, W)) == C
    # traced, the same values
    traced = jax.jit(lambda e: dbv.capacity(e, 7.0, 3))(jnp.arange(6))
    np.testing.assert_allclose(np.asarray(traced), [_schedule(e, 7.0, 3) for e in range(6)], rtol=1e-6)


def _setup(digits, n=16):
    model = dbv.DisentangledBetaVAE(*small_vae_parts(hidden=16))
    x = jnp.asarray(digits[0].x[:n])
    return model, model.init(jax.random.key(0), x), x


def test_loss_matches_numpy_reference(digits):
    """−mean log p(x|z) + β·mean |KL_b − C(e)| with the Bernoulli likelihood and the closed-form KL,
    recomputed in float64 from the encoder's and decoder's outputs at the same draw."""
    model, variables, x = _setup(digits)
    key = jax.random.key(3)
    enc = aet.base.encode(model, variables, x)
    z = aet.base.sample_posterior(model, enc, key, 1)[0]
    logits = np.asarray(aet.base.decode(model, variables, z).logits, np.float64)
    mu, logsigma = (np.asarray(a, np.float64) for a in aet.encoders.gaussian_mu_logsigma(enc))
    xn = np.asarray(x, np.float64)
    loglik = np.sum(xn * logits - np.logaddexp(0.0, logits), axis=1)
    kl = 0.5 * np.sum(mu**2 + np.exp(2 * logsigma) - 1.0 - 2 * logsigma, axis=1)
    for epoch, beta in ((0, 10.0), (2, 3.0), (7, 10.0), (None, 1.0)):
        c = _schedule(5 if epoch is None else epoch, 4.0, 5)
        want = np.mean(-loglik + beta * np.abs(kl - c))
        got, m = dbv.loss(model, variables, x, key, beta=beta, C=4.0, warmup_epochs=5, epoch=epoch, aux=True)
        np.testing.assert_allclose(float(got), want, rtol=1e-5)
        np.testing.assert_allclose(float(m["capacity"]), c, rtol=1e-6)
        np.testing.assert_allclose(float(m["kl"]), np.mean(kl), rtol=1e-5)
    # β = 0 is the reconstruction term alone, i.e. the VAE loss minus its KL
    vae, vm = aet.vae.loss(model, variables, x, key, aux=True)
    np.testing.assert_allclose(float(dbv.loss(model, variables, x, key, beta=0.0)), float(vae - vm["kl"]), rtol=1e-5)


def _recording_loss(model, traces, **hyper):
    """The model's loss, counting its traces (a Python side effect runs only while tracing)."""

    def loss_fn(v, xb, k, *, epoch=None, aux=False):
        traces.append(epoch)
        return dbv.loss(model, v, xb, k, epoch=epoch, aux=aux, **hyper)

    return loss_fn


def test_fit_gives_the_loss_its_epoch_traced_and_compiled_once(digits):
    """The capacity the loss computes inside the compiled epoch (train and validation) is C(e) of the
    epoch fit is on, and three epochs trace the loss as often as one."""
    train, val = digits
    model = dbv.DisentangledBetaVAE(*small_vae_parts(hidden=8))
    x = train.x[:128]
    counts = []
    for epochs in (1, 4):
        traces = []
        _, history = aet.train.fit(model, _recording_loss(model, traces, C=6.0, warmup_epochs=3), x,
                                   key=jax.random.key(0), epochs=epochs, batch_size=64, val_data=val.x[:64],
                                   progress=False)
        counts.append(len(traces))
        assert all(isinstance(e, jax.core.Tracer) for e in traces)  # the epoch arrives traced
    want = [_schedule(e, 6.0, 3) for e in range(4)]  # 0, 2, 4, 6
    np.testing.assert_allclose(history["train"]["capacity"], want, rtol=1e-6)
    np.testing.assert_allclose(history["val"]["capacity"], want, rtol=1e-6)
    assert counts[0] > 0 and counts[1] == counts[0], counts


def test_make_step_passes_the_epoch_only_to_losses_that_take_it(digits):
    model, variables, x = _setup(digits)
    opt = optax.sgd(0.0)
    state = aet.train.init_state(variables, opt)
    step = aet.train.make_step(functools.partial(dbv.loss, model, C=3.0, warmup_epochs=3), opt)
    for e, c in ((0, 0.0), (1, 1.0), (5, 3.0)):
        _, m = step(state, x, jax.random.key(1), jnp.int32(e))
        np.testing.assert_allclose(float(m["capacity"]), c, rtol=1e-6)
    _, m = step(state, x, jax.random.key(1))  # no epoch: the full capacity
    assert float(m["capacity"]) == 3.0
    # a loss without an `epoch` parameter is called as before
    plain = aet.train.make_step(functools.partial(aet.vae.loss, model), opt)
    a, b = plain(state, x, jax.random.key(1), jnp.int32(4))[1], plain(state, x, jax.random.key(1))[1]
    assert float(a["loss"]) == float(b["loss"])


@pytest.mark.slow
def test_trains_on_digits(digits):
    train, val = digits
    model = dbv.DisentangledBetaVAE(*small_vae_parts(hidden=32))
    x_val = jnp.asarray(val.x)
    v0 = model.init(jax.random.key(0), x_val[:2])
    elbo = jax.jit(functools.partial(dbv.elbo, model, n_samples=4))
    before = float(jnp.mean(elbo(v0, x_val, jax.random.key(9))))
    loss_fn = functools.partial(dbv.loss, model, beta=10.0, C=4.0, warmup_epochs=3)
    variables, history = aet.train.fit(model, loss_fn, train, key=jax.random.key(0), optimizer=optax.adam(3e-3),
                                       epochs=5, batch_size=64, val_data=val, progress=False, variables=v0)
    after = float(jnp.mean(elbo(variables, x_val, jax.random.key(9))))
    loss = history["train"]["loss"]
    assert loss[-1] < loss[0], loss
    # measured (seeds 0, 1): held-out ELBO −51.1 / −50.3 before, −31.3 after (a gain of 19.8); require
    # half the gain and an ELBO above −36
    assert after > before + 10.0 and after > -36.0, (before, after)
    # the validation KL follows the capacity C(e) = 0, 1.33, 2.67, 4, 4: measured 1.68 / 1.51, 2.56 / 2.38,
    # 3.79 / 3.78, 4.08 / 4.08 in epochs 1–4 (at most 0.35 away); require 0.6 (a VAE's KL here: 1.8)
    kl = history["val"]["kl"]
    for e in range(1, 5):
        assert abs(kl[e] - 4.0 * min(e / 3, 1.0)) < 0.6, kl


def test_user_registered_likelihood(digits):
    """β = 0: the loss is −mean log p(x|z) under the user's likelihood at the VAE's draw."""
    enc = aet.JointGaussianLogEncoder(aet.MLP([16]), 2)
    model = dbv.DisentangledBetaVAE(enc, FixedScaleDecoder(64))
    x = jnp.asarray(digits[0].x[:8])
    variables = model.init(jax.random.key(0), x)
    key = jax.random.key(3)
    value = dbv.loss(model, variables, x, key, beta=0.0, epoch=2)
    z = aet.base.elbo_terms(model, variables, x, key).z[0]
    mu = np.asarray(aet.base.decode(model, variables, z).mu, np.float64)
    ref = np.mean(np.sum(0.5 * ((np.asarray(x) - mu) / 0.5) ** 2 + math.log(0.5) + 0.5 * math.log(2 * math.pi), 1))
    np.testing.assert_allclose(float(value), ref, rtol=1e-5)


def test_bad_hyperparameters_raise(digits):
    model, variables, x = _setup(digits)
    key = jax.random.key(0)
    for kw, name in ((dict(beta=-1.0), "beta"), (dict(C=-0.5), "C"), (dict(C=float("nan")), "C"),
                     (dict(warmup_epochs=-1), "warmup_epochs"), (dict(epoch=-1), "epoch")):
        with pytest.raises(ValueError, match=f"`{name}`"):
            dbv.loss(model, variables, x, key, **kw)
    with pytest.raises(TypeError, match="warmup_epochs"):
        dbv.loss(model, variables, x, key, warmup_epochs=2.5)


def test_conditional_loss_fit_and_samples():
    """The loss on (x, c) reduces to the unconditional one (constant label, zero condition rows) at an
    epoch of the warm-up; ``fit`` on ``Dataset(x, y)`` gives the conditional loss its epoch (the capacity
    C(e) of each epoch) and ``aet.sample(condition=)`` decodes one code under each label."""
    enc, dec = small_vae_parts(data_dim=N_IN, hidden=8)
    model = dbv.DisentangledBetaVAE(enc, dec, n_conditions=K)
    v0 = model.init(jax.random.key(3), cond_batch())
    loss = functools.partial(dbv.loss, beta=3.0, C=4.0, warmup_epochs=5, epoch=2)
    check_conditional_loss(model, v0, loss, BODIES, trained=BODIES)
    x, y = cond_batch(32, seed=1)
    variables, history = aet.train.fit(model, functools.partial(dbv.loss, model, C=6.0, warmup_epochs=3),
                                       aet.data.Dataset(np.asarray(x), np.asarray(y)), key=jax.random.key(0),
                                       epochs=2, batch_size=16, progress=False, variables=v0)
    np.testing.assert_allclose(history["train"]["capacity"], [0.0, 2.0], rtol=1e-6)
    s = aet.sample(model, variables, jax.random.key(2), 3, condition=jnp.array([0, 1, 2]))
    s0 = aet.sample(model, variables, jax.random.key(2), 3, condition=jnp.zeros(3, jnp.int32))
    np.testing.assert_array_equal(s.z, s0.z)
    assert s.x.shape == (3, N_IN) and not np.allclose(s.x[1:], s0.x[1:])
