"""Atomic, code-free checkpoints on orbax-checkpoint.

Layout. Checkpoint ``e`` of a run is the folder ``DIR/ckpt_EEEEEE/`` written
by one ``orbax.checkpoint.CheckpointManager`` (``step_prefix="ckpt"``, six
digits) with two items:

* ``state/``: every array of the payload (the training state as its flax state
  dict, the run's key data) as one orbax PyTree (tensorstore/OCDBT array files
  plus orbax's JSON metadata);
* ``meta/metadata``: JSON with the payload's numbers and strings (epoch,
  history, configuration signature), ``format`` (:data:`FORMAT`) and
  ``digest``, the SHA-256 of every array (its path, dtype, shape and bytes)
  and of the other metadata entries.

Guarantees.

* Atomic: the manager writes into ``ckpt_EEEEEE.orbax-checkpoint-tmp`` and
  renames it into place once every item is written, so a writer killed
  mid-save leaves an unfinished folder that :func:`list_checkpoints` ignores
  and :func:`latest_valid` reports with a warning (the manager of the next
  run removes it).
* Verified: :func:`read_raw` recomputes the digest, so a truncated, missing or
  bit-flipped array file or metadata file is refused with ``ValueError``;
  :func:`latest_valid` skips such a checkpoint with a ``RuntimeWarning``
  naming it and falls back to the previous one.
* Code-free: loading reads JSON and tensorstore arrays only (no ``pickle``
  anywhere in orbax's restore path); anything else is refused.
* Refused configuration: :func:`restore` compares the stored
  :func:`model_config` and leaf shapes with the template's and raises
  ``ValueError`` listing what differs.

Synchronous or asynchronous. :class:`Writer` can save in orbax's background
thread (``asynchronous=True``; ``fit`` does): the payload is first copied to
host NumPy arrays that nothing else holds, so the bytes written are those of
the epoch that asked for the save, whatever training does meanwhile. The
manager waits for the previous save before starting the next one, and
:meth:`Writer.close` (called by ``fit`` on return, Ctrl-C, ``NonFiniteError``
or any other exception) waits for the last one, so a path ``fit`` reports
exists once ``fit`` has returned or raised. A process killed before the
background save finished leaves only an unfinished folder (see above).
:func:`save` is synchronous.

Multi-process. The arrays ``fit`` saves are replicated, so one writer is
enough: the manager is restricted to process 0 (``active_processes={0}``,
no barrier with the other processes), which writes the host copy to the
folder; readers restore on their own process without barriers.

Old checkpoints. Files ``ckpt_EEEEEE.msgpack`` of the previous format
(:data:`MAGIC` + SHA-256 + flax msgpack body) are still listed and read by
their verified reader (never pickle); a run resumed from one continues with
orbax folders, and the old files are pruned with the ``keep`` rule.
"""
from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import os
import re
import shutil
import warnings
from typing import Any, Optional

import jax
import numpy as np
from flax import serialization

FORMAT = "aetk_jax.orbax/1"
MAGIC = b"AETKCKPT1\n"  # header of the previous (msgpack) format
TMP_SUFFIX = ".orbax-checkpoint-tmp"
_STEP = re.compile(r"^ckpt_(\d{6})$")
_LEGACY = re.compile(r"^ckpt_(\d{6})\.msgpack$")
_UNFINISHED = re.compile(r"^ckpt_(\d{6})" + re.escape(TMP_SUFFIX))


def _digest(body: bytes) -> bytes:
    return hashlib.sha256(body).digest()


def path_for(directory: str, epoch: int) -> str:
    """The path of checkpoint ``epoch`` in ``directory`` (a folder once it is written).

    Args:
        directory: the checkpoint folder.
        epoch: the epoch index.

    Returns:
        ``directory/ckpt_EEEEEE``.
    """
    return os.path.join(directory, f"ckpt_{epoch:06d}")


def epoch_of(path: str) -> int:
    """The epoch of a checkpoint path (an orbax folder or an old ``.msgpack`` file).

    Args:
        path: a path returned by :func:`list_checkpoints` or :func:`path_for`.

    Returns:
        The epoch index.
    """
    name = os.path.basename(os.path.normpath(path))
    match = _STEP.match(name) or _LEGACY.match(name) or _UNFINISHED.match(name)
    if match is None:
        raise ValueError(f"`path` {path!r} is not a checkpoint path (ckpt_EEEEEE or ckpt_EEEEEE.msgpack)")
    return int(match.group(1))


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


# ----------------------------------------------------------------------------- writing


def _is_meta(value: Any) -> bool:
    return isinstance(value, (str, bool, int, float)) and not isinstance(value, np.generic)


