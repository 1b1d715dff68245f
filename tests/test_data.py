"""Data: the bundled digits and the file loaders (.npz, .npy, .csv, MNIST IDX)."""
from __future__ import annotations

import gzip
import os
import struct

import numpy as np
import pytest

import aetk_jax as aet

# ------------------------------------------------------------------------------ digits


def test_load_digits_shapes_range_labels_and_fixed_split(digits):
    train, val = digits
    assert train.x.shape == (1438, 64) and val.x.shape == (359, 64)  # 1797 images, 20 % held out
    assert train.x.dtype == np.float32 and val.x.dtype == np.float32
    for ds in (train, val):
        assert ds.x.min() == 0.0 and ds.x.max() == 1.0  # 16 grey levels scaled by 1/16
        np.testing.assert_allclose(ds.x * 16, np.round(ds.x * 16), atol=1e-5)
        assert ds.y.shape == (ds.x.shape[0],) and np.issubdtype(ds.y.dtype, np.integer)
        assert set(np.unique(ds.y)) == set(range(10))
    # the two parts are a partition of scikit-learn's data set, labels attached correctly
    from sklearn.datasets import load_digits

    bunch = load_digits()
    allx = np.concatenate([train.x, val.x])
    ally = np.concatenate([train.y, val.y])
    ref = {row.tobytes(): lab for row, lab in zip((bunch.data / 16.0).astype(np.float32), bunch.target)}
    assert sorted(r.tobytes() for r in allx) == sorted(ref)
    assert all(ref[r.tobytes()] == lab for r, lab in zip(allx, ally))
    # fixed split: a second call gives the same arrays; another seed another split
    train2, val2 = aet.data.load_digits()
    np.testing.assert_array_equal(train2.x, train.x)
    np.testing.assert_array_equal(val2.y, val.y)
    _, val3 = aet.data.load_digits(seed=1)
    assert not np.array_equal(val3.x, val.x)
    tr4, va4 = aet.data.load_digits(val_fraction=0.5)
    assert (len(tr4), len(va4)) == (899, 898)  # round(898.5) = 898 held out


# ------------------------------------------------------------------------------- files


@pytest.fixture
def arr():
    return np.random.default_rng(0).uniform(size=(12, 5)).astype(np.float64)


def test_npz_with_x_and_y(tmp_path, arr):
    p = tmp_path / "d.npz"
    y = np.arange(12) % 3
    np.savez(p, x=arr, y=y)
    ds = aet.data.load(str(p))
    assert ds.x.dtype == np.float32 and ds.x.shape == (12, 5)
    np.testing.assert_allclose(ds.x, arr, rtol=1e-7)
    np.testing.assert_array_equal(ds.y, y)
    assert ds.name == "d.npz"


def test_npz_without_named_x_uses_the_first_array(tmp_path, arr):
    p = tmp_path / "d.npz"
    np.savez(p, arr)
    ds = aet.data.load(str(p))
    np.testing.assert_allclose(ds.x, arr, rtol=1e-7)
    assert ds.y is None


def test_npy_float_and_uint8_images(tmp_path, arr):
    p = tmp_path / "d.npy"
    np.save(p, arr)
    np.testing.assert_allclose(aet.data.load(str(p)).x, arr, rtol=1e-7)
    img = np.random.default_rng(1).integers(0, 256, size=(6, 3, 4), dtype=np.uint8)
    q = tmp_path / "img.npy"
    np.save(q, img)
    ds = aet.data.load(str(q))
    assert ds.x.shape == (6, 3, 4)
    np.testing.assert_allclose(ds.x, img / 255.0, rtol=1e-6)
    flat = aet.data.load(str(q), flatten=True)
    assert flat.x.shape == (6, 12)
    np.testing.assert_allclose(flat.x, img.reshape(6, 12) / 255.0, rtol=1e-6)


def test_integer_counts_are_cast_not_scaled(tmp_path):
    counts = np.random.default_rng(2).poisson(3.0, size=(7, 4)).astype(np.int64)
    p = tmp_path / "c.npy"
    np.save(p, counts)
    np.testing.assert_array_equal(aet.data.load(str(p)).x, counts.astype(np.float32))


@pytest.mark.parametrize("header", [False, True])
def test_csv_with_and_without_header(tmp_path, arr, header):
    p = tmp_path / "d.csv"
    lines = (["a,b,c,d,e"] if header else []) + [",".join(f"{v:.17g}" for v in row) for row in arr]
    p.write_text("\n".join(lines) + "\n")
    ds = aet.data.load(str(p))
    assert ds.x.shape == (12, 5)
    np.testing.assert_allclose(ds.x, arr.astype(np.float32), rtol=1e-7)


