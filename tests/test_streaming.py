"""Streaming ``fit(..., chunk_size=c)``: a memory-mapped ``.npy`` several times larger than the chunk trains to
the same parameters as the same array in memory (bit for bit), a random-access source too; the documented
epoch order (a global permutation read chunk by chunk) visits every kept example once; resume after Ctrl-C;
argument and data errors name ``chunk_size`` or the rows; non-finite steps across chunks; conditional pairs;
the RHVAE's end-of-epoch update on the last full chunk."""
from __future__ import annotations

import functools
import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import aetk_jax as aet
from aetk_jax import rhvae
from conftest import small_vae_parts
from test_train import Scalar, _sigint_at, _tree_equal, nan_after_six

N, DIM, B, C = 640, 8, 32, 128  # five chunks of four batches


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """Gaussian data (N, DIM) in memory and the same array as a memory-mapped .npy."""
    x = np.random.default_rng(0).normal(size=(N, DIM)).astype(np.float32)
    path = tmp_path_factory.mktemp("stream") / "x.npy"
    np.save(path, x)
    return x, np.load(path, mmap_mode="r")


def _vae():
    return aet.VAE(*small_vae_parts(hidden=4, data_dim=DIM, decoder="gaussian"))


def _fit(data, epochs=3, **kw):
    model = _vae()
    return aet.train.fit(model, functools.partial(aet.vae.loss, model), data, key=jax.random.key(3), epochs=epochs,
                         batch_size=B, optimizer=optax.adam(1e-2), progress=False, **kw)


class RowSource:
    """A random-access source (``__len__``, ``__getitem__(index array)``) that records every read's size."""

    def __init__(self, x):
        self.x, self.reads = x, []

    def __len__(self):
        return len(self.x)

    def __getitem__(self, idx):
        self.reads.append(len(idx))
        return np.array(self.x[idx])


@pytest.fixture(scope="module")
def in_memory(data):
    return _fit(data[0], chunk_size=C)


def test_memmap_stream_gives_the_in_memory_parameters_bit_for_bit_and_the_loss_falls(data, in_memory):
    assert isinstance(data[1], np.memmap) and N >= 5 * C
    variables, history = _fit(data[1], chunk_size=C)
    assert _tree_equal(variables, in_memory[0]) and history == in_memory[1]
    loss = history["train"]["loss"]
    assert len(loss) == 3 and loss[-1] < loss[0] - 0.5, loss


def test_random_access_source_gives_the_same_and_never_reads_more_than_a_chunk(data, in_memory):
    source = RowSource(data[1])
    variables, history = _fit(source, chunk_size=C)
    assert _tree_equal(variables, in_memory[0]) and history == in_memory[1]
    # the checks read the source once chunk by chunk, every epoch reads N rows in chunks: never whole
    assert max(source.reads[1:]) == C and sum(source.reads) > 3 * N
    with pytest.raises(TypeError, match="chunk_size"):
        _fit(source)  # a source that is not an array needs chunk_size


def test_streaming_resume_after_ctrl_c_is_bit_exact(data, in_memory, tmp_path):
    d = str(tmp_path / "run")
    with pytest.raises(aet.train.TrainingInterrupted) as info:
        _fit(data[1], chunk_size=C, checkpoint_dir=d, callbacks=[_sigint_at(1, 1)])
    assert info.value.epoch == 1 and info.value.history["epoch"] == [0, 1]
    variables, history = _fit(data[1], chunk_size=C, checkpoint_dir=d, resume=True)
    assert _tree_equal(variables, in_memory[0]) and history == in_memory[1]


class Linear(nn.Module):
    """A regression on every feature but the first (which holds the row number)."""

    @nn.compact
    def __call__(self, x):
        return nn.Dense(1)(x[:, 1:])


