"""Checkpoints: bit-exact resume, corrupt files skipped, other configurations refused,
and files that are data only (never pickles, loading executes nothing)."""
from __future__ import annotations

import functools
import os
import pickle
import shutil
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import aetk_jax as aet
from aetk_jax import checkpoint as ckpt
from conftest import small_vae_parts


def _leaves_equal(a, b) -> bool:
    la, lb = jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)
    return len(la) == len(lb) and all(np.array_equal(np.asarray(u), np.asarray(v)) for u, v in zip(la, lb))


def _fit(model, x, **kw):
    return aet.train.fit(model, functools.partial(aet.vae.loss, model), x, key=jax.random.key(11),
                         batch_size=32, progress=False, **kw)


@pytest.fixture(scope="module")
def small(digits):
    train, _ = digits
    return aet.VAE(*small_vae_parts(hidden=16)), train.x[:128]  # 4 batches per epoch


@pytest.fixture(scope="module")
def two_epochs(small, tmp_path_factory):
    """A run of 2 epochs with checkpoints (ckpt_000000, ckpt_000001); tests work on copies."""
    model, x = small
    d = str(tmp_path_factory.mktemp("two_epochs"))
    variables, history = _fit(model, x, epochs=2, checkpoint_dir=d)
    return d, variables, history


def _copy(src: str, dst) -> str:
    shutil.copytree(src, str(dst))
    return str(dst)


def test_resume_is_bit_identical_to_an_uninterrupted_run(small, two_epochs, tmp_path):
    model, x = small
    src, v_half, h_half = two_epochs
    d = _copy(src, tmp_path / "run")
    assert [os.path.basename(p) for p in ckpt.list_checkpoints(d)] == ["ckpt_000000.msgpack", "ckpt_000001.msgpack"]
    v_full, h_full = _fit(model, x, epochs=4)
    assert not _leaves_equal(v_half, v_full)
    v_res, h_res = _fit(model, x, epochs=4, checkpoint_dir=d, resume=True)
    assert _leaves_equal(v_res, v_full)  # np.array_equal on every leaf
    assert h_res == h_full  # the history is carried over by the checkpoint
    # the newest checkpoint holds the same parameters and the history as written
    raw = ckpt.read_raw(ckpt.list_checkpoints(d)[-1])
    assert int(raw["epoch"]) == 3
    assert _leaves_equal(raw["state"]["params"], v_full["params"])
    # resuming a finished run trains nothing more and returns the same parameters
    v_again, h_again = _fit(model, x, epochs=4, checkpoint_dir=d, resume=True)
    assert _leaves_equal(v_again, v_full) and h_again["epoch"] == [0, 1, 2, 3]


def test_checkpoint_of_another_configuration_is_refused(small, two_epochs, tmp_path):
    _, x = small
    d = _copy(two_epochs[0], tmp_path / "run")
    wider = aet.VAE(*small_vae_parts(hidden=24))
    with pytest.raises(ValueError) as info:
        _fit(wider, x, epochs=3, checkpoint_dir=d, resume=True)
    msg = str(info.value)
    assert "different model configuration" in msg
    assert "ckpt_000001.msgpack" in msg
    # it names a parameter whose shape differs, with both shapes (16 stored, 24 wanted)
    assert "dense_0" in msg and "16" in msg and "24" in msg


# ------------------------------------------------------------------- file-level behaviour


def _payload(scale: float = 1.0):
    state = {"params": {"w": np.arange(6, dtype=np.float32).reshape(2, 3) * scale, "b": np.float32(scale)},
             "step": np.int32(7)}
    sig = '{"model": "VAE", "w": [2, 3]}'
    return {"state": state, "epoch": 0, "history": '{"epoch": [0]}', "signature": sig}