def test_csv_single_row_is_one_example(tmp_path):
    p = tmp_path / "one.csv"
    p.write_text("0.5,0.25,1\n")
    np.testing.assert_allclose(aet.data.load(str(p)).x, [[0.5, 0.25, 1.0]])


def _write_idx(path, array: np.ndarray, gz: bool) -> None:
    """The IDX format: magic 0x00 0x00 <type 0x08=ubyte> <ndim>, big-endian uint32 dims, data."""
    header = bytes([0, 0, 0x08, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    blob = header + array.astype(np.uint8).tobytes()
    opener = gzip.open if gz else open
    with opener(path, "wb") as f:
        f.write(blob)


@pytest.mark.parametrize("gz", [False, True])
def test_mnist_idx_images_and_labels(tmp_path, gz):
    rng = np.random.default_rng(3)
    images = rng.integers(0, 256, size=(9, 4, 3), dtype=np.uint8)
    labels = rng.integers(0, 10, size=9, dtype=np.uint8)
    ext = ".gz" if gz else ""
    img_path = tmp_path / f"train-images-idx3-ubyte{ext}"
    _write_idx(img_path, images, gz)
    _write_idx(tmp_path / f"train-labels-idx1-ubyte{ext}", labels, gz)
    ds = aet.data.load(str(img_path))
    assert ds.x.shape == (9, 4, 3) and ds.x.dtype == np.float32
    np.testing.assert_allclose(ds.x, images / 255.0, rtol=1e-6)
    np.testing.assert_array_equal(ds.y, labels)
    np.testing.assert_array_equal(aet.data.read_idx(str(img_path)), images)
    # load_named flattens and splits
    train, val = aet.data.load_named(str(img_path))
    assert train.x.shape[1:] == (12,) and len(train) + len(val) == 9


def test_mnist_idx_without_labels(tmp_path):
    images = np.arange(2 * 2 * 2, dtype=np.uint8).reshape(2, 2, 2)
    p = tmp_path / "t10k-images-idx3-ubyte"
    _write_idx(p, images, gz=False)
    ds = aet.data.load(str(p))
    assert ds.y is None
    np.testing.assert_allclose(ds.x, images / 255.0, rtol=1e-6)


# ------------------------------------------------------------------------------ errors


def _expect_error(path, match=None):
    with pytest.raises(ValueError) as info:
        aet.data.load(str(path))
    assert str(path) in str(info.value)  # the message names the file
    if match:
        assert match in str(info.value).lower()


def test_nan_and_inf_are_refused(tmp_path, arr):
    a = arr.copy()
    a[3, 2] = np.nan
    np.save(tmp_path / "nan.npy", a)
    _expect_error(tmp_path / "nan.npy", "nan")
    a[3, 2] = np.inf
    np.savez(tmp_path / "inf.npz", x=a)
    _expect_error(tmp_path / "inf.npz", "inf")
    (tmp_path / "nan.csv").write_text("1,2\nnan,3\n")
    _expect_error(tmp_path / "nan.csv", "nan")


def test_wrong_rank_is_refused(tmp_path):
    np.save(tmp_path / "vec.npy", np.ones(10))
    _expect_error(tmp_path / "vec.npy", "rank")
    np.save(tmp_path / "scalar.npy", np.float64(1.0))
    _expect_error(tmp_path / "scalar.npy")


def test_empty_files_and_arrays_are_refused(tmp_path):
    for name in ("empty.npy", "empty.csv", "empty.npz", "train-images-idx3-ubyte"):
        (tmp_path / name).write_bytes(b"")
        _expect_error(tmp_path / name, "empty")
    np.save(tmp_path / "zero.npy", np.zeros((0, 4)))
    _expect_error(tmp_path / "zero.npy", "empty")
    (tmp_path / "blank.csv").write_text("\n\n")
    _expect_error(tmp_path / "blank.csv", "empty")


def test_unknown_extension_and_missing_file(tmp_path):
    (tmp_path / "d.txt").write_text("1,2\n3,4\n")
    _expect_error(tmp_path / "d.txt", "unknown format")
    _expect_error(tmp_path / "missing.npy", "no such file")
    with pytest.raises(TypeError, match="path"):
        aet.data.load(3)


def test_pickled_object_array_is_refused_without_unpickling(tmp_path):
    marker = tmp_path / "ran"

    class Evil:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    np.save(tmp_path / "obj.npy", np.array([Evil(), 1], dtype=object), allow_pickle=True)
    _expect_error(tmp_path / "obj.npy")
    assert not marker.exists()
    np.savez(tmp_path / "obj.npz", x=np.array([{"a": 1}], dtype=object))
    _expect_error(tmp_path / "obj.npz")


def test_malformed_files_are_refused(tmp_path):
    (tmp_path / "text.csv").write_text("a,b\nx,y\n")
    _expect_error(tmp_path / "text.csv")
    (tmp_path / "ragged.csv").write_text("1,2\n3\n")
    _expect_error(tmp_path / "ragged.csv")
    (tmp_path / "bad.npy").write_bytes(b"not numpy at all")
    _expect_error(tmp_path / "bad.npy")
    (tmp_path / "bad.npz").write_bytes(b"not a zip")
    _expect_error(tmp_path / "bad.npz")
    # IDX: wrong magic, and a body shorter than the header promises
    (tmp_path / "a-images-idx3-ubyte").write_bytes(b"\x01\x02\x08\x01\x00\x00\x00\x02ab")
    _expect_error(tmp_path / "a-images-idx3-ubyte", "idx")
    header = bytes([0, 0, 0x08, 2]) + struct.pack(">2I", 3, 4)
    (tmp_path / "b-images-idx3-ubyte").write_bytes(header + b"\x00" * 5)
    _expect_error(tmp_path / "b-images-idx3-ubyte", "idx")
    # labels whose count disagrees with the images
    _write_idx(tmp_path / "c-images-idx3-ubyte", np.zeros((3, 2, 2), np.uint8), gz=False)
    _write_idx(tmp_path / "c-labels-idx1-ubyte", np.zeros(4, np.uint8), gz=False)
    _expect_error(tmp_path / "c-images-idx3-ubyte", "labels")


# ------------------------------------------------------------------------------ image shapes


def test_image_shape_is_recorded_where_the_loader_knows_it(tmp_path, digits, arr):
    train, val = digits
    assert train.image_shape == val.image_shape == (8, 8)
    # MNIST IDX: (rows, cols), kept by load_named's flatten and split
    images = np.random.default_rng(4).integers(0, 256, size=(10, 4, 3), dtype=np.uint8)
    _write_idx(tmp_path / "train-images-idx3-ubyte", images, gz=False)
    tr, va = aet.data.load_named(str(tmp_path / "train-images-idx3-ubyte"))
    assert tr.x.shape[1:] == (12,) and tr.image_shape == va.image_shape == (4, 3)
    # .npz with a `shape` entry (even when x is stored flat and there is no entry named x)
    np.savez(tmp_path / "img.npz", x=np.zeros((6, 6)), y=np.arange(6), shape=np.array([2, 3]))
    assert aet.data.load(str(tmp_path / "img.npz")).image_shape == (2, 3)
    np.savez(tmp_path / "unnamed.npz", shape=np.array([2, 3]), pixels=np.ones((6, 6)))
    ds = aet.data.load(str(tmp_path / "unnamed.npz"))
    assert ds.x.shape == (6, 6) and ds.x.min() == 1.0 and ds.image_shape == (2, 3)
    # otherwise unknown: .npz without `shape`, .npy, .csv
    np.savez(tmp_path / "plain.npz", x=arr)
    np.save(tmp_path / "plain.npy", arr)
    np.savetxt(tmp_path / "plain.csv", arr, delimiter=",")
    for name in ("plain.npz", "plain.npy", "plain.csv"):
        assert aet.data.load(str(tmp_path / name)).image_shape is None


def test_npz_shape_entry_that_does_not_fit_is_refused(tmp_path):
    np.savez(tmp_path / "bad.npz", x=np.zeros((4, 6)), shape=np.array([4, 4]))
    with pytest.raises(ValueError, match=r"bad\.npz.*shape.*16 values.*6"):
        aet.data.load(str(tmp_path / "bad.npz"))
    np.savez(tmp_path / "neg.npz", x=np.zeros((4, 6)), shape=np.array([-2, -3]))
    with pytest.raises(ValueError, match=r"neg\.npz.*positive integers"):
        aet.data.load(str(tmp_path / "neg.npz"))


def test_dataset_stays_backward_compatible_and_replace_works_for_any_size():
    x = np.zeros((11, 2), np.float32)
    ds = aet.data.Dataset(x, np.arange(11), "mine")  # positional, as before
    assert ds.image_shape is None and len(ds) == 11 and ds.name == "mine"
    part = ds._replace(x=x[:5], y=ds.y[:5])  # namedtuple's length check must count fields, not examples
    assert len(part) == 5 and part.name == "mine" and part.image_shape is None
    shaped = aet.data.Dataset(np.zeros((7, 4)), image_shape=(2, 2))
    tr, va = aet.data.train_val_split(shaped, val_fraction=0.3)
    assert tr.image_shape == va.image_shape == (2, 2) and (len(tr), len(va)) == (5, 2)
    x_, y_, name_, shape_ = shaped  # still a tuple of its fields
    assert shape_ == (2, 2) and y_ is None
