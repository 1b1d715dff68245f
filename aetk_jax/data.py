"""Data sets: scikit-learn's bundled digits by default, and the user's own files.

Every loader returns a :class:`Dataset` of float32 arrays, batch-first, and
rejects empty data, NaN/inf and malformed files with a ``ValueError`` naming
the file. Integer arrays are converted explicitly: ``uint8`` data (images) are
divided by 255; other integer data (e.g. counts) are cast to float32 unchanged.

A :class:`Dataset` records the examples' image shape where the loader knows it
(``image_shape``: ``(8, 8)`` for the digits, ``(rows, cols)`` for an MNIST IDX
file, an ``.npz`` file's ``shape`` entry; ``None`` otherwise), so that plots draw
images only for image data, even after ``flatten``.
"""
from __future__ import annotations

import gzip
import os
import struct
from typing import Any, Iterator, NamedTuple, Optional

import jax
import numpy as np


class _DatasetFields(NamedTuple):
    x: np.ndarray
    y: Optional[np.ndarray] = None
    name: str = "data"
    image_shape: Optional[tuple[int, ...]] = None


class Dataset(_DatasetFields):
    """``x``: ``(n, *data_shape)`` float32; ``y``: ``(n,)`` integer labels or ``None``.

    ``image_shape``: the shape of one example as an image (e.g. ``(8, 8)``, with
    ``prod(image_shape)`` equal to an example's size), or ``None`` when the data
    are not known to be images. ``len(ds)`` is the number of examples.
    """

    __slots__ = ()

    def __len__(self) -> int:
        return int(self.x.shape[0])

    @classmethod
    def _make(cls, iterable: Any) -> "Dataset":
        # namedtuple's own _make (used by _replace) checks the field count with
        # len(), which here counts examples: count the fields as a tuple instead
        values = tuple(iterable)
        if tuple.__len__(values) != len(cls._fields):
            raise TypeError(f"Dataset takes {len(cls._fields)} fields, got {tuple.__len__(values)}")
        return tuple.__new__(cls, values)


def check_data(x: np.ndarray, source: str, *, min_ndim: int = 2) -> np.ndarray:
    """Convert ``x`` to float32 and check it; ``ValueError`` naming ``source`` otherwise."""
    x = np.asarray(x)
    if x.dtype == object or not (np.issubdtype(x.dtype, np.number) or x.dtype == bool):
        raise ValueError(f"{source}: data must be numeric, got dtype {x.dtype}")
    if x.size == 0 or (x.ndim >= 1 and x.shape[0] == 0):
        raise ValueError(f"{source}: the data set is empty")
    if x.ndim < min_ndim:
        raise ValueError(f"{source}: expected an array of rank >= {min_ndim} (examples, features...), got shape {x.shape}")
    if x.dtype == np.uint8:
        x = x.astype(np.float32) / 255.0
    else:
        x = x.astype(np.float32)
    bad = ~np.isfinite(x)
    if bad.any():
        first = np.argwhere(bad)[0]
        raise ValueError(f"{source}: contains {int(bad.sum())} NaN/inf value(s), the first at index {tuple(int(i) for i in first)}")
    return x


def load_digits(*, val_fraction: float = 0.2, seed: int = 0) -> tuple[Dataset, Dataset]:
    """scikit-learn's 8×8 digits (1797 images, shipped with the package): pixels scaled to [0, 1].

    Returns ``(train, val)`` with ``x`` of shape ``(n, 64)``, digit labels and
    ``image_shape=(8, 8)``;
    the split is a fixed permutation drawn with ``seed``.
    """
    from sklearn.datasets import load_digits as _load

    bunch = _load()
    x = (bunch.data / 16.0).astype(np.float32)
    ds = Dataset(x, bunch.target.astype(np.int32), "digits", (8, 8))
    return train_val_split(ds, val_fraction=val_fraction, seed=seed)


def train_val_split(ds: Dataset, *, val_fraction: float = 0.2, seed: int = 0) -> tuple[Dataset, Dataset]:
    """Split ``ds`` into train and validation parts by a fixed random permutation."""
    if not 0.0 < val_fraction < 1.0:
        raise ValueError(f"`val_fraction` must be in (0, 1), got {val_fraction}")
    n = len(ds)
    n_val = max(1, int(round(n * val_fraction)))
    if n - n_val < 1:
        raise ValueError(f"{ds.name}: too few examples ({n}) to split")
    perm = np.random.default_rng(seed).permutation(n)
    tr, va = perm[n_val:], perm[:n_val]
    pick = lambda idx, part: ds._replace(x=ds.x[idx], y=None if ds.y is None else ds.y[idx], name=f"{ds.name}/{part}")
    return pick(tr, "train"), pick(va, "val")


def _open(path: str):
    return gzip.open(path, "rb") if path.endswith(".gz") else open(path, "rb")


