"""Generation: ``aet.sample(model, variables, key, n)``."""
from __future__ import annotations

import functools
from typing import NamedTuple

import flax.linen as nn
import jax

from .base import Variables, decode, sample_prior
from .decoders import decoder_mean
from .validation import check_int, check_key


class Samples(NamedTuple):
    """``z``: latent draws ``(n, d)``; ``x``: the decoder's mean at them ``(n, *data_shape)``."""

    z: jax.Array
    x: jax.Array


@functools.singledispatch
def sample(model: nn.Module, variables: Variables, key: jax.Array, n: int) -> Samples:
    """Draw ``n`` codes from the model's prior and decode them.

    The prior is the model's (``prior=``, N(0, I) by default); RHVAE registers a sampler of its learned
    metric's density. Returns ``Samples(z, x)`` with ``x`` the decoder mean.
    """
    check_key(key)
    check_int(n, "n", minimum=1)
    z = sample_prior(model, variables, key, n)
    return Samples(z, decoder_mean(model.decoder, decode(model, variables, z)))
