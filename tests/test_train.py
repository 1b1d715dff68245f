"""Training: ``make_step`` against a manual optax update, ``fit`` (determinism, history,
callbacks, bad arguments, the non-finite guard) and a real training run on digits."""
from __future__ import annotations

import functools
import math
import os

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import aetk_jax as aet
from aetk_jax import checkpoint as ckpt
from aetk_jax.training.step import takes_keyword
from checkpoint_faults import same_contents
from conftest import small_vae_parts

# ---------------------------------------------------------------------------- make_step


def _tree_equal(a, b) -> bool:
    """The same structure and the same values, bit for bit (NaN equal to NaN)."""
    la, lb = jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)
    return (jax.tree_util.tree_structure(a) == jax.tree_util.tree_structure(b)
            and all(np.array_equal(np.asarray(u), np.asarray(v), equal_nan=True) for u, v in zip(la, lb)))


def test_make_step_equals_manual_optax_update(digits):
    train, _ = digits
    model = aet.VAE(*small_vae_parts(hidden=16))
    x = jnp.asarray(train.x[:16])
    key = jax.random.key(3)
    variables = jax.jit(model.init)(jax.random.key(0), x)
    opt = optax.adam(1e-2)
    traces = []

    def loss_fn(v, xb, k, aux=False):
        traces.append(1)  # runs once per trace, not per call
        return aet.vae.loss(model, v, xb, k, aux=aux)

    step = aet.train.make_step(loss_fn, opt)
    state = aet.train.init_state(variables, opt)
    new, metrics = step(state, x, key)

    # the same update by hand: gradient of the same loss with the same key, then optax
    @jax.jit
    def manual(params, opt_state):
        loss, grads = jax.value_and_grad(lambda p: aet.vae.loss(model, {"params": p}, x, key))(params)
        updates, opt_state = opt.update(grads, opt_state, params)
        return loss, grads, optax.apply_updates(params, updates), opt_state

    loss, grads, params, opt_state = manual(state.params, state.opt_state)
    for a, b in zip(jax.tree_util.tree_leaves(new.params), jax.tree_util.tree_leaves(params)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-7)
    for a, b in zip(jax.tree_util.tree_leaves(new.opt_state), jax.tree_util.tree_leaves(opt_state)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-9)
    assert int(new.step) == 1
    # the params moved by Adam's first step: |Δ| = lr for every entry with a non-zero gradient
    moved = np.concatenate([np.abs(np.ravel(a - b)) for a, b in zip(jax.tree_util.tree_leaves(new.params), jax.tree_util.tree_leaves(state.params))])
    np.testing.assert_allclose(np.max(moved), 1e-2, rtol=1e-3)

    # metrics: the loss, its aux terms, the gradient norm and the finite flag
    assert {"loss", "loglikelihood", "kl", "elbo", "grad_norm", "finite"} <= set(metrics)
    np.testing.assert_allclose(float(metrics["loss"]), float(loss), rtol=1e-6)
    np.testing.assert_allclose(float(metrics["loss"]), float(-metrics["loglikelihood"] + metrics["kl"]), rtol=1e-6)
    gnorm = np.sqrt(sum(np.sum(np.asarray(g, np.float64) ** 2) for g in jax.tree_util.tree_leaves(grads)))
    np.testing.assert_allclose(float(metrics["grad_norm"]), gnorm, rtol=1e-5)
    assert float(metrics["finite"]) == 1.0

    # jitted: a second call with new data and key does not retrace
    assert hasattr(step, "lower")
    n = len(traces)
    new2, _ = step(new, jnp.asarray(train.x[16:32]), jax.random.key(4))
    assert len(traces) == n and int(new2.step) == 2

    # the guard: a NaN batch leaves the state unchanged and reports finite = 0
    bad, m = step(new, x.at[0, 0].set(jnp.nan), key)
    assert float(m["finite"]) == 0.0 and not math.isfinite(float(m["loss"]))
    assert _tree_equal(bad, new)


