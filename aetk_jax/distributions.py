"""Distribution parameters: the pytrees that encoders and decoders return.

Each is a ``NamedTuple`` of arrays, so it passes through ``jit``, ``vmap`` and
``grad`` unchanged. Shapes are batch-first: for a decoder on data of shape
``(batch, *data_shape)`` every field has that shape (``CategoricalParams``
adds a trailing category axis).
"""
from __future__ import annotations

from typing import NamedTuple

import jax


class GaussianLogParams(NamedTuple):
    """Diagonal Gaussian parameterised by its mean and log standard deviation."""

    mu: jax.Array
    logsigma: jax.Array


class GaussianParams(NamedTuple):
    """Diagonal Gaussian parameterised by its mean and standard deviation (σ > 0)."""

    mu: jax.Array
    sigma: jax.Array


class BernoulliParams(NamedTuple):
    """Independent Bernoulli variables parameterised by their logits."""

    logits: jax.Array


class CategoricalParams(NamedTuple):
    """Categorical variables; ``logits`` has a trailing axis of ``n_categories``."""

    logits: jax.Array
