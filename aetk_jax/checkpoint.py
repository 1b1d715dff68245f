"""Atomic, code-free checkpoints.

A checkpoint file is ``MAGIC + sha256(body) + body`` where ``body`` is the
msgpack encoding (``flax.serialization``) of a plain dict of arrays, numbers
and strings. Loading never unpickles anything, verifies the checksum (a
truncated or corrupt file is detected and skipped), and restores into a
template pytree, so a checkpoint of another model configuration is refused.
Files are written to a temporary name, fsynced, then renamed into place.
"""
from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import os
import re
import tempfile
import warnings
from typing import Any, Optional

import jax
import numpy as np
from flax import serialization

MAGIC = b"AETKCKPT1\n"
_NAME = re.compile(r"^ckpt_(\d{6})\.msgpack$")


def _digest(body: bytes) -> bytes:
    return hashlib.sha256(body).digest()


def path_for(directory: str, epoch: int) -> str:
    return os.path.join(directory, f"ckpt_{epoch:06d}.msgpack")


def signature(tree: Any) -> dict[str, list[int]]:
    """``{path: shape}`` of every leaf: what must match for a checkpoint to load."""
    flat = jax.tree_util.tree_flatten_with_path(tree)[0]
    return {jax.tree_util.keystr(p): list(np.shape(v)) for p, v in flat}


def _describe(value: Any) -> str:
    """A stable text form of one module attribute (functions by name, arrays by shape and hash)."""
    if isinstance(value, functools.partial):
        kw = ", ".join(f"{k}={_describe(v)}" for k, v in sorted(value.keywords.items()))
        return f"partial({_describe(value.func)}{', ' if kw else ''}{kw})"
    if hasattr(value, "shape") and hasattr(value, "dtype") and np.ndim(value) > 0:
        arr = np.asarray(value)
        return f"array{arr.shape}:{arr.dtype}:{hashlib.sha256(arr.tobytes()).hexdigest()[:12]}"
    if callable(value) and not isinstance(value, type) and hasattr(value, "__name__"):
        return f"{getattr(value, '__module__', '') or ''}.{value.__name__}".lstrip(".")
    if isinstance(value, type):
        return f"{value.__module__}.{value.__qualname__}"
    return repr(value)


def model_config(model: Any, prefix: str = "model") -> dict[str, str]:
    """The configuration of a flax module as flat ``{"model.encoder.latent_dim": "2", ...}``.

    Every dataclass field of ``model`` and of its sub-modules (recursively)
    except ``parent`` and ``name``; stored in checkpoints so that resuming or
    loading with another configuration is refused with the fields that differ.
    """
    out = {prefix: type(model).__name__}
    if not dataclasses.is_dataclass(model):
        return out
    for field in dataclasses.fields(model):
        if field.name in ("parent", "name"):
            continue
        value = getattr(model, field.name, None)
        key = f"{prefix}.{field.name}"
        if dataclasses.is_dataclass(value) and hasattr(value, "apply"):  # a sub-module
            out.update(model_config(value, key))
        elif isinstance(value, (list, tuple)) and any(hasattr(v, "apply") for v in value):
            for i, v in enumerate(value):
                out.update(model_config(v, f"{key}[{i}]") if hasattr(v, "apply") else {f"{key}[{i}]": _describe(v)})
        else:
            out[key] = _describe(value)
    return out


def save(directory: str, epoch: int, payload: dict[str, Any], keep: int = 3) -> str:
    """Write ``payload`` atomically as checkpoint ``epoch``; keep the newest ``keep`` files."""
    os.makedirs(directory, exist_ok=True)
    body = serialization.msgpack_serialize(serialization.to_state_dict(jax.device_get(payload)))
    final = path_for(directory, epoch)
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=".tmp_ckpt_")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(MAGIC + _digest(body) + body)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, final)
        for name in os.listdir(directory):  # leftovers of a writer killed mid-write
            if name.startswith(".tmp_ckpt_") and os.path.join(directory, name) != tmp:
                try:
                    os.unlink(os.path.join(directory, name))
                except OSError:
                    pass
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    dfd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)
    for old in list_checkpoints(directory)[:-keep] if keep > 0 else []:
        os.unlink(old)
    return final


def list_checkpoints(directory: str) -> list[str]:
    """Checkpoint files in ``directory``, oldest first."""
    if not os.path.isdir(directory):
        return []
    names = sorted(n for n in os.listdir(directory) if _NAME.match(n))
    return [os.path.join(directory, n) for n in names]


def read_raw(path: str) -> dict[str, Any]:
    """Decode and verify one file; ``ValueError`` if truncated or corrupt."""
    with open(path, "rb") as f:
        blob = f.read()
    if not blob.startswith(MAGIC) or len(blob) < len(MAGIC) + 32:
        raise ValueError(f"{path}: not an aetk_jax checkpoint (bad header)")
    digest, body = blob[len(MAGIC) : len(MAGIC) + 32], blob[len(MAGIC) + 32 :]
    if _digest(body) != digest:
        raise ValueError(f"{path}: checksum mismatch (truncated or corrupt)")
    try:
        raw = serialization.msgpack_restore(body)
    except Exception as err:  # msgpack's own errors: data only, nothing is executed
        raise ValueError(f"{path}: undecodable checkpoint body ({type(err).__name__}: {err})") from None
    if not isinstance(raw, dict) or "state" not in raw:
        raise ValueError(f"{path}: not an aetk_jax checkpoint payload (no 'state' entry)")
    return raw


def restore(path: str, template: dict[str, Any], raw: Optional[dict[str, Any]] = None) -> dict[str, Any]:
    """Restore ``path`` into the structure of ``template``.

    Raises ``ValueError`` naming what differs when the stored parameter shapes
    or model configuration do not match the template's.
    """
    raw = read_raw(path) if raw is None else raw
    want_sig = template.get("signature")
    if want_sig is not None and raw.get("signature") != want_sig:
        have = json.loads(raw.get("signature", "{}"))
        want = json.loads(want_sig)
        keys = sorted(set(have) | set(want), key=lambda k: (not k.startswith("model"), k))  # configuration first
        diffs = [f"{k}: checkpoint {have.get(k)} vs model {want.get(k)}" for k in keys if have.get(k) != want.get(k)]
        raise ValueError(
            f"{path} was written for a different model configuration; it differs in "
            + "; ".join(diffs[:8])
            + (" …" if len(diffs) > 8 else "")
        )
    return serialization.from_state_dict(template, raw)


def latest_valid(directory: str, template: dict[str, Any]) -> Optional[tuple[str, dict[str, Any]]]:
    """The newest checkpoint that decodes; corrupt ones are skipped with a warning.

    A configuration mismatch is not skipped: it raises ``ValueError``.
    """
    for path in reversed(list_checkpoints(directory)):
        try:
            raw = read_raw(path)
        except Exception as err:  # OSError, ValueError, or msgpack's own decode errors
            warnings.warn(f"skipping unreadable checkpoint {path}: {err}", RuntimeWarning, stacklevel=2)
            continue
        return path, restore(path, template, raw)
    return None