def test_make_step_with_plain_loss_reports_loss_only():
    class Lin(nn.Module):
        @nn.compact
        def __call__(self, x):
            return nn.Dense(1)(x)

    model = Lin()
    x = jnp.asarray(np.random.default_rng(0).normal(size=(8, 3)), jnp.float32)
    variables = model.init(jax.random.key(0), x)
    loss_fn = lambda v, xb, k: jnp.mean(model.apply(v, xb) ** 2)
    opt = optax.sgd(0.1)
    new, m = aet.train.make_step(loss_fn, opt)(aet.train.init_state(variables, opt), x, jax.random.key(1))
    assert set(m) == {"loss", "grad_norm", "finite"}
    g = jax.grad(lambda p: loss_fn({"params": p}, x, None))(variables["params"])
    want = jax.tree_util.tree_map(lambda p, gg: p - 0.1 * gg, variables["params"], g)
    for a, b in zip(jax.tree_util.tree_leaves(new.params), jax.tree_util.tree_leaves(want)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-6)


def _lin_problem():
    x = jnp.asarray(np.random.default_rng(0).normal(size=(8, 3)), jnp.float32)
    params = {"w": jnp.ones((3,)), "b": jnp.zeros(())}
    loss_fn = lambda v, xb, k: jnp.mean((xb @ v["params"]["w"] + v["params"]["b"] - 1.0) ** 2)  # noqa: E731
    return x, params, loss_fn


def test_accept_decides_before_the_update():
    """The unjitted step's `accept` sees the step's metrics first: a rejected step returns the state
    itself (step count included), an accepted one is the unguarded step bit for bit; its metrics are
    accept's. The same with two phases (run, then selected)."""
    x, params, loss_fn = _lin_problem()
    opt = optax.adam(1e-2)
    state = aet.train.init_state({"params": params}, opt)
    raw = aet.train.make_step(loss_fn, opt, jit=False, guard=False)
    free = jax.jit(lambda s: raw(s, x, jax.random.key(1)))(state)[0]
    for verdict in (False, True):
        seen = []

        def accept(m, verdict=verdict):
            seen.append(sorted(m))
            return jnp.asarray(verdict), {**m, "tag": jnp.float32(7.0)}

        new, m = jax.jit(lambda s: raw(s, x, jax.random.key(1), accept=accept))(state)
        assert seen == [["finite", "grad_norm", "loss"]] and float(m["tag"]) == 7.0
        assert _tree_equal(new, free if verdict else state)
        assert int(new.step) == int(verdict)
    # the guard is accept_finite: a NaN batch is rejected before the update
    guarded_step = aet.train.make_step(loss_fn, opt, jit=False)
    bad, m = jax.jit(lambda s: guarded_step(s, x.at[0, 0].set(jnp.nan), jax.random.key(1)))(state)
    assert float(m["finite"]) == 0.0 and _tree_equal(bad, state)
    # two phases: both run, then the state is selected by accept
    phases = (aet.train.Phase("a", loss_fn, opt, group="w"), aet.train.Phase("b", loss_fn, opt, group="b"))
    pstate = aet.train.init_state({"params": params}, phases=phases)
    pstep = aet.train.make_step(phases=phases, jit=False, guard=False)
    moved = jax.jit(lambda s: pstep(s, x, jax.random.key(1)))(pstate)[0]
    kept = jax.jit(lambda s: pstep(s, x, jax.random.key(1), accept=lambda m: (jnp.asarray(False), m)))(pstate)[0]
    assert _tree_equal(kept, pstate) and not _tree_equal(moved.params, pstate.params) and int(moved.step) == 1
    # the jitted step has no `accept` (make_epoch then selects the state itself)
    assert not takes_keyword(aet.train.make_step(loss_fn, opt), "accept")