def test_epoch_order_is_a_global_permutation_read_chunk_by_chunk_and_visits_each_example_once():
    """Row i holds i in its first feature; the loss reports every batch's rows (in order) to the host.
    n = 600, b = 32, c = 128: 576 kept, four chunks of 128 and a last chunk of 64."""
    n, b, c = 600, 32, 128
    x = np.random.default_rng(1).normal(size=(n, 4)).astype(np.float32)
    x[:, 0] = np.arange(n)
    seen = []

    def loss(variables, xb, key):
        jax.debug.callback(lambda rows: seen.append(np.asarray(rows).astype(int)), xb[:, 0], ordered=True)
        return jnp.mean(Linear().apply(variables, xb) ** 2)

    key = jax.random.key(5)
    aet.train.fit(Linear(), loss, x, key=key, epochs=2, batch_size=b, chunk_size=c, optimizer=optax.sgd(1e-3),
                  progress=False)
    assert len(seen) == 2 * (n // b)
    train_key = jax.random.split(key, 3)[1]
    dropped = []
    for e in range(2):
        batches = seen[e * (n // b) : (e + 1) * (n // b)]
        rows = np.concatenate(batches)
        assert len(np.unique(rows)) == len(rows) == n - n % b  # each kept example once
        dropped.append(set(range(n)) - set(rows.tolist()))
        perm = np.asarray(jax.random.permutation(jax.random.split(jax.random.fold_in(train_key, e))[0], n))
        for j, start in enumerate(range(0, n - n % b, c)):  # chunk j is the rows π[j·c : (j+1)·c]
            size = min(c, n - n % b - start)
            got = np.concatenate(batches[start // b : (start + size) // b])
            assert sorted(got.tolist()) == sorted(perm[start : start + size].tolist())
        # a chunk draws from the whole file, not from one block of c rows
        assert len(np.unique(np.concatenate(batches[: c // b]) // c)) > 1
    assert len(dropped[0]) == len(dropped[1]) == n % b and dropped[0] != dropped[1]


@pytest.mark.parametrize(
    "chunk_size, exc",
    [(0, ValueError), (-64, ValueError), (48, ValueError), (2 * N, ValueError), (64.0, TypeError), (True, TypeError)],
)
def test_bad_chunk_size_names_chunk_size(data, chunk_size, exc):
    with pytest.raises(exc, match="chunk_size"):
        _fit(data[1], chunk_size=chunk_size)


def test_nan_or_unsupported_values_in_a_later_chunk_name_its_rows(data, tmp_path):
    x = np.array(data[0])
    x[450, 3] = np.nan
    np.save(tmp_path / "nan.npy", x)
    with pytest.raises(ValueError) as info:
        _fit(np.load(tmp_path / "nan.npy", mmap_mode="r"), chunk_size=C)
    assert str(info.value) == ("`data` rows 384–511 (chunk 4 of 5): 1 row(s) with NaN or inf values, the first at "
                               "row 450; remove or impute them")
    # a Bernoulli decoder on data that leave [0, 1] only in the last chunk
    u = np.random.default_rng(2).uniform(size=(N, DIM)).astype(np.float32)
    u[600] = 2.0
    np.save(tmp_path / "u.npy", u)
    model = aet.VAE(*small_vae_parts(hidden=4, data_dim=DIM))
    with pytest.raises(ValueError, match=r"data rows 512–639 \(chunk 5 of 5\): BernoulliDecoder"):
        aet.train.fit(model, functools.partial(aet.vae.loss, model), np.load(tmp_path / "u.npy", mmap_mode="r"),
                      key=jax.random.key(0), batch_size=B, chunk_size=C, progress=False)


def _scalar_fit(x, **kw):
    return aet.train.fit(Scalar(), nan_after_six, x, key=jax.random.key(0), optimizer=optax.sgd(1.0), epochs=3,
                         batch_size=4, progress=False, **kw)


@pytest.mark.parametrize("chunk_size", [None, 8])
def test_a_nonfinite_step_in_a_later_chunk_freezes_the_rest_of_the_epoch(chunk_size):
    """12 updates per epoch in six chunks of two; update 6 (chunk 4) is NaN: chunks 4–6 leave w = 6, as in memory."""
    x = np.ones((48, 4), np.float32)
    with pytest.raises(aet.train.NonFiniteError) as info:
        _scalar_fit(x, chunk_size=chunk_size)
    err = info.value
    assert err.epoch == 0 and err.step == 6 and "batch 6" in str(err) and "penalty" in str(err)
    assert float(err.variables["params"]["w"]) == 6.0


def test_skipped_steps_are_summed_over_chunks_and_the_metrics_average_the_good_steps():
    x = np.ones((48, 4), np.float32)
    runs = []
    for chunk_size in (None, 8):
        with pytest.warns(RuntimeWarning, match="skipped 6 of 12 steps .*first at batch 6"):
            with pytest.raises(aet.train.NonFiniteError, match="every step of epoch 1"):
                _scalar_fit(x, chunk_size=chunk_size, on_nonfinite="skip",
                            callbacks=[lambda e, v, h: runs.append(h["train"])])
    streamed = runs[1]
    # the good steps of epoch 0 have w = 0 … 5, so loss = −w averages to −2.5; six steps skipped
    assert streamed["loss"] == [-2.5] and streamed["skipped"] == [6.0] and streamed == runs[0]


def test_conditional_memmap_pair(data, tmp_path):
    x = data[0]
    y = (np.arange(N) % 3).astype(np.int32)
    np.save(tmp_path / "y.npy", y)
    ym = np.load(tmp_path / "y.npy", mmap_mode="r")
    enc, dec = small_vae_parts(hidden=4, data_dim=DIM, decoder="gaussian")
    model = aet.VAE(enc, dec, n_conditions=3)
    fit = functools.partial(aet.train.fit, model, functools.partial(aet.vae.loss, model), key=jax.random.key(0),
                            epochs=2, batch_size=B, chunk_size=C, progress=False)
    v_mem, h_mem = fit(aet.data.Dataset(x, y))
    v_map, h_map = fit(aet.data.Dataset(data[1], ym))
    assert _tree_equal(v_mem, v_map) and h_mem == h_map and all(map(math.isfinite, h_map["train"]["loss"]))
    y_bad = y.copy()
    y_bad[520] = 7
    with pytest.raises(ValueError, match=r"labels y, rows 512–639 \(chunk 5 of 5\).* outside \[0, 3\)"):
        fit((data[1], y_bad))


def _rhvae(n_centroids):
    enc = aet.JointGaussianLogEncoder(aet.MLP([4]), 2)
    dec = aet.BernoulliDecoder(aet.MLP([4]), 5)
    return aet.RHVAE(enc, dec, rhvae.MetricNetwork(aet.MLP([4]), 2), n_centroids)


@pytest.mark.slow  # an RHVAE compile: about 40 s of CPU
def test_rhvae_end_of_epoch_update_sees_the_last_full_chunk():
    n, b, c = 64, 8, 16
    x = np.random.default_rng(3).uniform(size=(n, 5)).astype(np.float32)  # distinct rows in [0, 1]
    model = _rhvae(4)
    key = jax.random.key(2)
    fit = functools.partial(aet.train.fit, model, functools.partial(rhvae.loss, model), x, key=key, epochs=1,
                            batch_size=b, optimizer=optax.adam(1e-4), progress=False)
    with pytest.raises(ValueError, match=r"`chunk_size` \(8\).*one chunk.*n_centroids"):
        aet.train.fit(_rhvae(12), functools.partial(rhvae.loss, _rhvae(12)), x, key=key, epochs=1, batch_size=b,
                      chunk_size=8, progress=False)
    variables, _ = fit(chunk_size=c)
    perm = np.asarray(jax.random.permutation(jax.random.split(jax.random.fold_in(jax.random.split(key, 3)[1], 0))[0], n))
    last_chunk = x[perm[n - c :]]
    stored = np.asarray(variables["metric"]["x"])
    assert stored.shape == (4, 5)
    for row in stored:  # every centroid datum is a row of the epoch's last chunk
        assert np.any(np.all(last_chunk == row, axis=1)), row