_IDX_TYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def read_idx(path: str) -> np.ndarray:
    """Read an MNIST-style IDX file (optionally gzipped)."""
    with _open(path) as f:
        raw = f.read()
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _IDX_TYPES:
        raise ValueError(f"{path}: not an IDX file (bad magic number)")
    ndim = raw[3]
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise ValueError(f"{path}: truncated IDX header")
    dims = struct.unpack(f">{ndim}I", raw[4:header])
    dtype = np.dtype(_IDX_TYPES[raw[2]])
    count = int(np.prod(dims)) if dims else 0
    if len(raw) - header != count * dtype.itemsize:
        raise ValueError(f"{path}: IDX body has {len(raw) - header} bytes, the header promises {count * dtype.itemsize}")
    arr = np.frombuffer(raw, dtype=dtype, offset=header).reshape(dims)
    return arr.astype(dtype.newbyteorder("="))


def _idx_labels_for(path: str) -> Optional[str]:
    base = os.path.basename(path)
    for a, b in (("images-idx3", "labels-idx1"), ("images.idx3", "labels.idx1")):
        if a in base:
            cand = os.path.join(os.path.dirname(path), base.replace(a, b))
            if os.path.exists(cand):
                return cand
    return None


def _read_csv(path: str) -> np.ndarray:
    with open(path) as f:
        first = f.readline()
    if not first.strip():
        raise ValueError(f"{path}: the file is empty")
    try:
        [float(v) for v in first.strip().split(",")]
        skip = 0
    except ValueError:
        skip = 1  # a header row
    try:
        arr = np.loadtxt(path, delimiter=",", skiprows=skip, dtype=np.float64, ndmin=2)
    except ValueError as err:
        raise ValueError(f"{path}: not a numeric CSV file ({err})") from None
    return arr


def _image_shape(shape: Any, x: np.ndarray, source: str) -> tuple[int, ...]:
    """An ``.npz`` file's ``shape`` entry as a tuple holding one example's size; ``ValueError`` otherwise."""
    s = np.asarray(shape)
    if s.ndim != 1 or s.size == 0 or not np.issubdtype(s.dtype, np.integer) or (s < 1).any():
        raise ValueError(f"{source}: the `shape` entry must be a 1-D array of positive integers, got {s.tolist()!r}")
    out = tuple(int(v) for v in s)
    size = int(np.prod(x.shape[1:]))
    if int(np.prod(out)) != size:
        raise ValueError(f"{source}: the `shape` entry {out} holds {int(np.prod(out))} values, an example has {size}")
    return out


def load(path: str, *, flatten: bool = False) -> Dataset:
    """Load ``path``: ``.npz`` (arrays ``x`` and optional ``y``, else the first other
    array; an optional ``shape`` entry is an example's image shape), ``.npy``,
    ``.csv`` (numeric, optional header row, one example per row), or an MNIST IDX
    image file (``*-idx3-ubyte[.gz]``: MNIST or Fashion-MNIST, with its labels
    file beside it if present; its image shape is ``(rows, cols)``), or CIFAR-10
    batches (:func:`read_cifar10`: a ``data_batch_*``/``test_batch`` file or a
    folder of them; image shape ``(32, 32, 3)``).

    ``flatten`` reshapes each example to a vector (``image_shape`` is kept).
    """
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"`path` must be a file path, got {type(path).__name__}")
    path = os.fspath(path)
    if not os.path.exists(path):
        raise ValueError(f"{path}: no such file")
    if os.path.getsize(path) == 0:
        raise ValueError(f"{path}: the file is empty")
    y = None
    shape = None  # an example's image shape, where the file says it
    lower = path.lower()
    try:
        if is_cifar(path):
            x, y = read_cifar10(path)
            shape = CIFAR_SHAPE
        elif lower.endswith(".npz"):
            with np.load(path, allow_pickle=False) as z:
                if not z.files:
                    raise ValueError(f"{path}: the archive holds no arrays")
                rest = [k for k in z.files if k not in ("y", "shape")] or z.files
                x = z["x"] if "x" in z.files else z[rest[0]]
                y = z["y"] if "y" in z.files else None
                shape = z["shape"] if "shape" in z.files else None
        elif lower.endswith(".npy"):
            x = np.load(path, allow_pickle=False)
        elif lower.endswith(".csv"):
            x = _read_csv(path)
        elif "idx" in lower or "ubyte" in lower:
            x = read_idx(path)
            shape = x.shape[1:] if x.ndim >= 3 else None
            lab = _idx_labels_for(path)
            y = read_idx(lab) if lab else None
        else:
            raise ValueError(f"{path}: unknown format (expected .npz, .npy, .csv or an IDX file)")
    except ValueError as err:
        if str(err).startswith(path):
            raise
        raise ValueError(f"{path}: cannot read the file ({err})") from None  # e.g. numpy's pickle refusal
    except Exception as err:  # unreadable file: zip errors, pickle refusal, I/O errors
        raise ValueError(f"{path}: cannot read the file ({type(err).__name__}: {err})") from None
    x = check_data(x, path)
    image_shape = None if shape is None else _image_shape(shape, x, path)
    if flatten:
        x = x.reshape(x.shape[0], -1)
    if y is not None:
        y = np.asarray(y)
        if y.shape[0] != x.shape[0]:
            raise ValueError(f"{path}: {x.shape[0]} examples but {y.shape[0]} labels")
        y = y.astype(np.int32) if np.issubdtype(y.dtype, np.integer) else None
    return Dataset(x, y, os.path.basename(path), image_shape)