def test_save_and_restore_round_trip_and_atomicity(tmp_path):
    d = str(tmp_path)
    for e in range(5):
        path = ckpt.save(d, e, {**_payload(e + 1.0), "epoch": e}, keep=3)
        assert os.path.basename(path) == f"ckpt_{e:06d}.msgpack"
    names = sorted(os.listdir(d))
    assert names == ["ckpt_000002.msgpack", "ckpt_000003.msgpack", "ckpt_000004.msgpack"]  # keep=3, no temp files
    restored = ckpt.restore(ckpt.list_checkpoints(d)[-1], _payload())
    np.testing.assert_array_equal(restored["state"]["params"]["w"], np.arange(6, dtype=np.float32).reshape(2, 3) * 5.0)
    assert restored["state"]["params"]["w"].dtype == np.float32
    assert float(restored["state"]["params"]["b"]) == 5.0 and int(restored["state"]["step"]) == 7
    assert restored["epoch"] == 4 and restored["history"] == '{"epoch": [0]}'


def test_corrupt_or_truncated_newest_checkpoint_is_skipped_with_warning(tmp_path):
    d = str(tmp_path)
    for e in range(3):
        ckpt.save(d, e, {**_payload(e + 1.0), "epoch": e})
    newest = ckpt.list_checkpoints(d)[-1]
    with open(newest, "rb") as f:
        blob = f.read()
    with open(newest, "wb") as f:
        f.write(blob[: len(blob) // 2])  # truncated mid-write
    with pytest.warns(RuntimeWarning, match="ckpt_000002"):
        path, restored = ckpt.latest_valid(d, _payload())
    assert path.endswith("ckpt_000001.msgpack") and restored["epoch"] == 1
    np.testing.assert_array_equal(restored["state"]["params"]["w"], np.arange(6, dtype=np.float32).reshape(2, 3) * 2.0)
    # one flipped byte in the body is caught by the checksum
    path1 = ckpt.list_checkpoints(d)[1]
    blob = bytearray(open(path1, "rb").read())
    blob[-5] ^= 0xFF
    open(path1, "wb").write(bytes(blob))
    with pytest.raises(ValueError, match="checksum"):
        ckpt.read_raw(path1)
    with pytest.warns(RuntimeWarning):
        path, restored = ckpt.latest_valid(d, _payload())
    assert path.endswith("ckpt_000000.msgpack") and float(restored["state"]["params"]["b"]) == 1.0


def test_signature_mismatch_names_the_difference(tmp_path):
    d = str(tmp_path)
    ckpt.save(d, 0, _payload())
    template = {**_payload(), "signature": '{"model": "VAE", "w": [2, 4]}'}
    with pytest.raises(ValueError, match="different model configuration") as info:
        ckpt.latest_valid(d, template)
    assert "w: checkpoint [2, 3] vs model [2, 4]" in str(info.value)


class _Evil:
    """Unpickling this creates a marker file: proof that code ran."""

    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_checkpoints_are_not_pickles_and_loading_runs_no_code(small, two_epochs, tmp_path):
    model, x = small
    d = _copy(two_epochs[0], tmp_path / "run")
    path = ckpt.list_checkpoints(d)[-1]
    blob = open(path, "rb").read()
    assert blob.startswith(ckpt.MAGIC)
    with pytest.raises(Exception):
        pickle.loads(blob)  # not a pickle stream
    assert b"\x80\x04\x95" not in blob[: len(ckpt.MAGIC) + 40]  # no pickle protocol-4 header up front

    # a malicious pickle dropped in as the newest checkpoint, raw and with a valid header+checksum
    marker = tmp_path / "pwned"
    evil = pickle.dumps(_Evil(str(marker)))
    open(os.path.join(d, "ckpt_000008.msgpack"), "wb").write(evil)
    open(os.path.join(d, "ckpt_000009.msgpack"), "wb").write(ckpt.MAGIC + ckpt._digest(evil) + evil)
    for p in ckpt.list_checkpoints(d)[-2:]:
        with pytest.raises(ValueError):
            ckpt.read_raw(p)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        v, h = _fit(model, x, epochs=2, checkpoint_dir=d, resume=True)
    assert not marker.exists()
    skipped = [str(w.message) for w in caught if issubclass(w.category, RuntimeWarning)]
    assert any("ckpt_000009" in m for m in skipped) and any("ckpt_000008" in m for m in skipped)
    # resumed from the genuine epoch-1 checkpoint: nothing left to train, same parameters
    assert h["epoch"] == [0, 1] and _leaves_equal(v, two_epochs[1])
