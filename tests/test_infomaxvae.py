"""Tests of InfoMax-VAE (aet.infomaxvae): the critic and the NWJ bound against
float64 NumPy, the Gaussian mutual-information closed form, gradient isolation
of the two losses, the two-optimizer step and a digits training run."""
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
from jax.test_util import check_grads

import aetk_jax as aet
from aetk_jax import infomaxvae as imv

LOG_2PI = math.log(2.0 * math.pi)


# --------------------------------------------------------------------------- a user-registered decoder


class StudentParams(NamedTuple):
    loc: jax.Array


class StudentTDecoder(nn.Module):
    """p(x|z) = Π_j t_ν(x_j; loc_j, scale 0.3), ν = 4: a decoder type aet knows nothing about."""

    body: nn.Module
    output_dim: int

    @nn.compact
    def __call__(self, z):
        return StudentParams(nn.Dense(self.output_dim)(self.body(z)))


@aet.decoder_loglikelihood.register(StudentTDecoder)
def _student_loglik(decoder, x, out):
    nu, s = 4.0, 0.3
    u = (x - out.loc) / s
    c = math.lgamma((nu + 1) / 2) - math.lgamma(nu / 2) - 0.5 * math.log(nu * math.pi) - math.log(s)
    return jnp.sum(c - (nu + 1) / 2 * jnp.log1p(u**2 / nu), axis=-1)


def _model(hidden: int = 16, latent: int = 2):
    """Gaussian encoder, the user-registered decoder above, default critic; tanh bodies
    (smooth, for check_grads). One configuration for the whole file keeps it fast."""
    act = nn.tanh
    enc = aet.JointGaussianLogEncoder(aet.MLP([hidden], activation=act, final_activation=act), latent)
    dec = StudentTDecoder(aet.MLP([hidden], activation=act, final_activation=act), 64)
    critic = imv.MutualInfoNetwork(aet.MLP([hidden], activation=act, final_activation=act))
    return aet.InfoMaxVAE(enc, dec, critic)


LOSS = jax.jit(imv.loss, static_argnums=0, static_argnames=("aux",))
MI_LOSS = jax.jit(imv.mi_loss, static_argnums=0, static_argnames=("aux",))
ELBO = jax.jit(aet.evaluate.elbo, static_argnums=0, static_argnames=("n_samples",))


def _leaves_norm(tree) -> float:
    return float(sum(float(jnp.sum(jnp.abs(leaf))) for leaf in jax.tree_util.tree_leaves(tree)))


# --------------------------------------------------------------------------- critic and bound vs NumPy