def load_named(name: str, *, val_fraction: float = 0.2, seed: int = 0) -> tuple[Dataset, Dataset]:
    """``"digits"`` or a file path, split into ``(train, val)``; images are flattened."""
    if name == "digits":
        return load_digits(val_fraction=val_fraction, seed=seed)
    return train_val_split(load(name, flatten=True), val_fraction=val_fraction, seed=seed)


def batches(x: np.ndarray, batch_size: int, *, key: Optional[jax.Array] = None, drop_last: bool = False) -> Iterator[np.ndarray]:
    """Iterate over ``x`` in batches; shuffled by ``key`` when given."""
    n = x.shape[0]
    order = np.asarray(jax.random.permutation(key, n)) if key is not None else np.arange(n)
    stop = n - n % batch_size if drop_last else n
    for i in range(0, stop, batch_size):
        yield x[order[i : i + batch_size]]


# --- CIFAR-10 (user-supplied files; nothing is downloaded) -------------------------------------------------------

CIFAR_SHAPE = (32, 32, 3)
_CIFAR_RECORD = 1 + 32 * 32 * 3  # the binary version: one label byte, then 1024 R, 1024 G, 1024 B bytes


def is_cifar(path: str) -> bool:
    """Whether ``path`` names CIFAR-10 batches: a ``data_batch_*``/``test_batch`` file
    (python or ``.bin`` version) or a folder holding them."""
    names = os.listdir(path) if os.path.isdir(path) else [os.path.basename(path)]
    return any(n.startswith(("data_batch", "test_batch")) for n in names)


_PICKLE_ALLOWED = {
    ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.numeric", "_frombuffer"), ("numpy._core.numeric", "_frombuffer"),
    ("numpy.core.multiarray", "scalar"), ("numpy._core.multiarray", "scalar"),
    ("numpy", "ndarray"), ("numpy", "dtype"), ("_codecs", "encode"),
}


def _numpy_only_unpickle(f: Any) -> Any:
    """Read a pickle that may build dicts, lists, bytes, strings, numbers and NumPy arrays,
    nothing else (no other class is looked up, so no other code can run)."""
    import pickle

    class _Restricted(pickle.Unpickler):
        def find_class(self, module: str, name: str) -> Any:
            if (module, name) not in _PICKLE_ALLOWED:
                raise ValueError(f"refusing to unpickle {module}.{name} (only NumPy arrays are allowed)")
            return super().find_class(module, name)

    return _Restricted(f, encoding="bytes").load()


def _cifar_python_batch(path: str) -> tuple[np.ndarray, np.ndarray]:
    with open(path, "rb") as f:
        batch = _numpy_only_unpickle(f)
    if not isinstance(batch, dict) or b"data" not in batch or b"labels" not in batch:
        raise ValueError(f"{path}: not a CIFAR-10 python batch (expected a dict with data and labels)")
    data, labels = np.asarray(batch[b"data"]), np.asarray(batch[b"labels"])
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072 or labels.shape != (data.shape[0],):
        raise ValueError(f"{path}: not a CIFAR-10 python batch (data {data.shape} {data.dtype}, "
                         f"{labels.shape[0]} labels)")
    return data, labels


def _cifar_binary_batch(path: str) -> tuple[np.ndarray, np.ndarray]:
    raw = np.fromfile(path, dtype=np.uint8)
    if raw.size == 0 or raw.size % _CIFAR_RECORD:
        raise ValueError(f"{path}: {raw.size} bytes is not a whole number of CIFAR-10 records ({_CIFAR_RECORD} bytes)")
    rec = raw.reshape(-1, _CIFAR_RECORD)
    return rec[:, 1:], rec[:, 0]


def read_cifar10(path: str) -> tuple[np.ndarray, np.ndarray]:
    """CIFAR-10 images ``(n, 32, 32, 3)`` uint8 (H, W, RGB) and labels ``(n,)``.

    ``path``: one batch file (``data_batch_1``… / ``test_batch`` of the python
    version, read without executing pickle code; or ``data_batch_1.bin``… of the
    binary version), or a folder: its five ``data_batch_*`` files in order.
    The files store each image as 1024 red, 1024 green, 1024 blue bytes (row-major);
    they are transposed to (H, W, channel).
    """
    if os.path.isdir(path):
        files = sorted(n for n in os.listdir(path) if n.startswith("data_batch") and not n.endswith((".meta", ".html")))
        if not files:
            raise ValueError(f"{path}: no data_batch_* files in the folder")
        parts = [read_cifar10(os.path.join(path, n)) for n in files]
        return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])
    data, labels = (_cifar_binary_batch if path.endswith(".bin") else _cifar_python_batch)(path)
    if labels.size and (labels.min() < 0 or labels.max() > 9):
        raise ValueError(f"{path}: CIFAR-10 labels must be 0..9, found {int(labels.min())}..{int(labels.max())}")
    images = data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
    return np.ascontiguousarray(images), labels.astype(np.int32)
