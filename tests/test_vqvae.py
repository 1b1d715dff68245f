"""VQ-VAE and HRQ-VAE: quantisation, straight-through gradients, losses, EMA, restarts, prior, training."""
from __future__ import annotations

import functools
import os

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from _conditional_checks import BODIES, K, LATENT, N_IN, check_conditional_loss
from _conditional_checks import batch as cond_batch

import aetk_jax as aet
from aetk_jax import base, builders, cli, hrqvae, vqvae
from aetk_jax import checkpoint as ckpt


def parts(latent=3, hidden=16, data_dim=8):
    enc = aet.encoders.Encoder(aet.MLP([hidden], final_activation=nn.relu), latent)
    dec = aet.decoders.Decoder(aet.MLP([hidden], final_activation=nn.relu), data_dim)
    return enc, dec


def with_codebook(model, variables, cb):
    """``variables`` with the codebooks replaced by ``cb`` ``(L, K, D)``."""
    if model.use_ema:
        ema = {"codebook": cb, "cluster_size": jnp.ones(cb.shape[:2]), "embed_sum": cb}
        return {**variables, vqvae.EMA: {"quantiser": ema}}
    params = {**variables["params"], "quantiser": {"codebook": cb}}
    return {**variables, "params": params}


def np_nearest(z, cb):
    d = ((z[:, None, :] - cb[None]) ** 2).sum(-1)
    return d.argmin(-1), d


# --------------------------------------------------------------------------- quantisation and gradients


def test_nearest_code_matches_float64_argmin(rng):
    z = rng.normal(size=(400, 5))
    cb = rng.normal(size=(37, 5))
    idx, d = np_nearest(z, cb)
    gap = np.sort(d, axis=1)[:, 1] - np.sort(d, axis=1)[:, 0]
    assert gap.min() > 1e-4  # no near-ties: float32 must agree with float64 everywhere
    got = vqvae.nearest_code(jnp.asarray(z, jnp.float32), jnp.asarray(cb, jnp.float32))
    np.testing.assert_array_equal(np.asarray(got), idx)
    np.testing.assert_allclose(vqvae.squared_distances(jnp.asarray(z), jnp.asarray(cb)), d, rtol=1e-4, atol=1e-4)


def test_straight_through_gradient_is_the_identity_on_the_encoder_side(rng):
    z = jnp.asarray(rng.normal(size=(6, 4)), jnp.float32)
    cb = jnp.asarray(rng.normal(size=(1, 9, 4)), jnp.float32)
    w = jnp.asarray(rng.normal(size=(6, 4)), jnp.float32)

    def f(u):
        return jnp.sum(jnp.sin(u) * w)

    zq = vqvae.residual_quantise(z, cb).z_q
    np.testing.assert_allclose(zq, cb[0][np_nearest(np.asarray(z), np.asarray(cb[0]))[0]], atol=1e-6)
    g_ze = jax.grad(lambda u: f(vqvae.residual_quantise(u, cb).z_q))(z)
    np.testing.assert_allclose(g_ze, jax.grad(f)(zq), rtol=1e-6)  # = cos(z_q)·w
    # the decoder path gives the codebook no gradient
    g_cb = jax.grad(lambda c: f(vqvae.residual_quantise(z, c).z_q))(cb)
    assert float(jnp.max(jnp.abs(g_cb))) == 0.0


def test_codebook_gradient_comes_only_from_the_quantisation_term(rng):
    enc, dec = parts()
    model = vqvae.VQVAE(enc, dec, 5)
    x = jnp.asarray(rng.uniform(size=(12, 8)), jnp.float32)
    v = model.init(jax.random.key(0), x)
    cb = jnp.asarray(rng.normal(size=(1, 5, 3)), jnp.float32)
    v = with_codebook(model, v, cb)

    @jax.jit
    def grads(qf, cf):
        return jax.grad(lambda p: vqvae.loss(model, {**v, "params": p}, x, commitment_loss_factor=cf,
                                             quantization_loss_factor=qf))(v["params"])

    g0, g1, g3 = grads(0.0, 0.25), grads(1.0, 0.25), grads(1.0, 3.0)
    assert float(jnp.max(jnp.abs(g0["quantiser"]["codebook"]))) == 0.0
    # d/de_k (1/B) Σ_b ‖sg[z_b] − e_{k_b}‖² = (2/B) Σ_{b: k_b = k} (e_k − z_b)
    z = np.asarray(vqvae.continuous_codes(model, v, x), np.float64)
    idx, _ = np_nearest(z, np.asarray(cb[0], np.float64))
    ref = np.zeros((5, 3))
    for b, k in enumerate(idx):
        ref[k] += 2.0 / len(z) * (np.asarray(cb[0], np.float64)[k] - z[b])
    np.testing.assert_allclose(g1["quantiser"]["codebook"][0], ref, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(g3["quantiser"]["codebook"], g1["quantiser"]["codebook"], rtol=1e-6)  # not commitment
    for a, b in zip(jax.tree_util.tree_leaves(g0["encoder"]), jax.tree_util.tree_leaves(g1["encoder"])):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)  # the encoder does not see the codebook term