@pytest.mark.parametrize("policy", [{}, {"skip_nonfinite": True, "skip_factor": 0.25}, {"divergence_factor": 0.05}])
def test_epoch_policy_through_accept_equals_selecting_the_state(policy):
    """make_epoch on make_step's step (the policy passed as `accept`, the update under `lax.cond`)
    gives the same epoch, bit for bit, as on the same step hidden behind a wrapper without
    `accept` (every step's update computed, then the old or new state selected)."""
    rng = np.random.default_rng(1)
    # the example the epoch's shuffle puts in batch 3 of 8 (make_epoch: split(key, 9)[0] shuffles) is NaN
    order = np.asarray(aet.train.shuffle(jax.random.split(jax.random.key(2), 9)[0], 48))
    x = jnp.asarray(rng.normal(size=(48, 3)), jnp.float32).at[int(order[20]), 1].set(jnp.nan)
    _, params, loss_fn = _lin_problem()
    opt = optax.chain(optax.adam(5e-2), aet.train.scale_by_lr_factor())
    state = aet.train.init_state({"params": params}, opt)
    step = aet.train.make_step(loss_fn, opt, jit=False, guard=False)
    hidden = lambda s, b, k: step(s, b, k)  # noqa: E731
    assert takes_keyword(step, "accept") and not takes_keyword(hidden, "accept")
    results = [jax.jit(aet.train.make_epoch(f, 6, **policy))(state, x, jax.random.key(2)) for f in (step, hidden)]
    a, b = results
    assert _tree_equal(a.state, b.state) and _tree_equal(a.metrics, b.metrics)
    assert int(a.bad_step) == int(b.bad_step) == 3 and _tree_equal(a.bad_metrics, b.bad_metrics)
    assert not _tree_equal(a.state.params, state.params)  # good steps were applied
    if "divergence_factor" in policy:
        assert _tree_equal(a.ref, b.ref) and float(a.metrics["diverged"]) == float(b.metrics["diverged"])
    if policy.get("skip_nonfinite"):
        assert float(a.metrics["skipped"]) >= 1 and aet.train.lr_scale(a.state) == aet.train.lr_scale(b.state) < 1


def _shuffle_reference(key, n):
    """make_epoch's shuffle in NumPy: rounds of stable argsorts of each position's
    high 32 − ⌈log₂ n⌉ random bits (the same bits, drawn by jax.random.bits)."""
    m = math.ceil(math.log2(n))
    rounds = math.ceil(max(32.0, 3.0 * math.log2(n)) / (32 - m))
    bits = np.asarray(jax.random.bits(key, (rounds, n), jnp.uint32))
    order = np.arange(n)
    for b in bits:
        order = order[np.argsort(b >> m, kind="stable")]
    return order


@pytest.mark.parametrize("n", [2, 5, 64, 1438, 70000])
def test_epoch_shuffle_is_the_stable_sort_reference_and_a_permutation(n):
    key = jax.random.key(n)
    got = np.asarray(jax.jit(aet.train.shuffle, static_argnums=1)(key, n))
    assert got.dtype == np.int32 and np.array_equal(np.sort(got), np.arange(n))
    np.testing.assert_array_equal(got, _shuffle_reference(key, n))
    assert np.array_equal(np.asarray(aet.train.shuffle(key, 1)), [0])


def test_epoch_shuffle_above_its_position_bits_is_jax_random_permutation(monkeypatch):
    # n > 2**24 leaves fewer than 8 random bits a word: the fallback is jax.random.permutation itself
    # (at n = 2**24 + 3 one call takes ~17 s on one core, so the limit is lowered here to reach the branch)
    from aetk_jax.training import epoch

    assert epoch._MAX_POSITION_BITS == 24
    monkeypatch.setattr(epoch, "_MAX_POSITION_BITS", 6)  # n = 65: m = 7 > 6
    key = jax.random.key(5)
    got = np.asarray(aet.train.shuffle(key, 65))
    assert got.dtype == np.int32
    np.testing.assert_array_equal(got, np.asarray(jax.random.permutation(key, 65)))
    monkeypatch.setattr(epoch, "_MAX_POSITION_BITS", 7)  # n = 65 sorts again: not the permutation's order
    np.testing.assert_array_equal(np.asarray(aet.train.shuffle(key, 65)), _shuffle_reference(key, 65))


