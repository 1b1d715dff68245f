"""Damage checkpoints the way crashes, disks and attackers do, for the checkpoint tests.

The tests state the guarantees through ``aet.checkpoint``'s public functions
(``list_checkpoints``, ``path_for``, ``read_raw``, ``unfinished``); only this
module knows where an orbax checkpoint keeps its arrays (``state/``, the
tensorstore/OCDBT data files) and its metadata (``meta/metadata``, JSON), so
a change of layout is one edit here. ``no_unpickling`` records every
``pickle.find_class`` audit event (raised by every unpickler, C or Python,
before it resolves a global: the only way a pickle runs code).
"""
from __future__ import annotations

import contextlib
import json
import os
import shutil
import sys

import jax
import numpy as np

from aetk_jax import checkpoint as ckpt

_EVENTS: list = []  # (name, args) of pickle.find_class while a no_unpickling block is active
_ACTIVE: list = []


def _audit(event: str, args) -> None:
    if _ACTIVE and event == "pickle.find_class":
        _EVENTS.append((event, args))


sys.addaudithook(_audit)  # audit hooks cannot be removed; it records only inside no_unpickling


@contextlib.contextmanager
def no_unpickling():
    """Yield a list that receives every ``pickle.find_class`` event raised inside the block."""
    start = len(_EVENTS)
    seen: list = []
    _ACTIVE.append(True)
    try:
        yield seen
    finally:
        _ACTIVE.pop()
        seen.extend(_EVENTS[start:])


def data_files(path: str) -> list[str]:
    """The array data files of an orbax checkpoint (everything in a ``d/`` folder under ``state/``)."""
    out = []
    for root, _, files in os.walk(os.path.join(path, "state")):
        if os.path.basename(root) == "d":
            out += [os.path.join(root, f) for f in sorted(files)]
    assert out, f"{path}: no array data files found (has the orbax layout changed?)"
    return out


def meta_file(path: str) -> str:
    return os.path.join(path, "meta", "metadata")


def truncate_arrays(path: str) -> None:
    """Cut every array data file to half its length (a write cut short)."""
    for f in data_files(path):
        size = os.path.getsize(f)
        with open(f, "r+b") as fh:
            fh.truncate(size // 2)


def flip_arrays(path: str) -> None:
    """Flip one bit in the middle of every array data file (a bad disk block)."""
    for f in data_files(path):
        blob = bytearray(open(f, "rb").read())
        blob[len(blob) // 2] ^= 0x01
        open(f, "wb").write(bytes(blob))


def truncate_meta(path: str) -> None:
    """Cut the JSON metadata item to half its length."""
    blob = open(meta_file(path), "rb").read()
    open(meta_file(path), "wb").write(blob[: len(blob) // 2])


def edit_meta(path: str, **changes) -> None:
    """Rewrite the JSON metadata with some entries changed: still valid JSON, but not what was saved."""
    meta = json.load(open(meta_file(path)))
    meta.update(changes)
    json.dump(meta, open(meta_file(path), "w"))


def swap_arrays(path: str, other: str) -> None:
    """Replace the arrays of ``path`` by those of checkpoint ``other`` (a readable tree, wrong contents)."""
    shutil.rmtree(os.path.join(path, "state"))
    shutil.copytree(os.path.join(other, "state"), os.path.join(path, "state"))


def plant_pickle(path: str, evil: bytes) -> list[str]:
    """Overwrite every file of checkpoint folder ``path`` with the pickle ``evil``; returns the files."""
    files = [os.path.join(root, f) for root, _, names in os.walk(path) for f in names]
    for f in files:
        open(f, "wb").write(evil)
    return files


def leave_unfinished(src: str, directory: str, epoch: int) -> str:
    """A copy of checkpoint ``src`` as the temporary folder of epoch ``epoch``'s save, as a killed writer leaves it."""
    tmp = ckpt.path_for(directory, epoch) + ckpt.TMP_SUFFIX
    shutil.copytree(src, tmp)
    return tmp


def copy_checkpoint(path: str, directory: str) -> str:
    """Copy one checkpoint (a folder or an old file) into ``directory``."""
    os.makedirs(directory, exist_ok=True)
    dst = os.path.join(directory, os.path.basename(os.path.normpath(path)))
    if os.path.isdir(path):
        shutil.copytree(path, dst)
    else:
        shutil.copy(path, dst)
    return dst


def same_contents(a: str, b: str) -> bool:
    """Whether two checkpoints hold the same payload: every array bit for bit, every number and string."""
    ra, rb = ckpt.read_raw(a), ckpt.read_raw(b)
    la, ta = jax.tree_util.tree_flatten(ra)
    lb, tb = jax.tree_util.tree_flatten(rb)
    if ta != tb or len(la) != len(lb):
        return False
    for x, y in zip(la, lb):
        if isinstance(x, (str, int, float)):
            if type(x) is not type(y) or x != y:
                return False
        elif np.asarray(x).dtype != np.asarray(y).dtype or not np.array_equal(x, y):
            return False
    return True


def write_legacy(path: str, raw: dict) -> None:
    """Write ``raw`` (a ``read_raw`` dict) as a checkpoint of the previous format:
    ``MAGIC + sha256(body) + body`` with ``body`` the flax msgpack encoding."""
    import hashlib

    from flax import serialization

    body = serialization.msgpack_serialize(raw)
    with open(path, "wb") as f:
        f.write(ckpt.MAGIC + hashlib.sha256(body).digest() + body)