def test_loss_terms_and_metrics_against_numpy(rng):
    enc, dec = parts()
    model = vqvae.VQVAE(enc, dec, 6)
    x = jnp.asarray(rng.uniform(size=(10, 8)), jnp.float32)
    v = model.init(jax.random.key(1), x)
    cb = jnp.asarray(rng.normal(size=(1, 6, 3)), jnp.float32)
    v = with_codebook(model, v, cb)
    value, m = vqvae.loss(model, v, x, commitment_loss_factor=0.3, quantization_loss_factor=0.7, aux=True)
    z = np.asarray(vqvae.continuous_codes(model, v, x), np.float64)
    idx, _ = np_nearest(z, np.asarray(cb[0], np.float64))
    zq = np.asarray(cb[0], np.float64)[idx]
    x_hat = np.asarray(base.decode(model, v, jnp.asarray(zq, jnp.float32)), np.float64)
    recon = ((x_hat - np.asarray(x)) ** 2).sum(-1)
    vq = ((z - zq) ** 2).sum(-1)
    np.testing.assert_allclose(m["reconstruction"], recon.mean(), rtol=1e-5)
    np.testing.assert_allclose(m["quantization"], vq.mean(), rtol=1e-5)
    np.testing.assert_allclose(m["commitment"], vq.mean(), rtol=1e-5)
    np.testing.assert_allclose(value, (recon + 0.7 * vq + 0.3 * vq).mean(), rtol=1e-5)
    counts = np.bincount(idx, minlength=6)
    p = counts[counts > 0] / counts.sum()
    np.testing.assert_allclose(m["perplexity"], np.exp(-(p * np.log(p)).sum()), rtol=1e-5)
    assert float(m["codes_used"]) == (counts > 0).sum()
    np.testing.assert_allclose(m["codebook_usage"], (counts > 0).sum() / 6, rtol=1e-6)
    # under jit / grad as well
    jitted = jax.jit(vqvae.loss, static_argnums=0)(model, v, x, commitment_loss_factor=0.3,
                                                   quantization_loss_factor=0.7)
    np.testing.assert_allclose(jitted, value, rtol=1e-6)


# --------------------------------------------------------------------------- EMA and restarts


def np_ema(cb, z, steps, decay, eps=1e-5):
    """Float64 re-implementation of the EMA rule over ``steps`` identical batches ``z`` (N, D)."""
    k = cb.shape[0]
    n, s = np.ones(k), cb.copy()
    for _ in range(steps):
        idx, _ = np_nearest(z, cb)
        counts = np.bincount(idx, minlength=k).astype(float)
        sums = np.zeros_like(cb)
        np.add.at(sums, idx, z)
        n = decay * n + (1 - decay) * counts
        s = decay * s + (1 - decay) * sums
        tot = n.sum()
        cb = s / ((n + eps) / (tot + k * eps) * tot)[:, None]
    return cb, n, s