def test_epoch_shuffle_is_uniform():
    """All 24 orders of 4 elements, and every element at every position of 9, equally often:
    chi-square statistics over 48 000 keys below their 99.9% quantiles (22 dof: 48.3; 8 dof: 26.1)."""
    keys = jax.random.split(jax.random.key(11), 48000)
    p4 = np.asarray(jax.jit(jax.vmap(lambda k: aet.train.shuffle(k, 4)))(keys))
    codes = p4 @ np.array([64, 16, 4, 1])
    counts = np.unique(codes, return_counts=True)[1]
    assert counts.size == 24
    assert np.sum((counts - 2000.0) ** 2 / 2000.0) < 48.3
    p9 = np.asarray(jax.jit(jax.vmap(lambda k: aet.train.shuffle(k, 9)))(keys))
    at = np.stack([np.bincount(p9[:, j], minlength=9) for j in range(9)])  # element i at position j
    expected = 48000 / 9
    assert max(np.sum((row - expected) ** 2 / expected) for row in at) < 26.1


# ------------------------------------------------------------------ fit: determinism, callbacks


class NoisyRegression(nn.Module):
    """A one-layer regression; its loss (below) draws noise from the step's key."""

    @nn.compact
    def __call__(self, x):
        return nn.Dense(1)(x)


def noisy_loss(variables, x, key):
    target = jnp.mean(x, axis=1, keepdims=True) + 0.1 * jax.random.normal(key, (x.shape[0], 1))
    return jnp.mean((NoisyRegression().apply(variables, x) - target) ** 2)


def test_fit_is_deterministic_and_callbacks_run_each_epoch_and_can_stop():
    # a small model keeps this cheap; bit-exact determinism of a VAE run is checked by
    # the checkpoint-resume test (tests/test_checkpoint.py)
    model = NoisyRegression()
    x = np.random.default_rng(0).normal(size=(200, 8)).astype(np.float32)
    seen = []

    def record(epoch, variables, history):
        seen.append((epoch, len(history["epoch"]), jax.tree_util.tree_map(np.array, variables)))

    fit = functools.partial(aet.train.fit, model, noisy_loss, x, key=jax.random.key(7), batch_size=32,
                            optimizer=optax.sgd(0.05), progress=False)
    v1, h1 = fit(epochs=2, callbacks=[record])
    assert [(e, n) for e, n, _ in seen] == [(0, 1), (1, 2)]  # called after each epoch's history entry
    assert _tree_equal(seen[-1][2], v1)
    assert not _tree_equal(seen[0][2], seen[1][2])
    assert h1["train"]["loss"][1] < h1["train"]["loss"][0]

    # a second run with the same key, asked for 5 epochs but stopped by a callback after
    # epoch 1, ends bit-identical to the first (same key, same first two epochs)
    calls = []

    def stop_after_1(epoch, variables, history):
        calls.append(epoch)
        return epoch == 1

    v2, h2 = fit(epochs=5, callbacks=[record, stop_after_1])
    assert calls == [0, 1] and h2["epoch"] == [0, 1]
    assert _tree_equal(v1, v2)
    assert h1 == h2
    # another key: other shuffles, other noise, other parameters
    v3, _ = fit(epochs=2, key=jax.random.key(8))
    assert not _tree_equal(v1, v3)


# ------------------------------------------------------------------------ fit: bad arguments


