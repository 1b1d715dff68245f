"""Checkpoints: bit-exact resume, corrupt checkpoints skipped, other configurations refused,
and files that are data only (never pickles, loading executes nothing). The damage is done
by ``checkpoint_faults`` (the one module that knows the on-disk layout)."""
from __future__ import annotations

import functools
import hashlib
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
from checkpoint_faults import (copy_checkpoint, edit_meta, flip_arrays, leave_unfinished, no_unpickling,
                               plant_pickle, same_contents, swap_arrays, truncate_arrays, truncate_meta, write_legacy)
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
    assert ckpt.list_checkpoints(d) == [ckpt.path_for(d, 0), ckpt.path_for(d, 1)]
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
    assert os.path.basename(ckpt.path_for(d, 1)) in msg
    # it names a parameter whose shape differs, with both shapes (16 stored, 24 wanted)
    assert "dense_0" in msg and "16" in msg and "24" in msg


# ------------------------------------------------------------------- file-level behaviour


def _payload(scale: float = 1.0):
    state = {"params": {"w": np.arange(6, dtype=np.float32).reshape(2, 3) * scale, "b": np.float32(scale)},
             "step": np.int32(7)}
    sig = '{"model": "VAE", "w": [2, 3]}'
    return {"state": state, "epoch": 0, "history": '{"epoch": [0]}', "signature": sig}



def _w(scale: float) -> np.ndarray:
    return np.arange(6, dtype=np.float32).reshape(2, 3) * scale


def _saved(d: str, n: int = 3, keep: int = 3) -> list[str]:
    return [ckpt.save(d, e, {**_payload(e + 1.0), "epoch": e}, keep=keep) for e in range(n)]


def test_save_and_restore_round_trip_and_atomicity(tmp_path):
    d = str(tmp_path)
    for e in range(5):
        path = ckpt.save(d, e, {**_payload(e + 1.0), "epoch": e}, keep=3)
        assert path == ckpt.path_for(d, e) and ckpt.epoch_of(path) == e
    # keep=3, nothing else in the folder (no temporary save left behind)
    assert ckpt.list_checkpoints(d) == [ckpt.path_for(d, e) for e in (2, 3, 4)]
    assert sorted(os.listdir(d)) == [os.path.basename(ckpt.path_for(d, e)) for e in (2, 3, 4)]
    assert ckpt.unfinished(d) == []
    restored = ckpt.restore(ckpt.list_checkpoints(d)[-1], _payload())
    np.testing.assert_array_equal(restored["state"]["params"]["w"], _w(5.0))
    assert restored["state"]["params"]["w"].dtype == np.float32
    assert np.asarray(restored["state"]["params"]["b"]).dtype == np.float32
    assert float(restored["state"]["params"]["b"]) == 5.0 and int(restored["state"]["step"]) == 7
    assert restored["epoch"] == 4 and restored["history"] == '{"epoch": [0]}'


def test_asynchronous_writer_saves_what_it_was_given(tmp_path):
    """The background save writes the payload of the call, even if the caller's arrays change afterwards."""
    d = str(tmp_path)
    payload = _payload(2.0)
    with ckpt.Writer(d, keep=2, asynchronous=True) as writer:
        path = writer.save(0, payload)
        payload["state"]["params"]["w"] *= 0  # the caller's buffer, reused
        writer.save(1, _payload(3.0))
    np.testing.assert_array_equal(ckpt.read_raw(path)["state"]["params"]["w"], _w(2.0))
    np.testing.assert_array_equal(ckpt.read_raw(ckpt.path_for(d, 1))["state"]["params"]["w"], _w(3.0))
    assert ckpt.unfinished(d) == []