@pytest.mark.parametrize("decay", [0.99, 0.6])
def test_ema_updates_match_a_float64_reference(rng, decay):
    enc, dec = parts()
    model = vqvae.VQVAE(enc, dec, 7, use_ema=True, decay=decay)
    x = jnp.asarray(rng.uniform(size=(30, 8)), jnp.float32)
    v = model.init(jax.random.key(2), x)
    z = np.asarray(vqvae.continuous_codes(model, v, x), np.float64)
    cb0 = z[rng.choice(len(z), 7, replace=False)] + 0.01 * rng.normal(size=(7, 3))
    v = with_codebook(model, v, jnp.asarray(cb0, jnp.float32)[None])
    assert "quantiser" not in v["params"]  # the EMA codebook is not trainable
    update = jax.jit(functools.partial(vqvae.codebook_update, model))
    for _ in range(4):
        params, coll = update(v, v["params"], x, jax.random.key(0))
        v = {**coll, "params": params}
    ref_cb, ref_n, ref_s = np_ema(cb0, z, 4, decay)
    got = v[vqvae.EMA]["quantiser"]
    np.testing.assert_allclose(got["cluster_size"][0], ref_n, rtol=1e-5)
    np.testing.assert_allclose(got["embed_sum"][0], ref_s, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(got["codebook"][0], ref_cb, rtol=1e-4, atol=1e-5)
    assert np.abs(ref_cb - cb0).max() > 1e-3  # the reference moved the codebook


def test_dead_codes_restart_from_batch_encodings(rng):
    enc, dec = parts()
    for ema in (False, True):
        model = vqvae.VQVAE(enc, dec, 6, use_ema=ema, restart_after=2)
        x = jnp.asarray(rng.uniform(size=(16, 8)), jnp.float32)
        v = model.init(jax.random.key(3), x)
        z = np.asarray(vqvae.continuous_codes(model, v, x))
        far = 1e3 * np.ones((4, 3))  # four codes nobody chooses
        cb = np.concatenate([z[:2], far]).astype(np.float32)
        v = with_codebook(model, v, jnp.asarray(cb[None]))
        p1, c1 = vqvae.codebook_update(model, v, v["params"], x, jax.random.key(5))
        np.testing.assert_array_equal(c1[vqvae.USAGE]["quantiser"]["unused"][0], [0, 0, 1, 1, 1, 1])
        v1 = {**c1, "params": p1}
        # one step unused: kept (with EMA moved only by the O(ε) Laplace smoothing)
        np.testing.assert_allclose(vqvae.codebook(model, v1)[0, 2:], far, rtol=1e-4)
        p2, c2 = vqvae.codebook_update(model, v1, p1, x, jax.random.key(6))
        v2 = {**c2, "params": p2}
        new = np.asarray(vqvae.codebook(model, v2)[0])
        np.testing.assert_array_equal(c2[vqvae.USAGE]["quantiser"]["unused"][0], 0)
        for row in new[2:]:  # each dead code is now one of the batch's encodings
            assert np.min(np.abs(z - row).max(axis=1)) < 1e-6
        if not ema:
            np.testing.assert_array_equal(new[:2], cb[:2])
        else:
            np.testing.assert_array_equal(c2[vqvae.EMA]["quantiser"]["cluster_size"][0, 2:], 1.0)


# --------------------------------------------------------------------------- HRQ


def test_residual_levels_never_increase_the_error_when_each_codebook_has_zero(rng):
    z = jnp.asarray(rng.normal(size=(200, 3)), jnp.float32)
    cb = rng.normal(size=(5, 8, 3)) * 0.6 ** np.arange(5)[:, None, None]
    with_zero = jnp.asarray(np.concatenate([np.zeros((5, 1, 3)), cb[:, 1:]], axis=1), jnp.float32)
    q = vqvae.residual_quantise(z, with_zero)
    partial = np.cumsum(np.asarray(q.levels), axis=0)  # (L, N, D)
    errors = np.linalg.norm(np.asarray(z)[None] - partial, axis=-1)  # ‖r_l‖
    errors = np.concatenate([np.linalg.norm(np.asarray(z), axis=-1)[None], errors])
    assert np.all(np.diff(errors, axis=0) <= 1e-6)
    assert np.mean(np.diff(errors, axis=0) < -1e-3) > 0.3  # and the levels do correct
    # level l quantises the residual of the levels above it (float64 reference)
    r = np.asarray(z, np.float64)
    for lvl in range(5):
        idx, _ = np_nearest(r, np.asarray(with_zero[lvl], np.float64))
        np.testing.assert_array_equal(np.asarray(q.codes[:, lvl]), idx)
        r = r - np.asarray(with_zero[lvl], np.float64)[idx]
    # without a zero code a deeper level can make the error worse: the condition matters
    q2 = vqvae.residual_quantise(z, jnp.asarray(cb + 3.0, jnp.float32))
    e2 = np.linalg.norm(np.asarray(z)[None] - np.cumsum(np.asarray(q2.levels), 0), axis=-1)
    assert np.any(np.diff(e2, axis=0) > 0.1)


def test_hrq_init_depth_dropout_and_norm_penalty(rng):
    cb = hrqvae.sphere_init(jax.random.key(0), (4, 10, 3), 2.0, 0.5)
    np.testing.assert_allclose(jnp.linalg.norm(cb, axis=-1), np.broadcast_to([[2.0], [1.0], [0.5], [0.25]], (4, 10)),
                               rtol=1e-5)
    keep = np.asarray(vqvae.depth_mask(jax.random.key(1), 4, (20000,), 0.3))
    assert np.all(keep[0] == 1) and np.all(np.diff(keep, axis=0) <= 0)  # level 1 kept, prefixes only
    np.testing.assert_allclose(keep[1:].mean(axis=1), [0.7, 0.49, 0.343], atol=0.012)
    levels = jnp.asarray(rng.normal(size=(3, 5, 4)), jnp.float32)
    n = np.linalg.norm(np.asarray(levels, np.float64), axis=-1)
    ref = ((np.maximum(n[1:] / n[:-1] * 1.5, 1.0) - 1.0) ** 2).mean(0)
    np.testing.assert_allclose(vqvae.norm_penalty(levels, 1.5), ref, rtol=1e-5)


# --------------------------------------------------------------------------- the prior and sampling


def test_code_prior_counts_and_sampling(rng):
    codes = jnp.asarray(rng.integers(0, 4, size=(500, 3)), jnp.int32)  # (N, L), one position
    first, trans = vqvae.code_counts(codes, 4)
    c = np.asarray(codes)
    np.testing.assert_array_equal(first, np.bincount(c[:, 0], minlength=4))
    ref = np.zeros((2, 4, 4))
    for lvl in range(2):
        np.add.at(ref[lvl], (c[:, lvl], c[:, lvl + 1]), 1)
    np.testing.assert_array_equal(trans, ref)
    # a deterministic chain 2 -> 0 -> 3 is sampled exactly
    eye = np.eye(4)
    prior = {"first": jnp.asarray(eye[2]), "transitions": jnp.asarray(np.stack([eye[[1, 1, 0, 1]], eye[[3, 3, 3, 3]]]))}
    np.testing.assert_array_equal(vqvae.sample_codes(prior, jax.random.key(0), 5), np.tile([2, 0, 3], (5, 1)))
    lp = vqvae.log_code_prior(prior, jnp.asarray([[2, 0, 3]]))
    np.testing.assert_allclose(lp, 0.0, atol=1e-6)


# --------------------------------------------------------------------------- training


def _fit(model, loss_fn, x, epochs, **kw):
    return aet.train.fit(model, loss_fn, x, key=jax.random.key(0), optimizer=optax.adam(3e-3), epochs=epochs,
                         batch_size=64, progress=False, **kw)


@pytest.mark.slow
def test_vqvae_trains_on_digits_uses_codes_samples_and_resumes_bit_exactly(digits, tmp_path):
    """An EMA run with restarts: the loss falls, > 1 code is used, sampling works after fitting the prior,
    and the run resumed after its 4th epoch ends bit-identical to the uninterrupted one."""
    train, val = digits
    x, xv = jnp.asarray(train.x), jnp.asarray(val.x)
    enc, dec = parts(latent=8, hidden=64, data_dim=64)
    model = vqvae.VQVAE(enc, dec, 32, use_ema=True, restart_after=20)
    loss_fn, d = functools.partial(vqvae.loss, model), str(tmp_path)
    variables, history = _fit(model, loss_fn, x, 6, checkpoint_dir=d, keep_checkpoints=100)
    losses = history["train"]["loss"]
    assert losses[-1] < 0.7 * losses[0]
    _, m = vqvae.loss(model, variables, xv, aux=True)
    baseline = float(jnp.mean(jnp.sum((xv - jnp.mean(x, axis=0)) ** 2, axis=-1)))  # the mean image
    assert float(m["reconstruction"]) < 0.8 * baseline  # 32 codes: a 32-point quantiser of the data
    assert float(m["codes_used"]) > 1 and float(m["perplexity"]) > 4
    fitted = vqvae.fit_code_prior(model, variables, x)
    s = aet.sample(model, fitted, jax.random.key(1), 16)
    assert s.x.shape == (16, 64) and s.z.shape == (16, 8) and np.all(np.isfinite(s.x))
    cb = np.asarray(vqvae.codebook(model, fitted)[0])
    assert all(np.min(np.abs(cb - zi).max(axis=1)) < 1e-6 for zi in np.asarray(s.z))  # draws are codes
    with pytest.raises(ValueError, match="fit_code_prior"):
        aet.sample(model, variables, jax.random.key(1), 4)
    # resume: as if the run had been killed after its 4th epoch
    for e in (4, 5):
        ckpt.remove(ckpt.path_for(d, e))
    resumed, hist = _fit(model, loss_fn, x, 6, checkpoint_dir=d, resume=True, keep_checkpoints=100)
    assert set(resumed) == {"params", vqvae.EMA, vqvae.USAGE}
    for a, b in zip(jax.tree_util.tree_leaves(variables), jax.tree_util.tree_leaves(resumed)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    assert hist == history


@pytest.mark.slow
def test_hrqvae_trains_on_digits(digits):
    train, val = digits
    x, xv = jnp.asarray(train.x), jnp.asarray(val.x)
    enc, dec = parts(latent=4, hidden=32, data_dim=64)
    model = aet.HRQVAE(enc, dec, n_embeddings=16, n_levels=3)
    variables, history = _fit(model, functools.partial(hrqvae.loss, model), x, 6)
    losses = history["train"]["loss"]
    assert losses[-1] < 0.7 * losses[0]
    _, m = hrqvae.loss(model, variables, xv, depth_drop_rate=0.0, aux=True)
    baseline = float(jnp.mean(jnp.sum((xv - jnp.mean(x, axis=0)) ** 2, axis=-1)))
    assert float(m["reconstruction"]) < 0.8 * baseline
    assert float(m["codes_used"]) > 1


# --------------------------------------------------------------------------- arguments


def test_bad_hyper_parameters_raise_naming_the_argument(rng):
    enc, dec = parts()
    for kw, name in (({"n_embeddings": 0}, "n_embeddings"), ({"decay": 1.0}, "decay"), ({"decay": -0.1}, "decay"),
                     ({"restart_after": -1}, "restart_after")):
        with pytest.raises(ValueError, match=name):
            vqvae.VQVAE(enc, dec, **kw)
    with pytest.raises(ValueError, match="n_levels"):
        aet.HRQVAE(enc, dec, n_levels=0)
    model = vqvae.VQVAE(enc, dec, 4)
    x = jnp.asarray(rng.uniform(size=(4, 8)), jnp.float32)
    v = model.init(jax.random.key(0), x)
    for kw in ({"commitment_loss_factor": -1.0}, {"quantization_loss_factor": -0.5}):
        with pytest.raises(ValueError, match=next(iter(kw))):
            vqvae.loss(model, v, x, **kw)
    h = aet.HRQVAE(enc, dec, n_embeddings=4, n_levels=2)
    hv = h.init(jax.random.key(0), x)
    with pytest.raises(ValueError, match="norm_loss_weight"):
        hrqvae.loss(h, hv, x, jax.random.key(0), norm_loss_weight=-1.0)
    with pytest.raises(ValueError, match="depth_drop_rate"):
        hrqvae.loss(h, hv, x, jax.random.key(0), depth_drop_rate=1.0)


def test_cli_recipes_build_vq_models_from_the_data_shape():
    from aetk_jax import builders

    x = jnp.zeros((5, 64), jnp.float32)
    for name, cls in (("vqvae", aet.VQVAE), ("hrqvae", aet.HRQVAE)):
        recipe = builders.build(name, (64,), latent_dim=3)
        assert type(recipe.model) is cls and isinstance(recipe.model.encoder, aet.encoders.Encoder)
        assert isinstance(recipe.model.decoder, aet.decoders.Decoder) and recipe.hyper == {}
        v = jax.eval_shape(recipe.model.init, jax.random.key(0), x)
        assert vqvae.codebook(recipe.model, v).shape == (recipe.model.n_levels, recipe.model.n_embeddings, 3)


# --------------------------------------------------------------------------- Gumbel-softmax codes (HRQ-VAE)


def test_gumbel_relaxation_tends_to_the_hard_code_and_draws_follow_the_softmax(rng):
    """Fixed noise: the soft weights at τ → 0 are the one-hot of argmax(a + g), and the value is that code;
    the drawn codes are distributed as softmax(a) (the Gumbel-max property; float64 reference)."""
    z = jnp.asarray(rng.normal(size=(1, 3)) * 0.5, jnp.float32)
    cb = jnp.asarray(rng.normal(size=(1, 5, 3)) * 0.5, jnp.float32)
    key = jax.random.key(3)
    q, logits = vqvae.gumbel_quantise(z, cb, key, 1.0)
    a = -((np.asarray(z, np.float64)[:, None] - np.asarray(cb[0], np.float64)[None]) ** 2).sum(-1)
    np.testing.assert_allclose(logits[0], a, rtol=1e-5, atol=1e-6)
    g = np.asarray(jax.random.gumbel(jax.random.split(key, 1)[0], (1, 5), jnp.float32), np.float64)
    k_star = int(np.argmax(a + g))
    assert int(q.codes[0, 0]) == k_star
    np.testing.assert_allclose(q.z_q[0], cb[0, k_star], rtol=1e-6)
    for tau, close in ((1.0, False), (1e-3, True)):
        y = np.exp((a + g) / tau - np.max((a + g) / tau))
        y /= y.sum()
        assert np.allclose(y, np.eye(5)[k_star], atol=1e-6) == close  # the relaxation tends to the hard code
    # 4000 draws: code frequencies against softmax(a) (binomial standard error < 0.008)
    z_many = jnp.broadcast_to(z, (4000, 3))
    codes = np.asarray(vqvae.gumbel_quantise(z_many, cb, jax.random.key(4), 0.7)[0].codes[:, 0])
    p = np.exp(a[0] - a[0].max())
    p /= p.sum()
    np.testing.assert_allclose(np.bincount(codes, minlength=5) / 4000, p, atol=0.03)


def test_gumbel_gradient_reaches_every_code_through_the_soft_weights(rng):
    """For f(z_q) = wᵀz_q with one level: ∂f/∂e_j = 1[j = k*] w + (y_j/τ)(e_jᵀw − Σ_k y_k e_kᵀw) · 2(r − e_j)
    (the straight-through Gumbel-softmax; float64 NumPy), nonzero for codes not chosen; z gets the
    gradient through the logits only."""
    z = jnp.asarray(rng.normal(size=(1, 3)) * 0.5, jnp.float32)
    cb = jnp.asarray(rng.normal(size=(1, 4, 3)) * 0.5, jnp.float32)
    w = jnp.asarray(rng.normal(size=(3,)), jnp.float32)
    key, tau = jax.random.key(5), 0.8

    def f(zz, c):
        return jnp.sum(vqvae.gumbel_quantise(zz, c, key, tau)[0].z_q * w)

    g_z, g_cb = jax.grad(f, argnums=(0, 1))(z, cb)
    r, e, w64 = (np.asarray(a, np.float64) for a in (z[0], cb[0], w))
    a = -((r[None] - e) ** 2).sum(-1)
    g = np.asarray(jax.random.gumbel(jax.random.split(key, 1)[0], (1, 4), jnp.float32), np.float64)[0]
    y = np.exp((a + g) / tau - np.max((a + g) / tau))
    y /= y.sum()
    k_star = int(np.argmax(a + g))
    ew = e @ w64
    coef = y / tau * (ew - y @ ew)
    ref = np.eye(4)[k_star][:, None] * w64[None] + coef[:, None] * 2.0 * (r[None] - e)
    np.testing.assert_allclose(g_cb[0], ref, rtol=1e-4, atol=1e-6)
    assert np.all(np.abs(np.delete(np.asarray(g_cb[0]), k_star, axis=0)).sum(axis=1) > 1e-4)
    np.testing.assert_allclose(g_z[0], (coef[:, None] * -2.0 * (r[None] - e)).sum(0), rtol=1e-4, atol=1e-6)


def test_gumbel_schedule_and_loss_terms(rng):
    """τ_l(e) = max(τ₀ exp(−e/(γ 1.5^l)), τ_min); the loss adds kl_weight · KL(softmax(a) ‖ U) (float64) and
    under jit takes a traced epoch; EMA codebooks and bad temperatures are refused naming the argument."""
    taus = hrqvae.gumbel_temperatures(10, 3, 2.0, 20.0, 0.5)
    np.testing.assert_allclose(taus, np.maximum(2.0 * np.exp(-10 / (20.0 * 1.5 ** np.arange(3))), 0.5), rtol=1e-6)
    np.testing.assert_allclose(hrqvae.gumbel_temperatures(200, 3), 0.5)
    np.testing.assert_allclose(hrqvae.gumbel_temperatures(None, 2, 3.0), 0.5)
    enc, dec = parts()
    model = aet.HRQVAE(enc, dec, n_embeddings=5, n_levels=2)
    x = jnp.asarray(rng.uniform(size=(6, 8)), jnp.float32)
    v = model.init(jax.random.key(0), x)
    key = jax.random.key(1)
    kw = dict(quantiser="gumbel", depth_drop_rate=0.0)
    v0, m0 = hrqvae.loss(model, v, x, key, kl_weight=0.0, aux=True, **kw)
    v1, m1 = hrqvae.loss(model, v, x, key, kl_weight=0.3, aux=True, **kw)
    zq, _ = vqvae.gumbel_quantise(vqvae.continuous_codes(model, v, x), vqvae.codebook(model, v),
                                  jax.random.split(key)[1], 0.5)
    z = np.asarray(vqvae.continuous_codes(model, v, x), np.float64)
    cbs = np.asarray(vqvae.codebook(model, v), np.float64)
    kl, r = 0.0, z
    for lvl in range(2):  # the residual after the drawn codes (the value of q_l is e_{k_l})
        a = -((r[:, None] - cbs[lvl][None]) ** 2).sum(-1)
        p = np.exp(a - a.max(1, keepdims=True))
        p /= p.sum(1, keepdims=True)
        kl = kl + (p * np.log(p)).sum(1) + np.log(5)
        r = r - cbs[lvl][np.asarray(zq.codes[:, lvl])]
    np.testing.assert_allclose(m1["kl"], kl.mean(), rtol=1e-4)
    np.testing.assert_allclose(v1 - v0, 0.3 * kl.mean(), rtol=1e-4)
    assert float(m1["temperature"]) == 0.5
    jitted = jax.jit(lambda e: hrqvae.loss(model, v, x, key, epoch=e, aux=True, **kw)[1]["temperature"])
    np.testing.assert_allclose(jitted(jnp.int32(0)), 1.0)
    ema = aet.HRQVAE(enc, dec, n_embeddings=5, n_levels=2, use_ema=True)
    with pytest.raises(ValueError, match="quantiser"):
        hrqvae.loss(ema, ema.init(jax.random.key(0), x), x, key, quantiser="gumbel")
    for bad, name in (({"quantiser": "soft"}, "quantiser"), ({"quantiser": "gumbel", "temperature": 0.0},
                      "temperature"), ({"quantiser": "gumbel", "kl_weight": -1.0}, "kl_weight")):
        with pytest.raises(ValueError, match=name):
            hrqvae.loss(model, v, x, key, **bad)


@pytest.mark.slow
def test_hrqvae_with_gumbel_codes_trains_on_digits(digits):
    """The Gumbel option (its default objective: no VQ terms) trains, τ annealed through fit's epoch, to below
    0.8 of the mean-image error with nearest codes."""
    train, val = digits
    x, xv = jnp.asarray(train.x), jnp.asarray(val.x)
    enc, dec = parts(latent=4, hidden=32, data_dim=64)
    model = aet.HRQVAE(enc, dec, n_embeddings=16, n_levels=3)
    loss_fn = functools.partial(hrqvae.loss, model, quantiser="gumbel", temperature_decay=2.0, norm_loss_weight=0.0,
                                depth_drop_rate=0.0)
    variables, history = _fit(model, loss_fn, x, 15)
    assert history["train"]["loss"][-1] < 0.7 * history["train"]["loss"][0]
    assert history["train"]["temperature"][0] == 1.0 and history["train"]["temperature"][-1] == 0.5
    assert history["train"]["commitment"][-1] > 0  # the terms are still reported, with weight 0
    _, m = hrqvae.loss(model, variables, xv, depth_drop_rate=0.0, aux=True)  # nearest codes at evaluation
    baseline = float(jnp.mean(jnp.sum((xv - jnp.mean(x, axis=0)) ** 2, axis=-1)))
    assert float(m["reconstruction"]) < 0.8 * baseline
    assert float(m["codes_used"]) > 1


# --------------------------------------------------------------------------- conditional models


def _conditional(name, **model_kw):
    recipe = builders.build(name, (N_IN,), latent_dim=LATENT, hidden=(8,))
    model = recipe.model.clone(n_conditions=K, restart_after=0, **model_kw)  # no int collection: grad of all
    return model, model.init(jax.random.key(3), cond_batch())


@pytest.mark.parametrize("name, hyper", [("vqvae", {}), ("hrqvae", {}), ("hrqvae", {"quantiser": "gumbel"})])
def test_vq_models_are_conditional(name, hyper):
    """z_e(x, c) and p(x|z_q, c): a constant label is the unconditional loss at the absorbed parameters,
    zero condition rows make the label irrelevant, and the condition's rows get gradient
    (``_conditional_checks``); depth dropout and the Gumbel draws use the same key in both."""
    model, variables = _conditional(name)
    loss = functools.partial(vqvae.loss if name == "vqvae" else hrqvae.loss, **hyper)
    check_conditional_loss(model, variables, loss, BODIES, trained=BODIES)


def test_conditional_code_prior_is_fitted_per_label_and_sampled_under_the_label(rng):
    """fit_code_prior of a label-conditional HRQ-VAE: p(k_1 | y) and the transitions are the code counts of
    each label's examples (NumPy); aet.sample draws sample i's codes from p(· | y_i) and decodes them under y_i."""
    model, variables = _conditional("hrqvae")
    x = jnp.asarray(rng.uniform(size=(60, N_IN)), jnp.float32)
    c = jnp.asarray(np.r_[rng.integers(0, K - 1, 59), K - 1], jnp.int32)
    n_emb = model.n_embeddings
    spread = rng.normal(size=(4, n_emb, LATENT)) * 0.5 ** np.arange(4)[:, None, None]  # codes in use at every level
    variables = {**variables, "params": {**variables["params"], "quantiser": {"codebook": jnp.asarray(
        spread, jnp.float32)}}}
    fitted = vqvae.fit_code_prior(model, variables, (x, c), batch_size=25)
    codes, labels = np.asarray(vqvae.quantise(model, variables, (x, c)).codes), np.asarray(c)
    prior = fitted[vqvae.PRIOR]
    assert prior["first"].shape == (K, n_emb) and prior["transitions"].shape == (K, 3, n_emb, n_emb)
    for y in range(K):
        mine = codes[labels == y]
        np.testing.assert_allclose(prior["first"][y], np.bincount(mine[:, 0], minlength=n_emb) / len(mine), atol=1e-6)
        t = np.zeros((n_emb, n_emb))
        np.add.at(t, (mine[:, 0], mine[:, 1]), 1)
        rows = t.sum(1, keepdims=True)
        want = np.where(rows > 0, t / np.where(rows > 0, rows, 1), 1.0 / n_emb)
        np.testing.assert_allclose(prior["transitions"][y, 0], want, atol=1e-6)
    # a deterministic prior per label: label y always draws code y + 1 at every level
    eye = np.eye(n_emb)
    det = {"first": jnp.asarray(eye[1:K + 1]),
           "transitions": jnp.asarray(np.stack([np.broadcast_to(np.tile(eye[y + 1], (n_emb, 1)), (3, n_emb, n_emb))
                                                for y in range(K)]))}
    labels = jnp.asarray([2, 0, 1, 2, 1], jnp.int32)
    s = aet.sample(model, {**variables, vqvae.PRIOR: det}, jax.random.key(0), 5, condition=labels)
    cb = np.asarray(vqvae.codebook(model, variables))
    np.testing.assert_allclose(s.z, cb[:, np.asarray(labels) + 1].sum(0), rtol=1e-6)
    want_x = aet.decoders.decoder_mean(model.decoder, base.decode(model, variables, s.z, labels))
    np.testing.assert_allclose(s.x, want_x, rtol=1e-6)
    with pytest.raises(ValueError, match="pass `condition`"):
        aet.sample(model, fitted, jax.random.key(0), 5)
    plain = builders.build("vqvae", (N_IN,), latent_dim=LATENT, hidden=(8,)).model
    pv = vqvae.fit_code_prior(plain, plain.init(jax.random.key(0), x), x)
    with pytest.raises(ValueError, match="not conditional"):
        aet.sample(plain, pv, jax.random.key(0), 5, condition=labels)


# --------------------------------------------------------------------------- the command line


def test_cli_vq_recipes_restart_codes_unless_told_not_to(tmp_path, capsys):
    """`aet train --model vqvae` restarts codes unused for 20 steps (without restarts the CLI's VQ-VAE used
    a single code after 3 epochs); --no-code-restarts turns them off and is recorded; it is refused for
    other models."""
    digits = aet.data.load_digits()[0]
    for argv, want in ((["--model", "vqvae"], 20), (["--model", "hrqvae", "--no-code-restarts"], 0)):
        out, cfg = cli.resolve_config(cli._parser().parse_args(["train", *argv, "--out", str(tmp_path / "r")]))
        assert cfg["code_restarts"] == (want > 0)
        model = cli._recipe(cfg, digits).model
        assert model.restart_after == want and vqvae.has_codebook_updates(model) == (want > 0)
    assert builders.build("vqvae", (64,), restart_after=5).model.restart_after == 5
    assert cli.main(["train", "--model", "vae", "--no-code-restarts", "--out", str(tmp_path / "x"),
                     "--no-progress"]) == 2
    assert "--no-code-restarts applies to" in capsys.readouterr().err
    with pytest.raises(ValueError, match="restart_after"):
        builders.build("vae", (64,), restart_after=3)


@pytest.mark.parametrize("name", ["vqvae", "hrqvae"])
def test_cli_conditional_vq_runs_plot_samples_per_class_from_a_per_label_prior(name, tmp_path):
    """--condition-on-labels with a VQ model: the run's plots fit one code prior per label and draw every class."""
    from aetk_jax import run_plots

    train, val = aet.data.load_digits()
    _, cfg = cli.resolve_config(cli._parser().parse_args(["train", "--model", name, "--condition-on-labels",
                                                          "--out", str(tmp_path / "r")]))
    recipe = cli._recipe(cfg, train)
    assert recipe.model.n_conditions == 10
    variables = recipe.model.init(jax.random.key(0), (jnp.asarray(train.x[:2]), jnp.asarray(train.y[:2])))
    paths = run_plots.conditional_plots(recipe, variables, train, val, str(tmp_path), jax.random.key(1))
    assert {os.path.basename(p) for p in paths} == {"latent.png", "reconstructions.png", "samples_per_class.png"}
    assert all(os.path.getsize(p) > 0 for p in paths)