@pytest.mark.parametrize(
    "change, exc, word",
    [
        ({"batch_size": 1000}, ValueError, "batch_size"),
        ({"batch_size": 0}, ValueError, "batch_size"),
        ({"epochs": -1}, ValueError, "epochs"),
        ({"key": 0}, TypeError, "key"),
        ({"key": None}, TypeError, "key"),
        ({"data": np.ones((100, 64), np.int64)}, TypeError, "data"),
        ({"data": np.full((100, 64), np.nan, np.float32)}, ValueError, "data"),
        ({"data": np.ones(64, np.float32)}, ValueError, "data"),
        ({"val_data": np.ones((10, 63), np.float32)}, ValueError, "val_data"),
    ],
)
def test_fit_bad_arguments(change, exc, word):
    model = aet.VAE(*small_vae_parts(hidden=8))
    args = {"data": np.random.default_rng(0).uniform(size=(100, 64)).astype(np.float32), "key": jax.random.key(0),
            "batch_size": 32, "epochs": 1, "val_data": None}
    args.update(change)
    data = args.pop("data")
    with pytest.raises(exc, match=word):
        aet.train.fit(model, functools.partial(aet.vae.loss, model), data, progress=False, **args)


# --------------------------------------------------------------------------- non-finite guard


class Scalar(nn.Module):
    """One scalar parameter ``w`` (initialised to 0)."""

    @nn.compact
    def __call__(self, x):
        return self.param("w", nn.initializers.zeros, ()) * jnp.mean(x)


def nan_after_six(variables, x, key, aux=False):
    """∂loss/∂w = −1, so SGD(lr=1) adds exactly 1 to w per update; the ``penalty`` term is
    NaN once w ≥ 5.5, i.e. at the 7th update (global update index 6)."""
    w = variables["params"]["w"]
    fit_term = -w + 0.0 * jnp.mean(x)
    penalty = jnp.where(w < 5.5, 0.0, jnp.nan)
    loss = fit_term + penalty
    return (loss, {"fit_term": fit_term, "penalty": penalty}) if aux else loss


def test_nonfinite_loss_raises_with_last_good_state_and_checkpoint(tmp_path):
    x = np.ones((32, 4), np.float32)  # 4 batches of 8 per epoch: updates 0–3 in epoch 0, 4–7 in epoch 1
    with pytest.raises(aet.train.NonFiniteError) as info:
        aet.train.fit(Scalar(), nan_after_six, x, key=jax.random.key(0), optimizer=optax.sgd(1.0), epochs=5,
                      batch_size=8, progress=False, checkpoint_dir=str(tmp_path))
    err = info.value
    msg = str(err)
    assert err.epoch == 1 and err.step == 6
    assert "epoch 1" in msg and "batch 2" in msg and "update 6" in msg
    assert "penalty" in msg and "fit_term" not in msg
    assert math.isnan(err.terms["penalty"]) and err.terms["fit_term"] == -6.0
    # the last good variables: w after six good updates, finite
    w = float(err.variables["params"]["w"])
    assert w == 6.0 and math.isfinite(w)
    assert err.history["epoch"] == [0]
    # the last good checkpoint (end of epoch 0, w = 4) exists and loads
    assert err.checkpoint is not None and os.path.exists(err.checkpoint)
    assert err.checkpoint == ckpt.path_for(str(tmp_path), 0)
    assert err.checkpoint in msg
    raw = ckpt.read_raw(err.checkpoint)
    assert float(raw["state"]["params"]["w"]) == 4.0 and int(raw["epoch"]) == 0
    assert ckpt.list_checkpoints(str(tmp_path)) == [err.checkpoint]


def test_nonfinite_gradient_only_is_caught():
    def grad_blows_up(variables, x, key):
        # ∂loss/∂w = −1 while w < 2.5 (w = 0, 1, 2 after updates 0–2); at w = 3 the loss
        # is finite but ∂/∂w √|w − 3| is infinite (update 3)
        w = variables["params"]["w"]
        return -w + jnp.where(w > 2.5, jnp.sqrt(jnp.abs(w - 3.0)), 0.0) + 0.0 * jnp.mean(x)

    with pytest.raises(aet.train.NonFiniteError, match="update 3") as info:
        aet.train.fit(Scalar(), grad_blows_up, np.ones((16, 2), np.float32), key=jax.random.key(0),
                      optimizer=optax.sgd(1.0), epochs=2, batch_size=4, progress=False)
    assert info.value.step == 3 and float(info.value.variables["params"]["w"]) == 3.0
    assert math.isfinite(info.value.terms["loss"]) and not math.isfinite(info.value.terms["grad_norm"])


