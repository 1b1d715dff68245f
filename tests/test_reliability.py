"""Crash-safe training and hostile input (issue 10).

* A run killed with SIGKILL at a (seeded) random moment inside the save of a
  (seeded) epoch's checkpoint and resumed with ``resume=True`` ends with
  bit-identical parameters and history to an uninterrupted run.
* Truncated / corrupted / crafted (pickle) checkpoints and unfinished saves are
  skipped with a warning and never executed (``checkpoint_faults`` does the
  damage, whatever the layout); a checkpoint of another model configuration is
  refused with a message naming the field that differs.
* Non-finite losses: ``on_nonfinite="stop"`` reports the epoch, batch, update,
  the non-finite terms and the last good checkpoint; ``"skip"`` skips the step
  and halves the learning rate. Checked against closed-form SGD trajectories.
* ``fit``'s arguments are validated with messages naming them.
"""
from __future__ import annotations

import functools
import hashlib
import json
import os
import pickle
import shutil
import signal
import subprocess
import sys
import textwrap
import threading
import time
import warnings

import flax.linen as nn
import jax
import jax.numpy as jnp
import msgpack
import numpy as np
import optax
import pytest

import aetk_jax as aet
from aetk_jax import checkpoint as ckpt
from checkpoint_faults import (copy_checkpoint, edit_meta, leave_unfinished, no_unpickling, plant_pickle,
                               same_contents, truncate_arrays)

N_EPOCHS = 7

# The run used by the kill-and-resume tests, shared by this process and the child process.
RUN_SRC = textwrap.dedent(
    """
    import functools
    import flax.linen as nn
    import jax
    import optax
    import aetk_jax as aet

    def build(hidden=16, latent=2, decoder="bernoulli"):
        enc = aet.JointGaussianLogEncoder(aet.MLP([hidden], final_activation=nn.relu), latent)
        body = aet.MLP([hidden], final_activation=nn.relu)
        dec = aet.BernoulliDecoder(body, 64) if decoder == "bernoulli" else aet.JointGaussianLogDecoder(body, 64)
        model = aet.VAE(enc, dec)
        return model, functools.partial(aet.vae.loss, model)

    def data():
        return aet.data.load_digits()[0].x[:384]

    def run(checkpoint_dir, epochs, *, resume=False, key=7, callbacks=(), keep=3, model=None):
        model, loss = build() if model is None else model
        return aet.train.fit(
            model, loss, data(), key=jax.random.key(key), optimizer=optax.adam(3e-3), epochs=epochs,
            batch_size=64, progress=False, checkpoint_dir=checkpoint_dir, resume=resume,
            callbacks=callbacks, keep_checkpoints=keep,
        )
    """
)
RUN: dict = {}
exec(compile(RUN_SRC, "<reliability-run>", "exec"), RUN)

CHILD_SRC = RUN_SRC + textwrap.dedent(
    """
    import asyncio, sys, time
    from orbax.checkpoint._src.path import atomicity

    # hold the save of epoch argv[3] open just before orbax renames it into place, so that the
    # parent's SIGKILL lands inside that save (anywhere from its first write to its last step)
    STALLED = "ckpt_%06d" % int(sys.argv[3])
    _finalize = atomicity.AtomicRenameTemporaryPath.finalize

    async def _stalled_finalize(self):
        if STALLED in str(self.get()):
            await asyncio.sleep(60)
        await _finalize(self)

    atomicity.AtomicRenameTemporaryPath.finalize = _stalled_finalize
    run(sys.argv[1], int(sys.argv[2]), keep=100, callbacks=[lambda e, v, h: time.sleep(0.4)])
    print("finished", flush=True)
    """
)


def leaves_equal(a, b) -> bool:
    la, lb = jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)
    return len(la) == len(lb) and all(np.array_equal(np.asarray(x), np.asarray(y)) for x, y in zip(la, lb))


def _start_child(d: str, log: str, stall: int) -> subprocess.Popen:
    script = os.path.join(os.path.dirname(d), "child.py")
    with open(script, "w") as f:
        f.write(CHILD_SRC)
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    with open(log, "wb") as err:
        return subprocess.Popen([sys.executable, script, d, str(N_EPOCHS), str(stall)], env=env, stdout=err,
                                stderr=err)