def test_critic_shuffle_and_bound_match_numpy(setup, rng):
    model, variables, x = setup
    n = x.shape[0]
    z = rng.normal(size=(n, 2))
    key = jax.random.key(3)
    p = jax.tree_util.tree_map(lambda a: np.asarray(a, np.float64), variables["params"]["mi_network"])
    xn = np.asarray(x, np.float64)

    def t_np(xx, zz):  # T(x, z) = head(tanh(dense_0([x, z])))
        dense_0 = p["body"]["dense_0"]
        h = np.tanh(np.concatenate([xx, zz], axis=1) @ dense_0["kernel"] + dense_0["bias"])
        return (h @ p["head"]["kernel"] + p["head"]["bias"])[:, 0]

    got_t = jax.jit(imv.critic, static_argnums=0)(model, variables, x, jnp.asarray(z, jnp.float32))
    assert got_t.shape == (n,)
    np.testing.assert_allclose(np.asarray(got_t), t_np(xn, z), rtol=1e-5, atol=1e-5)

    # shuffle_latent permutes whole rows: z̃ = z[π], π a permutation fixed by the key
    perm = np.asarray(imv.shuffle_latent(jnp.arange(n, dtype=jnp.float32)[:, None], key))[:, 0].astype(int)
    assert sorted(perm) == list(range(n)) and not np.array_equal(perm, np.arange(n))
    z_shuf = np.asarray(imv.shuffle_latent(jnp.asarray(z, jnp.float32), key))
    np.testing.assert_array_equal(z_shuf, np.asarray(z, np.float32)[perm])
    other = np.asarray(imv.shuffle_latent(jnp.arange(n, dtype=jnp.float32)[:, None], jax.random.key(4)))[:, 0]
    assert not np.array_equal(other, perm)

    # Î = mean T(x, z) − mean exp(T(x, z̃) − 1)
    expected = t_np(xn, z).mean() - np.exp(t_np(xn, z[perm]) - 1.0).mean()
    vmi = jax.jit(imv.variational_mutual_info, static_argnums=0)
    got = vmi(model, variables, x, jnp.asarray(z, jnp.float32), jnp.asarray(z_shuf))
    np.testing.assert_allclose(float(got), expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("batch", [2, 3, 7, 64])
def test_shuffle_latent_is_a_derangement(batch):
    # a plain random permutation keeps row b in place with probability 1/B (0.5 at B = 2):
    # over 2000 keys every shuffle must move every row, and stay a permutation of the rows
    rows = jnp.arange(batch, dtype=jnp.float32)[:, None]
    keys = jax.random.split(jax.random.key(11), 2000)
    perms = np.asarray(jax.jit(jax.vmap(lambda k: imv.shuffle_latent(rows, k)))(keys))[..., 0].astype(int)
    assert perms.shape == (2000, batch)
    assert not np.any(perms == np.arange(batch)), "a shuffled code stayed paired with its own x"
    np.testing.assert_array_equal(np.sort(perms, axis=1), np.broadcast_to(np.arange(batch), perms.shape))


@pytest.mark.parametrize("batch", [3, 4, 5])
def test_derangement_targets_are_uniform_over_the_other_rows(batch):
    # P(π(b) = c) = 1/(B − 1) for every c ≠ b (what the product-of-marginals term needs)
    n = 6000
    perms = np.asarray(jax.jit(jax.vmap(lambda k: imv.derangement(k, batch)))(jax.random.split(jax.random.key(5), n)))
    freq = np.zeros((batch, batch))
    for b in range(batch):
        freq[b] = np.bincount(perms[:, b], minlength=batch) / n
    p = 1.0 / (batch - 1)
    off = ~np.eye(batch, dtype=bool)
    np.testing.assert_array_equal(np.diag(freq), 0.0)
    # 5 binomial standard deviations: 0.032 at B = 3, 0.022 at B = 5
    assert np.max(np.abs(freq[off] - p)) < 5.0 * math.sqrt(p * (1 - p) / n)
    # jit-able with the key as an argument; one key, one derangement
    same = imv.derangement(jax.random.key(1), batch)
    np.testing.assert_array_equal(np.asarray(same), np.asarray(jax.jit(imv.derangement, static_argnums=1)(jax.random.key(1), batch)))


def test_shuffle_latent_refuses_a_single_row():
    with pytest.raises(ValueError, match="n >= 2"):
        imv.derangement(jax.random.key(0), 1)
    with pytest.raises(ValueError, match="`z` needs a batch of >= 2"):
        imv.shuffle_latent(jnp.zeros((1, 2)), jax.random.key(0))


def test_critic_recovers_gaussian_mutual_information():
    """x ~ N(0, I_2), z = x + ε, ε ~ N(0, I_2): correlation ρ² = 1/2 per dimension and
    I(x; z) = 2 · (−½ log(1 − ρ²)) = log 2 ≈ 0.693 nat. The critic is trained alone."""
    d, sigma = 2, 1.0
    true_mi = d * -0.5 * math.log(1.0 - 1.0 / (1.0 + sigma**2))
    critic_net = imv.MutualInfoNetwork(aet.MLP([32, 32], activation=nn.tanh, final_activation=nn.tanh))
    # the critic alone: the encoder and decoder are never called, so they hold no parameters
    enc, dec = aet.JointGaussianLogEncoder(aet.MLP([4]), d), aet.BernoulliDecoder(aet.MLP([4]), d)
    model = aet.InfoMaxVAE(enc, dec, critic_net)
    init_params = jax.jit(critic_net.init)(jax.random.key(0), jnp.zeros((1, d)), jnp.zeros((1, d)))["params"]

    def pairs(key, n):
        k1, k2 = jax.random.split(key)
        x = jax.random.normal(k1, (n, d))
        return x, x + sigma * jax.random.normal(k2, (n, d))

    def with_critic(mi_params):
        return {"params": {imv.MI_GROUP: mi_params}}

    def neg_mi(mi_params, key):
        k1, k2 = jax.random.split(key)
        x, z = pairs(k1, 256)
        return -imv.variational_mutual_info(model, with_critic(mi_params), x, z, imv.shuffle_latent(z, k2))

    opt = optax.adam(1e-2)

    @jax.jit
    def train(mi_params, key):
        def body(carry, k):
            p, s = carry
            g = jax.grad(neg_mi)(p, k)
            u, s = opt.update(g, s, p)
            return (optax.apply_updates(p, u), s), None

        (p, _), _ = jax.lax.scan(body, (mi_params, opt.init(mi_params)), jax.random.split(key, 300))
        return p

    mi_params = train(init_params, jax.random.key(1))
    x, z = pairs(jax.random.key(2), 20000)
    vmi = jax.jit(lambda p, x, z, zs: imv.variational_mutual_info(model, with_critic(p), x, z, zs))
    est = float(vmi(mi_params, x, z, imv.shuffle_latent(z, jax.random.key(3))))
    # Measured: 0.65-0.66 over three seeds (the NWJ bound is a lower bound; the
    # 20000-pair evaluation has sd ≈ 0.01). Tolerance 0.1 nat below, 0.04 above.
    assert true_mi - 0.1 < est < true_mi + 0.04, (est, true_mi)


# --------------------------------------------------------------------------- losses


@pytest.fixture(scope="module")
def setup(digits):
    model = _model()
    x = jnp.asarray(digits[0].x[:16])
    return model, jax.jit(model.init)(jax.random.key(0), x), x


def test_loss_decomposition_and_limits(setup):
    model, variables, x = setup
    key = jax.random.key(4)
    alpha, beta = 2.0, 0.5
    value, m = LOSS(model, variables, x, key, alpha=alpha, beta=beta, aux=True)
    recomposed = -m["loglikelihood"] + beta * m["kl"] - alpha * m["mi"]
    np.testing.assert_allclose(float(value), float(recomposed), rtol=1e-6)

    @jax.jit
    def references(variables, x, key):
        # Î on the batch's codes and their shuffle with fold_in(key, 1); the β-VAE loss
        z = aet.base.elbo_terms(model, variables, x, key).z[0]
        mi = imv.variational_mutual_info(model, variables, x, z, imv.shuffle_latent(z, jax.random.fold_in(key, 1)))
        return mi, aet.vae.loss(model, variables, x, key, beta=beta)

    mi, vae_value = references(variables, x, key)
    np.testing.assert_allclose(float(m["mi"]), float(mi), rtol=1e-5)
    # α = 0 is the β-VAE loss with the same key
    no_mi = LOSS(model, variables, x, key, alpha=0.0, beta=beta, aux=True)[0]
    np.testing.assert_allclose(float(no_mi), float(vae_value), rtol=1e-6)
    # the critic's loss sees the same codes and shuffle: mi_loss = −Î
    c_value, c = MI_LOSS(model, variables, x, key, aux=True)
    np.testing.assert_allclose([float(c_value), float(c["mi"])], [-float(mi), float(mi)], rtol=1e-5)


def test_jit_and_vmap(setup):
    model, variables, x = setup
    key = jax.random.key(5)
    # jit of `partial(loss, model)` with the defaults == α = β = 1 written out
    default = jax.jit(functools.partial(imv.loss, model))(variables, x, key)
    explicit = LOSS(model, variables, x, key, alpha=1.0, beta=1.0, aux=True)[0]
    np.testing.assert_allclose(float(default), float(explicit), rtol=1e-6)
    xs = jnp.stack([x, x[::-1], 1.0 - x])
    keys = jax.random.split(key, 3)
    def both(xb, k):
        return jnp.stack([imv.loss(model, variables, xb, k), imv.mi_loss(model, variables, xb, k)])

    got = np.asarray(jax.jit(jax.vmap(both))(xs, keys))
    ref = [
        [
            float(LOSS(model, variables, xs[i], keys[i], alpha=1.0, beta=1.0, aux=True)[0]),
            float(MI_LOSS(model, variables, xs[i], keys[i], aux=True)[0]),
        ]
        for i in range(3)
    ]
    np.testing.assert_allclose(got, ref, rtol=1e-5)
    assert np.std(got[:, 0]) > 0


def test_user_decoder_float64_gradients(setup):
    """With the decoder registered in this file, the gradients of both losses (each w.r.t.
    the group it trains) match finite differences in float64."""
    model, variables, x = setup
    key = jax.random.key(6)
    with jax.enable_x64(True):
        params = jax.tree_util.tree_map(lambda a: jnp.asarray(a, jnp.float64), variables["params"])
        x64 = jnp.asarray(x[:8], jnp.float64)
        vae_0, mi_0 = imv.split_params(params)

        @jax.jit
        def h(vae_p, mi_p):
            # loss(encoder/decoder; critic fixed) + mi_loss(critic; encoder/decoder fixed):
            # d/d vae_p is loss's gradient, d/d mi_p is mi_loss's
            vae_part = imv.loss(model, {"params": imv.merge_params(vae_p, mi_0)}, x64, key, alpha=2.0, beta=0.7)
            mi_part = imv.mi_loss(model, {"params": imv.merge_params(vae_0, mi_p)}, x64, key)
            return vae_part + mi_part

        assert h(vae_0, mi_0).dtype == jnp.float64
        check_grads(h, (vae_0, mi_0), order=1, modes=["rev"], atol=1e-5, rtol=1e-5)


# --------------------------------------------------------------------------- training


def test_step_updates_both_groups_and_guards(setup):
    """One step with plain SGD equals the two gradient updates done by hand, in order:
    the encoder/decoder first, then the critic at the updated encoder; `loss` never
    trains the critic and `mi_loss` never trains the encoder/decoder."""
    model, variables, x = setup
    lr_vae, lr_mi = 0.1, 0.05
    loss_fn, mi_fn = functools.partial(imv.loss, model, alpha=2.0), functools.partial(imv.mi_loss, model)
    # the two phases of the one aet.train.make_step, as fit builds them
    phases = aet.train.infomax_phases(model, loss_fn, optax.sgd(lr_vae), optax.sgd(lr_mi))
    assert phases[1].loss_fn.func is mi_fn.func and phases[1].loss_fn.args == mi_fn.args
    step = aet.train.make_step(phases=phases)
    state = aet.train.init_state(variables, phases=aet.train.infomax_phases(
        model, loss_fn, {"vae": optax.sgd(lr_vae), "mi": optax.sgd(lr_mi)}))
    key = jax.random.key(7)
    new, metrics = step(state, x, key)

    k_vae, k_mi = jax.random.split(key)

    @jax.jit
    def by_hand(params):
        # gradients w.r.t. ALL parameters: `loss` must give the critic exactly zero and
        # `mi_loss` must give the encoder and decoder exactly zero
        g_loss = jax.grad(lambda p: imv.loss(model, {"params": p}, x, k_vae, alpha=2.0))(params)
        vae_p, mi_p = imv.split_params(params)
        vae_1 = jax.tree_util.tree_map(lambda p, g: p - lr_vae * g, vae_p, imv.split_params(g_loss)[0])
        at_1 = imv.merge_params(vae_1, mi_p)
        mi_value, g_mi = jax.value_and_grad(lambda p: imv.mi_loss(model, {"params": p}, x, k_mi))(at_1)
        mi_1 = jax.tree_util.tree_map(lambda p, g: p - lr_mi * g, mi_p, imv.split_params(g_mi)[1])
        return g_loss, g_mi, imv.merge_params(vae_1, mi_1), mi_value

    g_loss, g_mi, expected, ref_mi_loss = by_hand(variables["params"])
    assert _leaves_norm(g_loss["mi_network"]) == 0.0
    assert _leaves_norm(g_loss["encoder"]) > 0 and _leaves_norm(g_loss["decoder"]) > 0
    assert _leaves_norm(g_mi["encoder"]) == 0.0 and _leaves_norm(g_mi["decoder"]) == 0.0
    assert _leaves_norm(g_mi["mi_network"]) > 0
    for got, ref in zip(jax.tree_util.tree_leaves(new.params), jax.tree_util.tree_leaves(expected)):
        np.testing.assert_allclose(np.asarray(got), np.asarray(ref), rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(float(metrics["mi_loss"]), float(ref_mi_loss), rtol=1e-4)
    assert int(new.step) == 1 and float(metrics["finite"]) == 1.0
    assert {"loss", "loglikelihood", "kl", "mi", "elbo", "mi_loss", "grad_norm", "mi_grad_norm"} <= set(metrics)

    # a non-finite batch leaves the whole state (both groups, both optimizer states) unchanged
    bad, bad_metrics = step(new, x.at[0, 0].set(jnp.nan), key)
    assert float(bad_metrics["finite"]) == 0.0
    for a, b in zip(jax.tree_util.tree_leaves(bad), jax.tree_util.tree_leaves(new)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_fit_with_two_optimizers_raises_heldout_elbo(setup, digits):
    """fit with {"vae": adam, "mi": adam}, the user-registered decoder and α = 1."""
    model, v0, _ = setup
    train, val = digits
    x_val = jnp.asarray(val.x)
    before = float(jnp.mean(ELBO(model, v0, x_val, jax.random.key(9), n_samples=4)))
    variables, history = aet.train.fit(
        model,
        functools.partial(imv.loss, model),
        train,
        key=jax.random.key(0),
        optimizer={"vae": optax.adam(3e-3), "mi": optax.adam(1e-2)},
        epochs=6,
        batch_size=64,
        progress=False,
        variables=v0,
    )
    after = float(jnp.mean(ELBO(model, variables, x_val, jax.random.key(9), n_samples=4)))
    # measured (seeds 0, 1): before -122.8, after -11.9 / -12.1 (a gain of 110 nats);
    # require half that gain and an ELBO above -25
    assert after > before + 55.0 and after > -25.0, (before, after)
    for group in ("encoder", "decoder", "mi_network"):
        change = max(
            float(jnp.max(jnp.abs(a - b)))
            for a, b in zip(
                jax.tree_util.tree_leaves(variables["params"][group]), jax.tree_util.tree_leaves(v0["params"][group])
            )
        )
        assert change > 1e-2, (group, change)
    # the critic learns: the epoch-mean Î rises from -0.034 to 0.015 / 0.024 (seeds 0, 1)
    mi = history["train"]["mi"]
    assert mi[-1] > 0.0 and mi[-1] > mi[0] + 0.025, mi
    assert len(history["train"]["mi_loss"]) == 6


# --------------------------------------------------------------------------- bad arguments


def test_bad_arguments_raise(setup):
    model, variables, x = setup
    key = jax.random.key(0)
    with pytest.raises(ValueError, match="alpha"):
        imv.loss(model, variables, x, key, alpha=-1.0)
    with pytest.raises(ValueError, match="beta"):
        imv.loss(model, variables, x, key, beta=-0.5)
    for fn in (imv.loss, imv.mi_loss):
        with pytest.raises(ValueError, match="x"):
            fn(model, variables, x[:1], key)  # nothing to shuffle
    with pytest.raises(ValueError, match="mi_network"):
        imv.loss(model, {"params": imv.split_params(variables["params"])[0]}, x, key)
    loss_fn = functools.partial(imv.loss, model)
    with pytest.raises(ValueError, match="optimizer"):
        aet.train.make_trainer(model, loss_fn, {"vae": optax.adam(1e-3)})
    with pytest.raises(ValueError, match="mi_optimizer"):
        aet.train.infomax_phases(model, loss_fn, {"vae": optax.adam(1e-3), "mi": optax.adam(1e-3)}, optax.sgd(1.0))
    with pytest.raises(TypeError, match="optimizer"):
        aet.train.make_trainer(model, loss_fn, "adam")