def _content_digest(arrays: dict[str, Any], meta: dict[str, Any]) -> str:
    """SHA-256 over every array leaf (path, dtype, shape, bytes) and the other metadata entries."""
    h = hashlib.sha256()
    for path, leaf in jax.tree_util.tree_flatten_with_path(arrays)[0]:
        arr = np.asarray(leaf)
        h.update(f"{jax.tree_util.keystr(path)}|{arr.dtype.str}|{arr.shape}|".encode())
        h.update(arr.tobytes())  # C order, whatever the strides
    h.update(json.dumps({k: v for k, v in meta.items() if k != "digest"}, sort_keys=True).encode())
    return h.hexdigest()


def _split(epoch: int, payload: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """``payload`` as (host arrays as plain nested dicts, JSON metadata with format and digest)."""
    if not isinstance(payload, dict) or "state" not in payload:
        raise TypeError("`payload` must be a dict with a 'state' entry")
    meta = {k: v for k, v in payload.items() if _is_meta(v)}
    tree = serialization.to_state_dict(jax.device_get({k: v for k, v in payload.items() if k not in meta}))
    arrays = jax.tree_util.tree_map(lambda a: np.array(a, copy=True), tree)  # private host copies
    meta.update(epoch=int(epoch), format=FORMAT)
    meta["digest"] = _content_digest(arrays, meta)
    return arrays, meta


class Writer:
    """The checkpoint writer of one run: an ``orbax.checkpoint.CheckpointManager`` on ``directory``.

    Args:
        directory: the checkpoint folder (created).
        keep: how many checkpoints to keep (orbax's ``max_to_keep``; old ``.msgpack`` files count too).
        asynchronous: save in orbax's background thread (see the module documentation).
    """

    def __init__(self, directory: str, keep: int = 3, asynchronous: bool = False) -> None:
        import orbax.checkpoint as ocp

        if not isinstance(keep, int) or keep < 1:
            raise ValueError(f"`keep` must be an int >= 1, got {keep!r}")
        os.makedirs(directory, exist_ok=True)
        self.directory, self.keep, self._ocp = str(directory), keep, ocp
        options = ocp.CheckpointManagerOptions(
            max_to_keep=keep, step_prefix="ckpt", step_format_fixed_length=6,
            enable_async_checkpointing=asynchronous, cleanup_tmp_directories=True, create=False,
            multiprocessing_options=ocp.options.MultiprocessingOptions(
                primary_host=jax.process_index(), active_processes={jax.process_index()}),
        )
        self._manager = ocp.CheckpointManager(self.directory, options=options)

    def save(self, epoch: int, payload: dict[str, Any]) -> str:
        """Save ``payload`` (a dict with ``"state"``; numbers and strings go to the JSON item) as ``epoch``.

        Checkpoints of this or later epochs already in the folder (left by a
        run that was resumed from an earlier one) are removed first.

        Args:
            epoch: the epoch index (the orbax step).
            payload: the arrays and the metadata to store.

        Returns:
            The checkpoint's path (complete once the save finished, see :meth:`wait`).
        """
        arrays, meta = _split(epoch, payload)
        self._manager.wait_until_finished()
        stale = [p for p in list_checkpoints(self.directory) if epoch_of(p) >= epoch]
        for path in stale:
            remove(path)
        if stale:
            self._manager.reload()
        ocp = self._ocp
        self._manager.save(epoch, args=ocp.args.Composite(state=ocp.args.StandardSave(arrays),
                                                          meta=ocp.args.JsonSave(meta)), force=True)
        self._prune_legacy(epoch)
        return path_for(self.directory, epoch)

    def _prune_legacy(self, epoch: int) -> None:
        """Remove old-format files that fall outside the newest ``keep`` epochs."""
        epochs = sorted({epoch_of(p) for p in list_checkpoints(self.directory)} | {epoch})
        kept = set(epochs[-self.keep:])
        for path in list_checkpoints(self.directory):
            if path.endswith(".msgpack") and epoch_of(path) not in kept:
                remove(path)

    def wait(self) -> None:
        """Block until the last save is complete (renamed into place)."""
        self._manager.wait_until_finished()

    def close(self) -> None:
        """Wait for the last save, then release the manager."""
        self._manager.wait_until_finished()
        self._manager.close()

    def __enter__(self) -> "Writer":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def save(directory: str, epoch: int, payload: dict[str, Any], keep: int = 3) -> str:
    """Write ``payload`` as checkpoint ``epoch`` (synchronously); keep the newest ``keep``.

    Args:
        directory: the checkpoint folder.
        epoch: the epoch index.
        payload: a dict with ``"state"`` (a pytree of arrays) and numbers/strings.
        keep: how many checkpoints to keep.

    Returns:
        The checkpoint's path.
    """
    with Writer(directory, keep=keep) as writer:
        return writer.save(epoch, payload)


def remove(path: str) -> None:
    """Delete one checkpoint (an orbax folder, an unfinished save or an old ``.msgpack`` file).

    Args:
        path: the checkpoint's path.
    """
    if os.path.isdir(path) and not os.path.islink(path):
        shutil.rmtree(path)
    elif os.path.lexists(path):
        os.unlink(path)


# ----------------------------------------------------------------------------- reading


def _entries(directory: str, pattern: re.Pattern) -> list[str]:
    if not os.path.isdir(directory):
        return []
    return [os.path.join(directory, n) for n in sorted(os.listdir(directory)) if pattern.match(n)]


def list_checkpoints(directory: str) -> list[str]:
    """Complete checkpoints in ``directory``, oldest first (orbax folders and old ``.msgpack`` files).

    Args:
        directory: the checkpoint folder.

    Returns:
        Their paths, by epoch (an orbax folder after an old file of the same epoch).
    """
    paths = [p for p in _entries(directory, _STEP) if os.path.isdir(p)] + _entries(directory, _LEGACY)
    return sorted(paths, key=lambda p: (epoch_of(p), not p.endswith(".msgpack")))


def unfinished(directory: str) -> list[str]:
    """The folders of saves that never completed (a writer stopped mid-save), oldest first.

    Args:
        directory: the checkpoint folder.

    Returns:
        Their paths.
    """
    return sorted(_entries(directory, _UNFINISHED), key=epoch_of)


def _read_legacy(path: str) -> dict[str, Any]:
    """Decode and verify one old ``MAGIC + sha256 + msgpack`` file; ``ValueError`` if truncated or corrupt."""
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


def _short(err: BaseException) -> str:
    text = " ".join(str(err).split())
    return f"{type(err).__name__}: {text[:300]}{' …' if len(text) > 300 else ''}"


def _read_orbax(path: str) -> dict[str, Any]:
    """Restore one orbax checkpoint folder without a template and verify its digest."""
    import orbax.checkpoint as ocp

    for item in ("state", "meta"):
        if not os.path.isdir(os.path.join(path, item)):
            raise ValueError(f"{path}: not an aetk_jax checkpoint (no '{item}' item)")
    me = jax.process_index()
    reader = ocp.Checkpointer(ocp.CompositeCheckpointHandler(),
                              multiprocessing_options=ocp.options.MultiprocessingOptions(
                                  primary_host=me, active_processes={me}))
    try:
        out = reader.restore(path, args=ocp.args.Composite(state=ocp.args.StandardRestore(),
                                                           meta=ocp.args.JsonRestore()))
        arrays, meta = out["state"], out["meta"]
    except Exception as err:  # tensorstore / JSON / orbax metadata errors: data only, nothing is executed
        raise ValueError(f"{path}: unreadable checkpoint ({_short(err)})") from None
    finally:
        reader.close()
    if not isinstance(meta, dict) or meta.get("format") != FORMAT or not isinstance(arrays, dict):
        raise ValueError(f"{path}: not an aetk_jax checkpoint (metadata format {meta.get('format')!r})"
                         if isinstance(meta, dict) else f"{path}: not an aetk_jax checkpoint (bad metadata)")
    if _content_digest(arrays, meta) != meta.get("digest"):
        raise ValueError(f"{path}: checksum mismatch (truncated or corrupt)")
    if meta.get("epoch") != epoch_of(path):
        raise ValueError(f"{path}: holds epoch {meta.get('epoch')}, not {epoch_of(path)} (renamed?)")
    raw = {**{k: v for k, v in meta.items() if k not in ("format", "digest")}, **arrays}
    if "state" not in raw:
        raise ValueError(f"{path}: not an aetk_jax checkpoint payload (no 'state' entry)")
    return raw


def read_raw(path: str) -> dict[str, Any]:
    """Read and verify one checkpoint as a plain dict (``state`` as a nested dict of NumPy arrays).

    Args:
        path: an orbax checkpoint folder or an old ``.msgpack`` file.

    Returns:
        The stored payload: ``state``, ``epoch``, ``history``, ``signature``, ... .

    Raises:
        ValueError: unfinished, truncated, corrupt, or not a checkpoint (nothing is ever unpickled).
    """
    path = os.fspath(path)
    name = os.path.basename(os.path.normpath(path))
    if TMP_SUFFIX in name:
        raise ValueError(f"{path}: an unfinished save (the writer stopped before it completed)")
    if os.path.isdir(path):
        return _read_orbax(path)
    if not os.path.exists(path):
        raise ValueError(f"{path}: no such checkpoint")
    return _read_legacy(path)


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
    """The newest checkpoint that reads back intact; others are skipped with a warning.

    Unfinished saves are reported (``skipping unfinished checkpoint``), then
    truncated or corrupt checkpoints, newest first (``skipping unreadable
    checkpoint``). A configuration mismatch is not skipped: it raises ``ValueError``.
    """
    for path in reversed(unfinished(directory)):
        warnings.warn(f"skipping unfinished checkpoint {path}: its save never completed (the writer was "
                      "stopped mid-save)", RuntimeWarning, stacklevel=2)
    for path in reversed(list_checkpoints(directory)):
        try:
            raw = read_raw(path)
        except Exception as err:  # OSError, ValueError, or msgpack's own decode errors
            warnings.warn(f"skipping unreadable checkpoint {path}: {err}", RuntimeWarning, stacklevel=2)
            continue
        return path, restore(path, template, raw)
    return None