@pytest.mark.parametrize("damage", [truncate_arrays, flip_arrays, truncate_meta])
def test_corrupt_or_truncated_newest_checkpoint_is_skipped_with_warning(tmp_path, damage):
    d = str(tmp_path)
    paths = _saved(d)
    damage(paths[-1])
    with pytest.raises(ValueError, match="ckpt_000002"):
        ckpt.read_raw(paths[-1])
    with pytest.warns(RuntimeWarning, match="skipping unreadable checkpoint .*ckpt_000002"):
        path, restored = ckpt.latest_valid(d, _payload())
    assert path == paths[1] and restored["epoch"] == 1
    np.testing.assert_array_equal(restored["state"]["params"]["w"], _w(2.0))


def test_readable_but_altered_checkpoint_fails_the_digest(tmp_path):
    """Data that orbax reads back without error but that is not what was saved: the SHA-256 digest refuses it."""
    d = str(tmp_path)
    paths = _saved(d)
    swap_arrays(paths[2], paths[1])  # epoch 1's arrays under epoch 2's metadata
    with pytest.raises(ValueError, match="checksum mismatch"):
        ckpt.read_raw(paths[2])
    edit_meta(paths[1], history='{"epoch": [0, 1]}')  # valid JSON, other contents
    with pytest.raises(ValueError, match="checksum mismatch"):
        ckpt.read_raw(paths[1])
    with pytest.warns(RuntimeWarning) as rec:
        path, restored = ckpt.latest_valid(d, _payload())
    assert [str(w.message).split(":")[0] for w in rec] == [f"skipping unreadable checkpoint {p}" for p in paths[:0:-1]]
    assert path == paths[0] and float(restored["state"]["params"]["b"]) == 1.0


def test_unfinished_save_is_reported_and_skipped(tmp_path):
    d = str(tmp_path)
    paths = _saved(d, 2)
    tmp = leave_unfinished(paths[1], d, 2)  # a writer killed while saving epoch 2
    assert ckpt.list_checkpoints(d) == paths and ckpt.unfinished(d) == [tmp]
    with pytest.raises(ValueError, match="unfinished save"):
        ckpt.read_raw(tmp)
    with pytest.warns(RuntimeWarning, match="skipping unfinished checkpoint .*ckpt_000002"):
        path, restored = ckpt.latest_valid(d, _payload())
    assert path == paths[1] and restored["epoch"] == 1
    # the next writer of the folder removes it
    ckpt.save(d, 2, {**_payload(3.0), "epoch": 2})
    assert ckpt.unfinished(d) == [] and ckpt.read_raw(ckpt.path_for(d, 2))["epoch"] == 2


def test_signature_mismatch_names_the_difference(tmp_path):
    d = str(tmp_path)
    ckpt.save(d, 0, _payload())
    template = {**_payload(), "signature": '{"model": "VAE", "w": [2, 4]}'}
    with pytest.raises(ValueError, match="different model configuration") as info:
        ckpt.latest_valid(d, template)
    assert "w: checkpoint [2, 3] vs model [2, 4]" in str(info.value)


def test_saving_an_epoch_again_replaces_it_and_the_later_ones(tmp_path):
    """A run resumed from epoch 0 (1 and 2 unreadable) overwrites them as it goes, like the old files were."""
    d = str(tmp_path)
    paths = _saved(d)
    truncate_arrays(paths[1])
    ckpt.save(d, 1, {**_payload(9.0), "epoch": 1})
    assert ckpt.list_checkpoints(d) == paths[:2]  # the stale epoch 2 is gone, epoch 1 is the new one
    np.testing.assert_array_equal(ckpt.read_raw(paths[1])["state"]["params"]["w"], _w(9.0))


# ------------------------------------------------------------------- checkpoints of the previous format