# ------------------------------------------------------------------------------ digits run


EPOCHS = 10


@pytest.fixture(scope="module")
def digits_run(digits):
    train, val = digits
    model = aet.VAE(*small_vae_parts(latent_dim=2, hidden=32))
    variables, history = aet.train.fit(
        model, functools.partial(aet.vae.loss, model), train, key=jax.random.key(0),
        optimizer=optax.adam(3e-3), epochs=EPOCHS, batch_size=32, val_data=val, progress=False,
    )
    return model, variables, history, val


def test_fit_history_has_per_epoch_train_and_val_metrics(digits_run):
    model, variables, history, val = digits_run
    assert history["epoch"] == list(range(EPOCHS))
    assert {"loss", "loglikelihood", "kl", "elbo", "grad_norm"} <= set(history["train"])
    assert {"loss", "loglikelihood", "kl", "elbo"} <= set(history["val"])
    for split in ("train", "val"):
        for name, values in history[split].items():
            assert len(values) == EPOCHS and all(math.isfinite(v) for v in values), (split, name)
        # at β = 1 the loss is −ELBO, term by term and hence in the epoch means
        np.testing.assert_allclose(history[split]["loss"], -np.asarray(history[split]["elbo"]), rtol=1e-5)
    # the validation KL is deterministic: it must equal the mean KL over all 359 examples
    # (11 batches of 32 plus a remainder of 7, weighted by size)
    enc = aet.base.encode(model, variables, jnp.asarray(val.x))
    kl = np.asarray(aet.encoder_kl(model.encoder, enc), np.float64).mean()
    np.testing.assert_allclose(history["val"]["kl"][-1], kl, rtol=1e-4)


def test_training_on_digits_improves_the_heldout_elbo(digits_run):
    model, variables, history, val = digits_run
    loss = history["train"]["loss"]
    # measured (3 keys, jax 0.10.2 CPU): train loss 37.4–39.1 in epoch 1 → 25.85–25.97 in
    # epoch 10 (a drop of 11.6–13.2); require a drop of 8
    assert loss[-1] < loss[0] - 8.0
    assert loss[-1] < min(loss[:-3])
    x = jnp.asarray(val.x)
    elbo = aet.evaluate.elbo(model, variables, x, jax.random.key(1), n_samples=64)
    assert elbo.shape == (x.shape[0],)
    # measured held-out ELBO −25.75 … −25.87 (untrained: about −58.8); threshold −28.0 (margin ≈ 2 nats)
    assert float(jnp.mean(elbo)) > -28.0


def test_importance_sampled_loglikelihood_exceeds_elbo(digits_run):
    model, variables, history, val = digits_run
    x = jnp.asarray(val.x)
    elbo = aet.evaluate.elbo(model, variables, x, jax.random.key(1), n_samples=64)
    mll = aet.evaluate.marginal_loglikelihood(model, variables, x, jax.random.key(2), n_importance=256)
    assert mll.shape == (x.shape[0],) and np.all(np.isfinite(np.asarray(mll)))
    gap = float(jnp.mean(mll - elbo))
    # measured mean gap 0.168–0.198 nats (positive for ~83 % of the examples); require > 0.05
    # and a gap far below the ELBO's size (an upper sanity bound)
    assert 0.05 < gap < 2.0


# ------------------------------------------------ data support, Ctrl-C, one compilation (issue 15)


def _counting_loss(model, counter):
    """The VAE loss, counting its traces (a Python side effect runs only while tracing)."""

    def loss_fn(v, xb, k, aux=False):
        counter.append(1)
        return aet.vae.loss(model, v, xb, k, aux=aux)

    return loss_fn