def _kill_when(proc: subprocess.Popen, path: str, delay: float, out: dict) -> None:
    """Wait for ``path`` to appear, sleep ``delay`` seconds, then SIGKILL ``proc``."""
    deadline = time.monotonic() + 240
    while not os.path.exists(path):
        if proc.poll() is not None:
            out["error"] = f"the child exited early with status {proc.returncode}"
            return
        if time.monotonic() > deadline:
            proc.kill()
            out["error"] = "the child wrote no checkpoint in time"
            return
        time.sleep(0.01)
    time.sleep(delay)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=60)
    out["returncode"] = proc.returncode


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """An uninterrupted run of N_EPOCHS that keeps every epoch's checkpoint, computed while
    a child process runs the same training and is SIGKILLed at a seeded random moment
    during the save of a seeded epoch's checkpoint."""
    base = tmp_path_factory.mktemp("runs")
    rng = np.random.default_rng(20240607)  # fixed seed: the "random" moment is reproducible
    kill_in = int(rng.integers(1, N_EPOCHS - 2))  # the checkpoint whose save is killed
    delay = float(rng.uniform(0.0, 1.0))  # after its temporary folder appears (the save itself takes ~0.3 s)
    killed_dir, log = str(base / "killed"), str(base / "child.log")
    proc = _start_child(killed_dir, log, kill_in)
    killed: dict = {"dir": killed_dir, "kill_in": kill_in, "log": log}
    saving = ckpt.path_for(killed_dir, kill_in) + ckpt.TMP_SUFFIX
    killer = threading.Thread(target=_kill_when, args=(proc, saving, delay, killed))
    killer.start()
    try:
        d = str(base / "reference")
        variables, history = RUN["run"](d, N_EPOCHS, keep=100)
    finally:
        killer.join()
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert ckpt.list_checkpoints(d) == [ckpt.path_for(d, e) for e in range(N_EPOCHS)]
    return variables, history, d, killed


def copy_upto(src: str, dst: str, last_epoch: int) -> str:
    os.makedirs(dst)
    for e in range(last_epoch + 1):
        copy_checkpoint(ckpt.path_for(src, e), dst)
    return dst


# --------------------------------------------------------------------------- kill and resume


def test_sigkill_then_resume_is_bit_exact(reference):
    ref_vars, ref_hist, ref_dir, killed = reference
    assert "error" not in killed, killed.get("error", "") + open(killed["log"]).read()[-2000:]
    assert killed["returncode"] == -signal.SIGKILL
    d, kill_in = killed["dir"], killed["kill_in"]
    written = ckpt.list_checkpoints(d)
    # killed inside the save of epoch kill_in: its temporary folder is left, unfinished
    assert written == [ckpt.path_for(d, e) for e in range(kill_in)]
    assert ckpt.unfinished(d) == [ckpt.path_for(d, kill_in) + ckpt.TMP_SUFFIX]
    assert "finished" not in open(killed["log"]).read()
    # the child's checkpoints agree bit for bit with the uninterrupted run's
    for path in written:
        assert same_contents(path, ckpt.path_for(ref_dir, ckpt.epoch_of(path)))

    with pytest.warns(RuntimeWarning, match=f"skipping unfinished checkpoint .*ckpt_{kill_in:06d}"):
        variables, history = RUN["run"](d, N_EPOCHS, resume=True)
    assert leaves_equal(variables, ref_vars)
    assert history == ref_hist
    assert history["epoch"] == list(range(N_EPOCHS))
    assert ckpt.unfinished(d) == []  # the resumed run's writer removed the dead save


