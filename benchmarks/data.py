"""The two benchmark data sets, as float32 NumPy arrays of exact 0/1 values.

* ``digits``: scikit-learn's bundled 8×8 digits through ``aet.data.load_digits``
  (the training split, 1438 × 64), binarised at 0.5.
* ``mnist-synthetic``: an MNIST-sized set of 784-dimensional binary vectors made
  here from a fixed seed (no download): a 10-dimensional Gaussian code pushed
  through a fixed random linear map and a sigmoid gives per-pixel
  probabilities, and each pixel is drawn from them. It has MNIST's shape and a
  low-dimensional structure to learn; its pixel statistics are not MNIST's
  (timings do not depend on them).

Binary data is the common ground of the two libraries: pythae's HVAE scores
its Bernoulli likelihood with ``torch.distributions.Bernoulli``, whose support
check rejects values other than 0 and 1.
"""
from __future__ import annotations

import functools

import numpy as np


@functools.lru_cache(maxsize=1)
def _digits_binary() -> np.ndarray:
    from aetk_jax.data import load_digits

    train, _ = load_digits()
    x = (np.asarray(train.x) > 0.5).astype(np.float32)
    x.setflags(write=False)
    return x


def digits_binary() -> np.ndarray:
    """The digits training split binarised at 0.5: ``(1438, 64)`` float32 in {0, 1} (a fresh copy)."""
    return _digits_binary().copy()


def mnist_synthetic(n: int, *, seed: int = 0, dim: int = 784, code_dim: int = 10) -> np.ndarray:
    """``n`` binary vectors of length ``dim`` (float32), reproducible from ``seed``.

    p = sigmoid(z W + b) with z ~ N(0, I_code_dim), W ~ N(0, 3²/code_dim) and
    b = −1.5 (about 25 % of pixels on, MNIST has about 13 %); x ~ Bernoulli(p).
    """
    if n < 1:
        raise ValueError(f"`n` must be >= 1, got {n}")
    rng = np.random.default_rng(seed)
    w = rng.normal(0.0, 3.0 / np.sqrt(code_dim), size=(code_dim, dim)).astype(np.float32)
    z = rng.normal(size=(n, code_dim)).astype(np.float32)
    p = 1.0 / (1.0 + np.exp(-(z @ w - 1.5)))
    return (rng.random((n, dim), dtype=np.float32) < p).astype(np.float32)


def load(dataset: str, n: int) -> np.ndarray:
    """``n`` examples of ``dataset`` (digits has 1438; they are repeated when more are asked for)."""
    if dataset in ("digits", "digits-b64"):
        x = digits_binary()
        if n > len(x):  # repeat the set to reach n examples (only for large scaling batches)
            x = np.concatenate([x] * (n // len(x) + 1))
        return x[:n]
    if dataset == "mnist-synthetic":
        return mnist_synthetic(n)
    raise ValueError(f"unknown dataset {dataset!r}")