def test_old_msgpack_checkpoints_resume_bit_identically(small, two_epochs, tmp_path):
    """A folder of the previous format (ckpt_EEEEEE.msgpack) resumes; the run continues in the new
    format and ends as the uninterrupted run; the old files are pruned by keep_checkpoints."""
    model, x = small
    src = two_epochs[0]
    d = str(tmp_path / "old")
    os.makedirs(d)
    for e in (0, 1):
        write_legacy(os.path.join(d, f"ckpt_{e:06d}.msgpack"), ckpt.read_raw(ckpt.path_for(src, e)))
    assert [ckpt.epoch_of(p) for p in ckpt.list_checkpoints(d)] == [0, 1]
    assert all(p.endswith(".msgpack") for p in ckpt.list_checkpoints(d))
    v_full, h_full = _fit(model, x, epochs=4)
    v_res, h_res = _fit(model, x, epochs=4, checkpoint_dir=d, resume=True, keep_checkpoints=3)
    assert _leaves_equal(v_res, v_full) and h_res == h_full
    assert ckpt.list_checkpoints(d) == [os.path.join(d, "ckpt_000001.msgpack"), ckpt.path_for(d, 2),
                                        ckpt.path_for(d, 3)]


def test_old_reader_still_verifies(tmp_path):
    """The previous format's reader keeps its checks: header, checksum, payload shape."""
    d = str(tmp_path)
    raw = {"state": {"params": {"w": _w(1.0)}}, "epoch": 0, "history": "{}", "signature": "{}"}
    path = os.path.join(d, "ckpt_000000.msgpack")
    write_legacy(path, raw)
    np.testing.assert_array_equal(ckpt.read_raw(path)["state"]["params"]["w"], _w(1.0))
    blob = bytearray(open(path, "rb").read())
    blob[-5] ^= 0xFF
    open(path, "wb").write(bytes(blob))
    with pytest.raises(ValueError, match="checksum mismatch"):
        ckpt.read_raw(path)
    open(path, "wb").write(bytes(blob[: len(ckpt.MAGIC) + 10]))
    with pytest.raises(ValueError, match="bad header"):
        ckpt.read_raw(path)


# ------------------------------------------------------------------- no code execution


class _Evil:
    """Unpickling this creates a marker file: proof that code ran."""

    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_checkpoints_are_not_pickles_and_loading_runs_no_code(small, two_epochs, tmp_path):
    model, x = small
    d = _copy(two_epochs[0], tmp_path / "run")
    with no_unpickling() as events:  # a genuine checkpoint is read without any unpickler
        ckpt.read_raw(ckpt.list_checkpoints(d)[-1])
    assert events == []
    for root, _, files in os.walk(ckpt.list_checkpoints(d)[-1]):
        for f in files:
            with pytest.raises(Exception):
                pickle.loads(open(os.path.join(root, f), "rb").read())  # no file is a pickle stream

    # malicious pickles where checkpoints are expected: every file of a folder, an old-format file
    # with a valid header and checksum, and a raw pickle under an old-format name
    marker = tmp_path / "pwned"
    evil = pickle.dumps(_Evil(str(marker)))
    planted = copy_checkpoint(ckpt.list_checkpoints(d)[-1], str(tmp_path / "spare"))
    shutil.move(planted, ckpt.path_for(d, 9))
    plant_pickle(ckpt.path_for(d, 9), evil)
    open(os.path.join(d, "ckpt_000008.msgpack"), "wb").write(ckpt.MAGIC + hashlib.sha256(evil).digest() + evil)
    open(os.path.join(d, "ckpt_000007.msgpack"), "wb").write(evil)
    for p in ckpt.list_checkpoints(d)[-3:]:
        with pytest.raises(ValueError):
            ckpt.read_raw(p)
    with no_unpickling() as events, warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        v, h = _fit(model, x, epochs=2, checkpoint_dir=d, resume=True)
    assert events == [] and not marker.exists()
    skipped = [str(w.message) for w in caught if issubclass(w.category, RuntimeWarning)]
    for e in (9, 8, 7):
        assert any(f"ckpt_00000{e}" in m and "skipping unreadable" in m for m in skipped)
    # resumed from the genuine epoch-1 checkpoint: nothing left to train, same parameters
    assert h["epoch"] == [0, 1] and _leaves_equal(v, two_epochs[1])
    assert same_contents(ckpt.path_for(d, 1), ckpt.path_for(two_epochs[0], 1))