def test_hostile_checkpoint_folder_resumes_bit_exactly(reference, tmp_path):
    """Newest first: the unfinished save of a killed writer (6), an old-format file holding a pickle
    with a valid header and checksum (6), a folder whose every file is a pickle (5), a folder with
    truncated arrays (4), one with altered metadata (3); resumed with another key. All four bad
    checkpoints are skipped with a warning, nothing is unpickled, the stored key is used, and the
    run ends bit-identical to the uninterrupted one."""
    ref_vars, ref_hist, ref_dir, _ = reference
    d = copy_upto(ref_dir, str(tmp_path / "ckpt"), 5)
    marker = str(tmp_path / "PWNED")
    evil = pickle.dumps(_Payload(marker))
    leave_unfinished(ckpt.path_for(ref_dir, 6), d, 6)
    _craft(os.path.join(d, "ckpt_000006.msgpack"), evil)
    plant_pickle(ckpt.path_for(d, 5), evil)
    truncate_arrays(ckpt.path_for(d, 4))
    edit_meta(ckpt.path_for(d, 3), epoch=3, history=json.dumps({"epoch": [0, 1, 2, 3]}))
    with no_unpickling() as events, pytest.warns(RuntimeWarning) as rec:
        variables, history = RUN["run"](d, N_EPOCHS, resume=True, key=123, keep=100)
    msgs = [str(w.message) for w in rec]
    assert any(m.startswith("skipping unfinished checkpoint") and "ckpt_000006" in m for m in msgs)
    skipped = [m for m in msgs if "skipping unreadable checkpoint" in m]
    assert len(skipped) == 4
    assert "ckpt_000006.msgpack" in skipped[0] and "undecodable checkpoint body" in skipped[0]
    assert "ckpt_000005" in skipped[1] and "unreadable checkpoint" in skipped[1]
    assert "ckpt_000004" in skipped[2]
    assert "ckpt_000003" in skipped[3] and "checksum mismatch" in skipped[3]
    assert any("`key` differs" in m and "ckpt_000002" in m for m in msgs)
    assert events == [] and not os.path.exists(marker)
    # resumed from epoch 2, retrained 3..6 with the stored key: identical to the uninterrupted run
    assert leaves_equal(variables, ref_vars)
    assert history == ref_hist
    assert ckpt.unfinished(d) == []
    # the bad checkpoints were replaced by good ones, identical to the reference run's
    assert ckpt.list_checkpoints(d) == [ckpt.path_for(d, e) for e in range(N_EPOCHS)]
    for e in (3, 4, 5, 6):
        assert same_contents(ckpt.path_for(d, e), ckpt.path_for(ref_dir, e))


def test_resume_past_the_end_returns_the_stored_state(reference):
    ref_vars, ref_hist, ref_dir, _ = reference
    variables, history = RUN["run"](ref_dir, N_EPOCHS, resume=True, keep=100)
    assert leaves_equal(variables, ref_vars) and history == ref_hist
    # the stored parameters are those returned by the run, through load_variables too
    model, _ = RUN["build"]()
    loaded = aet.train.load_variables(model, ref_dir, RUN["data"]()[:1])
    assert leaves_equal(loaded, ref_vars)