def test_fit_refuses_data_outside_the_decoder_support_before_compiling(digits):
    train, val = digits
    x = (train.x - train.x.mean()) / train.x.std()  # standardised: values in about [-0.8, 2.3]
    model = aet.VAE(*small_vae_parts(hidden=8))
    traces = []
    with pytest.raises(ValueError, match=r"^data: BernoulliDecoder .*\[0, 1\].*--decoder gaussian"):
        aet.train.fit(model, _counting_loss(model, traces), x, key=jax.random.key(0), epochs=1, batch_size=64,
                      progress=False)
    assert traces == []  # refused before the loss was traced
    # good training data, bad validation data: named as such
    with pytest.raises(ValueError, match=r"^val_data: BernoulliDecoder .*\[0, 1\]"):
        aet.train.fit(model, _counting_loss(model, traces), train.x, key=jax.random.key(0), epochs=1,
                      batch_size=64, val_data=val.x * 16.0, progress=False)
    assert traces == []
    # a Gaussian decoder accepts standardised data and trains on it
    gauss = aet.VAE(*small_vae_parts(hidden=8, decoder="gaussian"))
    _, hist = aet.train.fit(gauss, functools.partial(aet.vae.loss, gauss), x, key=jax.random.key(0), epochs=1,
                            batch_size=64, progress=False)
    assert math.isfinite(hist["train"]["loss"][0])
    # an AE's deterministic decoder has no support: not checked
    ae = aet.AE(aet.Encoder(aet.MLP([8]), 2), aet.Decoder(aet.MLP([8]), 64))
    aet.train.fit(ae, functools.partial(aet.ae.loss, ae), x, key=jax.random.key(0), epochs=1, batch_size=64,
                  progress=False)


def test_fit_epoch_compiles_once(digits):
    """The epoch's arguments keep one pytree structure (the divergence reference is an array from
    the start), so three epochs trace the loss as often as one."""
    model = aet.VAE(*small_vae_parts(hidden=8))
    x = digits[0].x[:256]
    counts = []
    for epochs in (1, 3):
        traces = []
        aet.train.fit(model, _counting_loss(model, traces), x, key=jax.random.key(0), epochs=epochs, batch_size=64,
                      progress=False)
        counts.append(len(traces))
    assert counts[0] > 0 and counts[1] == counts[0], counts


def _sigint_at(epoch, times):
    """A callback that sends this process SIGINT ``times`` times at the end of ``epoch``."""
    import signal

    def cb(e, variables, history):
        if e == epoch:
            for _ in range(times):
                os.kill(os.getpid(), signal.SIGINT)

    return cb


def _fit_small(x, d, epochs, callbacks=(), resume=False):
    model = aet.VAE(*small_vae_parts(hidden=8))
    return aet.train.fit(model, functools.partial(aet.vae.loss, model), x, key=jax.random.key(1), epochs=epochs,
                         batch_size=64, progress=False, checkpoint_dir=d, resume=resume, callbacks=callbacks,
                         keep_checkpoints=10)


def test_ctrl_c_stops_after_the_epoch_and_resume_is_bit_exact(digits, tmp_path):
    import signal

    x = digits[0].x[:256]
    before = signal.getsignal(signal.SIGINT)
    ref_vars, ref_hist = _fit_small(x, str(tmp_path / "ref"), 4)
    d = str(tmp_path / "run")
    with pytest.raises(aet.train.TrainingInterrupted) as info:
        _fit_small(x, d, 4, callbacks=[_sigint_at(1, 1)])
    err = info.value
    assert isinstance(err, KeyboardInterrupt) and not err.abandoned
    # epoch 1 finished and was checkpointed; nothing after it ran
    assert err.epoch == 1 and err.history["epoch"] == [0, 1]
    assert err.checkpoint == ckpt.path_for(d, 1) and os.path.exists(err.checkpoint)
    assert not os.path.exists(ckpt.path_for(d, 2))
    assert "after 2 of 4 epochs" in str(err) and "ckpt_000001" in str(err)
    assert signal.getsignal(signal.SIGINT) is before  # the previous handler is back
    # the interrupted epoch's checkpoint is the uninterrupted run's, and resuming ends bit-exact
    assert same_contents(err.checkpoint, ckpt.path_for(str(tmp_path / "ref"), 1))
    variables, history = _fit_small(x, d, 4, resume=True)
    assert _tree_equal(variables, ref_vars) and history == ref_hist


