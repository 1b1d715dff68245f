"""A user-defined likelihood: a Poisson decoder, registered once, used by the VAE and the HVAE.

The definitions are the README's ("A new likelihood in two definitions"): the decoder
returns the log-rate η = log λ, and the data are the digits' raw 0..16 pixel counts.
"""
import functools
from typing import NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

import aetk_jax as aet

from _common import epochs, gaussian_encoder, mlp


class PoissonParams(NamedTuple):
    log_rate: jax.Array          # η = log λ: every real η is a valid rate, so no log of a vanishing λ


class PoissonDecoder(nn.Module):
    body: nn.Module
    output_dim: int

    @nn.compact
    def __call__(self, z):
        return PoissonParams(nn.Dense(self.output_dim)(self.body(z)))


@aet.decoder_loglikelihood.register(PoissonDecoder)
def _(decoder, x, out):          # log Poisson(x; λ = e^η) = x·η − e^η − log x!
    return jnp.sum(x * out.log_rate - jnp.exp(out.log_rate) - jax.scipy.special.gammaln(x + 1), axis=-1)


@aet.decoder_support.register(PoissonDecoder)
def _(decoder, x):
    if np.all(x >= 0) and np.all(x == np.round(x)):   # also False on NaN
        return None
    return f"needs non-negative integer counts, but the values lie in [{np.min(x):.4g}, {np.max(x):.4g}]"


# count data: the digits' raw 0..16 pixel intensities, as a user has them
from sklearn.datasets import load_digits  # noqa: E402

counts = load_digits().data.astype(np.float32)
train, val = counts[:1400], counts[1400:]
for name, model, lossf in (
    ("vae", aet.VAE(gaussian_encoder(), PoissonDecoder(mlp(), 64)), aet.vae.loss),
    ("hvae", aet.HVAE(gaussian_encoder(), PoissonDecoder(mlp(), 64)), functools.partial(aet.hvae.loss, eps=1e-3)),
):
    loss = functools.partial(lossf, model)
    variables, history = aet.train.fit(model, loss, train, key=jax.random.key(0), epochs=epochs(20),
                                       batch_size=64, val_data=val, progress=False)
    print(f"{name} with a Poisson decoder: val loss {history['val']['loss'][0]:.1f} -> {history['val']['loss'][-1]:.1f}")

# data outside the support are refused in one line, before any training
try:
    aet.train.fit(model, loss, train / 16.0, key=jax.random.key(0), epochs=1, progress=False)
except ValueError as err:
    print(err)