def test_checkpoint_contents(reference):
    """Optimizer state, step, key, history and the model configuration are stored."""
    ref_vars, ref_hist, ref_dir, _ = reference
    raw = ckpt.read_raw(ckpt.path_for(ref_dir, N_EPOCHS - 1))
    assert set(raw) >= {"state", "epoch", "history", "signature", "key"}
    assert raw["epoch"] == N_EPOCHS - 1
    assert int(raw["state"]["step"]) == N_EPOCHS * (384 // 64)  # one update per batch
    assert np.array_equal(raw["key"], np.asarray(jax.random.key_data(jax.random.key(7))))
    assert json.loads(raw["history"]) == ref_hist
    sig = json.loads(raw["signature"])
    assert sig["model"] == "VAE"
    assert sig["model.encoder.latent_dim"] == "2"
    assert sig["model.encoder.body.features"] == "(16,)"
    assert sig["model.decoder"] == "BernoulliDecoder"
    # Adam's moments are stored (mu has the parameters' shapes) with its count
    mu = raw["state"]["opt_state"]["0"]["mu"]
    assert np.shape(mu["encoder"]["mu"]["kernel"]) == (16, 2)
    assert int(raw["state"]["opt_state"]["0"]["count"]) == N_EPOCHS * 6
    # the layout: an orbax folder with the arrays' item and a JSON item whose digest is the SHA-256
    # of every array (path, dtype, shape, bytes, in key order) and of the other entries
    path = ckpt.path_for(ref_dir, 0)
    assert os.path.isdir(os.path.join(path, "state"))
    meta = json.load(open(os.path.join(path, "meta", "metadata")))
    assert meta["format"] == ckpt.FORMAT and meta["epoch"] == 0
    raw0 = ckpt.read_raw(path)
    h = hashlib.sha256()
    for keypath, leaf in jax.tree_util.tree_flatten_with_path({k: raw0[k] for k in ("key", "state")})[0]:
        arr = np.asarray(leaf)
        h.update(f"{jax.tree_util.keystr(keypath)}|{arr.dtype.str}|{arr.shape}|".encode() + arr.tobytes())
    h.update(json.dumps({k: v for k, v in meta.items() if k != "digest"}, sort_keys=True).encode())
    assert meta["digest"] == h.hexdigest()


# --------------------------------------------------------------------------- configuration mismatch


@pytest.mark.parametrize(
    "kwargs, expected",
    [
        ({"hidden": 24}, "model.encoder.body.features: checkpoint (16,) vs model (24,)"),
        ({"latent": 3}, "model.encoder.latent_dim: checkpoint 2 vs model 3"),
        ({"decoder": "gaussian"}, "model.decoder: checkpoint BernoulliDecoder vs model JointGaussianLogDecoder"),
    ],
)
def test_mismatched_configuration_is_refused(reference, tmp_path, kwargs, expected):
    _, _, ref_dir, _ = reference
    d = copy_upto(ref_dir, str(tmp_path / "ckpt"), 1)
    other = RUN["build"](**kwargs)
    with pytest.raises(ValueError, match="different model configuration") as err:
        RUN["run"](d, 3, resume=True, model=other)
    assert expected in str(err.value)
    assert "ckpt_000001" in str(err.value)
    with pytest.raises(ValueError, match="different model configuration") as err:
        aet.train.load_variables(other[0], d, RUN["data"]()[:1])
    assert expected in str(err.value)
    # nothing was overwritten by the refused run
    assert ckpt.list_checkpoints(d) == [ckpt.path_for(d, 0), ckpt.path_for(d, 1)]


def test_same_shapes_other_activation_is_refused(reference, tmp_path):
    """Identical parameter shapes, different module field: still refused, naming the field."""
    _, _, ref_dir, _ = reference
    d = copy_upto(ref_dir, str(tmp_path / "ckpt"), 0)
    enc = aet.JointGaussianLogEncoder(aet.MLP([16], activation=nn.tanh, final_activation=nn.relu), 2)
    dec = aet.BernoulliDecoder(aet.MLP([16], final_activation=nn.relu), 64)
    model = aet.VAE(enc, dec)
    with pytest.raises(ValueError) as err:
        RUN["run"](d, 2, resume=True, model=(model, functools.partial(aet.vae.loss, model)))
    msg = str(err.value)
    assert "model.encoder.body.activation" in msg and "tanh" in msg and "relu" in msg
    assert "['params']" not in msg and "opt_state" not in msg  # only the configuration differs


# --------------------------------------------------------------------------- no code execution


class _Payload:
    """Unpickling this would create a marker file."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


def _craft(path: str, body: bytes, with_header: bool = True) -> None:
    with open(path, "wb") as f:
        f.write((ckpt.MAGIC + hashlib.sha256(body).digest() if with_header else b"") + body)


def test_pickle_payload_is_never_executed(tmp_path):
    marker = str(tmp_path / "PWNED")
    evil = pickle.dumps(_Payload(marker))
    # a pickle with a valid header and checksum, and a raw pickle without header
    _craft(str(tmp_path / "evil.msgpack"), evil)
    _craft(str(tmp_path / "raw.msgpack"), evil, with_header=False)
    with pytest.raises(ValueError, match="undecodable checkpoint body|not an aetk_jax checkpoint payload"):
        ckpt.read_raw(str(tmp_path / "evil.msgpack"))
    with pytest.raises(ValueError, match="bad header"):
        ckpt.read_raw(str(tmp_path / "raw.msgpack"))
    # well-formed msgpack bodies that are not checkpoint payloads
    _craft(str(tmp_path / "list.msgpack"), msgpack.packb([1, 2, 3]))
    with pytest.raises(ValueError, match="not an aetk_jax checkpoint payload"):
        ckpt.read_raw(str(tmp_path / "list.msgpack"))
    _craft(str(tmp_path / "dict.msgpack"), msgpack.packb({"x": 1}))
    with pytest.raises(ValueError, match="no 'state' entry"):
        ckpt.read_raw(str(tmp_path / "dict.msgpack"))
    assert not os.path.exists(marker)
    # the same holds for data files: numpy's pickle loading is off
    np.save(tmp_path / "evil.npy", np.array([_Payload(marker)], dtype=object), allow_pickle=True)
    with pytest.raises(ValueError, match="evil.npy"):
        aet.data.load(str(tmp_path / "evil.npy"))
    assert not os.path.exists(marker)


def test_evaluate_style_load_of_corrupt_folder(tmp_path, reference):
    _, _, ref_dir, _ = reference
    d = copy_upto(ref_dir, str(tmp_path / "ckpt"), 0)
    truncate_arrays(ckpt.path_for(d, 0))
    model, _ = RUN["build"]()
    with pytest.warns(RuntimeWarning, match="skipping"), pytest.raises(ValueError, match="no readable checkpoint .1 unreadable"):
        aet.train.load_variables(model, d, RUN["data"]()[:1])


def test_fresh_run_clears_previous_checkpoints(tmp_path):
    d = str(tmp_path / "ckpt")
    x = np.full((8, 4), 0.5, np.float32)
    kw = dict(key=jax.random.key(0), optimizer=optax.sgd(LR), batch_size=4, progress=False, checkpoint_dir=d)
    aet.train.fit(Lin(), penalty_loss, x, epochs=5, **kw)
    assert len(ckpt.list_checkpoints(d)) == 3  # keep_checkpoints=3: epochs 2, 3, 4
    with pytest.warns(RuntimeWarning, match="removed 3 checkpoint"):
        aet.train.fit(Lin(), penalty_loss, x, epochs=1, **kw)
    assert ckpt.list_checkpoints(d) == [ckpt.path_for(d, 0)]
    # and a resume continues the new run (2 updates per epoch: w = -lr * 2 * epochs)
    v, h = aet.train.fit(Lin(), penalty_loss, x, epochs=2, resume=True, **kw)
    np.testing.assert_array_equal(v["params"]["w"], sgd_w(4))
    assert h["epoch"] == [0, 1]


# --------------------------------------------------------------------------- non-finite guards


class Lin(nn.Module):
    """One parameter vector w (d,), initialised to 0."""

    @nn.compact
    def __call__(self, x):
        return x * self.param("w", nn.initializers.zeros, (x.shape[-1],))


def penalty_loss(variables, x, key, aux=False):
    """recon = Σ w (gradient: ones); penalty = log m − log m with m the batch's smallest row sum:
    exactly 0 normally, NaN when the batch holds an all-zero row (log 0 − log 0)."""
    w = variables["params"]["w"]
    recon = jnp.sum(w)
    m = jnp.min(jnp.sum(x, axis=-1))
    penalty = jnp.log(m) - jnp.log(m)
    loss = recon + penalty
    return (loss, {"recon": recon, "penalty": penalty}) if aux else loss


LR = 0.1


def sgd_w(n_updates: int, d: int = 4, scales=None) -> np.ndarray:
    """Independent float32 SGD trajectory for Σ w: w ← w − lr·s·1 per update."""
    w = np.zeros(d, np.float32)
    for i in range(n_updates):
        s = np.float32(1.0 if scales is None else scales[i])
        w = w - np.float32(LR) * s * np.ones(d, np.float32)
    return w


def test_nonfinite_stop_reports_step_terms_and_checkpoint(tmp_path):
    clean = np.full((8, 4), 0.5, np.float32)
    poisoned = clean.copy()
    poisoned[5] = 0.0
    d = str(tmp_path / "ckpt")
    kw = dict(key=jax.random.key(0), optimizer=optax.sgd(LR), batch_size=4, progress=False, checkpoint_dir=d)
    v, h = aet.train.fit(Lin(), penalty_loss, clean, epochs=2, **kw)
    np.testing.assert_array_equal(v["params"]["w"], sgd_w(4))
    with pytest.raises(aet.train.NonFiniteError) as info:
        aet.train.fit(Lin(), penalty_loss, poisoned, epochs=4, resume=True, **kw)
    err = info.value
    assert err.epoch == 2
    # 2 epochs × 2 batches were good, then the bad batch is batch 0 or 1 of epoch 2
    assert err.step in (4, 5)
    batch = err.step - 4
    msg = str(err)
    assert f"epoch 2, batch {batch} (update {err.step})" in msg
    assert "non-finite terms: loss, penalty." in msg  # recon stayed finite
    assert math_isnan(err.terms["penalty"]) and err.terms["recon"] == pytest.approx(float(np.sum(sgd_w(err.step))))
    assert err.checkpoint == ckpt.path_for(d, 1) and ckpt.path_for(d, 1) in msg
    # the returned parameters are the last good ones
    np.testing.assert_array_equal(err.variables["params"]["w"], sgd_w(err.step))
    assert err.history["epoch"] == [0, 1]


def math_isnan(v) -> bool:
    return bool(np.isnan(v))


def test_nonfinite_stop_without_checkpoint_says_so():
    x = np.full((8, 4), 0.5, np.float32)
    x[2] = 0.0
    with pytest.raises(aet.train.NonFiniteError, match="none written") as info:
        aet.train.fit(Lin(), penalty_loss, x, key=jax.random.key(1), optimizer=optax.sgd(LR), epochs=3,
                      batch_size=4, progress=False)
    assert info.value.epoch == 0 and info.value.step in (0, 1)
    np.testing.assert_array_equal(info.value.variables["params"]["w"], sgd_w(info.value.step))


def test_nonfinite_skip_lowers_the_learning_rate():
    x = np.full((8, 4), 0.5, np.float32)
    x[5] = 0.0  # one of the two batches of every epoch is non-finite
    with pytest.warns(RuntimeWarning, match="non-finite terms: loss, penalty") as rec:
        v, h = aet.train.fit(Lin(), penalty_loss, x, key=jax.random.key(0), optimizer=optax.sgd(LR), epochs=3,
                             batch_size=4, progress=False, on_nonfinite="skip")
    assert len([w for w in rec if "skipped 1 of 2 steps" in str(w.message)]) == 3
    assert h["train"]["skipped"] == [1.0, 1.0, 1.0]
    assert h["train"]["lr_scale"] == [0.5, 0.25, 0.125]
    assert all(np.isfinite(h["train"]["loss"]))
    # one good update per epoch at scale 2^-e (good batch first) or 2^-(e+1) (bad batch first):
    # the final w is one of these 8 SGD trajectories
    w = np.asarray(v["params"]["w"])
    candidates = []
    for bits in range(8):
        scales = [2.0 ** -(e + ((bits >> e) & 1)) for e in range(3)]
        candidates.append(sgd_w(3, scales=scales))
    assert any(np.array_equal(w, c) for c in candidates), (w, candidates)


def test_nonfinite_skip_gives_up_when_every_step_fails():
    x = np.zeros((8, 4), np.float32)
    with pytest.raises(aet.train.NonFiniteError, match="every step of epoch 0 was non-finite") as info:
        aet.train.fit(Lin(), penalty_loss, x, key=jax.random.key(0), optimizer=optax.sgd(LR), epochs=2,
                      batch_size=4, progress=False, on_nonfinite="skip")
    np.testing.assert_array_equal(info.value.variables["params"]["w"], np.zeros(4, np.float32))


def test_vae_divergence_names_the_elbo_terms():
    """A real VAE blown up by a huge learning rate: the terms are the loss's aux names."""
    model, loss = RUN["build"]()
    with pytest.raises(aet.train.NonFiniteError) as info:
        aet.train.fit(model, loss, RUN["data"](), key=jax.random.key(0), optimizer=optax.sgd(1e30), epochs=2,
                      batch_size=64, progress=False)
    terms = set(k for k, v in info.value.terms.items() if k != "finite" and not np.isfinite(v))
    assert "loss" in terms and terms <= {"loss", "loglikelihood", "kl", "elbo", "grad_norm"}
    assert terms & {"loglikelihood", "kl"}
    assert info.value.step >= 1  # the first update (from finite initial parameters) was applied
    # the returned (last good) parameters are finite: the guard rejected the failing update
    assert all(np.all(np.isfinite(leaf)) for leaf in jax.tree_util.tree_leaves(info.value.variables))
    assert "non-finite terms:" in str(info.value)


def quadratic_loss(variables, x, key, aux=False):
    """Σ (w − 1)²: gradient ascent with lr 1 (sgd(−1)) multiplies w − 1 by 3 per update, so the
    loss after t updates is d·9ᵗ — finite for a long time, but diverging."""
    loss = jnp.sum((variables["params"]["w"] - 1.0) ** 2)
    return (loss, {"quadratic": loss}) if aux else loss


def test_huge_but_finite_loss_stops_as_divergence():
    x = np.full((8, 4), 0.5, np.float32)
    kw = dict(key=jax.random.key(0), optimizer=optax.sgd(-1.0), batch_size=4, progress=False)
    with pytest.raises(aet.train.NonFiniteError, match="diverged") as info:
        aet.train.fit(Lin(), quadratic_loss, x, epochs=5, **kw)
    err = info.value
    # losses 4·9ᵗ: the first one (L0 = 4) is the reference, the limit 4 + 1e3·4 = 4004 is
    # first exceeded at t = 4 (26244); t = 3 gives 2916
    assert err.step == 4 and err.epoch == 2
    assert err.terms["loss"] == pytest.approx(4 * 9.0**4) and np.isfinite(err.terms["loss"])
    assert "above the run's first loss L0=4" in str(err)
    np.testing.assert_array_equal(err.variables["params"]["w"], np.full(4, 1.0 - 3.0**4, np.float32))
    # the factor is configurable; None turns the check off (10 updates: 4·9¹⁰ ≈ 1.4e10, still finite)
    with pytest.raises(aet.train.NonFiniteError, match="diverged") as info:
        aet.train.fit(Lin(), quadratic_loss, x, epochs=5, divergence_factor=1e5, **kw)
    assert info.value.step == 6  # 4·9⁶ ≈ 2.1e6 > 4 + 4e5
    v, h = aet.train.fit(Lin(), quadratic_loss, x, epochs=5, divergence_factor=None, **kw)
    np.testing.assert_allclose(v["params"]["w"], np.full(4, 1.0 - 3.0**10), rtol=1e-6)
    assert "diverged" not in h["train"]


# --------------------------------------------------------------------------- fit's argument checks


@pytest.mark.parametrize(
    "change, exc, match",
    [
        ({"data": np.zeros((0, 4), np.float32)}, ValueError, "`data` is empty"),
        ({"data": np.ones((6, 4), np.int32)}, TypeError, "`data` must have a floating dtype"),
        ({"data": np.ones(4, np.float32)}, ValueError, "`data` must be batch-first"),
        ({"data": np.array([[0.5, np.nan, 0.5, 0.5]] * 8, np.float32)}, ValueError, "`data` contains NaN"),
        ({"data": np.array([[0.5, np.inf, 0.5, 0.5]] * 8, np.float32)}, ValueError, "`data` contains NaN or inf"),
        ({"batch_size": 9}, ValueError, r"`batch_size` \(9\) is larger than the data \(8 examples\)"),
        ({"batch_size": 0}, ValueError, "`batch_size` must be >= 1"),
        ({"epochs": -1}, ValueError, "`epochs` must be >= 0"),
        ({"epochs": 2.5}, TypeError, "`epochs` must be an int"),
        ({"key": None}, TypeError, "`key` must be a jax.random key"),
        ({"key": np.zeros(3, np.float32)}, TypeError, "`key` must be a jax.random key"),
        ({"val_data": np.ones((3, 5), np.float32)}, ValueError, "`val_data` has per-example shape"),
        ({"on_nonfinite": "explode"}, ValueError, "`on_nonfinite` must be 'stop' or 'skip'"),
        ({"nonfinite_factor": 1.5}, ValueError, "`nonfinite_factor` must be < 1"),
        ({"divergence_factor": -1.0}, ValueError, "`divergence_factor` must be > 0"),
        ({"resume": True}, ValueError, "`resume=True` needs `checkpoint_dir`"),
        ({"loss_fn": "vae"}, TypeError, "`loss_fn` must be a callable"),
        ({"model": object()}, TypeError, "`model` must be a flax module"),
        ({"callbacks": [1]}, TypeError, "`callbacks` must be a sequence of callables"),
        ({"keep_checkpoints": 0}, ValueError, "`keep_checkpoints` must be >= 1"),
    ],
)
def test_fit_validates_its_arguments(change, exc, match):
    args = dict(model=Lin(), loss_fn=penalty_loss, data=np.full((8, 4), 0.5, np.float32))
    kw = dict(key=jax.random.key(0), epochs=1, batch_size=4, progress=False)
    for k, v in change.items():
        (args if k in args else kw)[k] = v
    with pytest.raises(exc, match=match):
        aet.train.fit(args["model"], args["loss_fn"], args["data"], **kw)