def test_second_ctrl_c_abandons_the_epoch_and_keeps_the_last_checkpoint(digits, tmp_path):
    import signal

    x = digits[0].x[:256]
    before = signal.getsignal(signal.SIGINT)
    d = str(tmp_path / "run")
    # two SIGINTs inside epoch 2's callback (before its checkpoint): the second one interrupts at once
    with pytest.raises(aet.train.TrainingInterrupted) as info:
        _fit_small(x, d, 5, callbacks=[_sigint_at(2, 2)])
    err = info.value
    assert err.abandoned and err.epoch == 1 and err.history["epoch"] == [0, 1]
    assert err.checkpoint == ckpt.path_for(d, 1)
    assert ckpt.list_checkpoints(d) == [ckpt.path_for(d, 0), ckpt.path_for(d, 1)]
    assert "abandoned" in str(err)
    assert signal.getsignal(signal.SIGINT) is before
    ckpt.read_raw(err.checkpoint)  # intact
    # the variables are those of the last completed epoch, i.e. of its checkpoint
    raw = ckpt.read_raw(err.checkpoint)
    assert _tree_equal(err.variables["params"], raw["state"]["params"])


# ---------------------------------------------------------------------------- the training layer's structure


def test_one_phase_step_is_the_plain_step():
    """`make_step(phases=(Phase(...),))` with one phase on every parameter is the plain step, bit for bit
    (the optimizer state is then `{name: state}`)."""
    x = jnp.asarray(np.random.default_rng(0).normal(size=(8, 3)), jnp.float32)
    params = {"w": jnp.ones((3,)), "b": jnp.zeros(())}
    loss_fn = lambda v, xb, k: jnp.mean((xb @ v["params"]["w"] + v["params"]["b"]) ** 2)
    opt = optax.adam(1e-2)
    plain, m1 = aet.train.make_step(loss_fn, opt)(aet.train.init_state({"params": params}, opt), x, jax.random.key(1))
    phases = (aet.train.Phase("all", loss_fn, opt),)
    phased, m2 = aet.train.make_step(phases=phases)(
        aet.train.init_state({"params": params}, phases=phases), x, jax.random.key(1))
    assert _tree_equal(plain.params, phased.params) and _tree_equal(plain.opt_state, phased.opt_state["all"])
    assert set(m1) == set(m2) and all(float(m1[k]) == float(m2[k]) for k in m1)
    with pytest.raises(ValueError, match="not both"):
        aet.train.make_step(loss_fn, opt, phases=phases)


def test_no_model_module_imports_the_training_layer_and_no_cycles():
    """Imports anywhere in a module (also inside functions): model modules never reach the training
    layer, and the training layer's modules form no import cycle."""
    import ast
    import pathlib

    pkg = pathlib.Path(aet.__file__).parent
    training = {"train", "parallel", "training"}

    def imported(path):
        names = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.level:
                mod = (node.module or "").split(".")[0]
                names.update([mod] if mod else [a.name for a in node.names])
            elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("aetk_jax."):
                names.add(node.module.split(".")[1])
        return names

    models = ["ae", "vae", "mmdvae", "infomaxvae", "hvae", "rhvae", "iwae", "miwae", "piwae", "ciwae", "base"]
    for name in models:
        assert not imported(pkg / f"{name}.py") & training, name
    # the order of the layer: each module imports only those before it
    order = ["devices", "step", "epoch", "hooks", "fit"]
    for i, name in enumerate(order):
        text = (pkg / "training" / f"{name}.py").read_text()
        for later in order[i + 1:]:
            assert f"from .{later} import" not in text and f"from . import {later}" not in text, (name, later)
        assert "from .. import train" not in text and "parallel" not in imported(pkg / "training" / f"{name}.py")
