"""A user-defined likelihood: a Poisson decoder, registered once, used by the VAE and the HVAE."""
import functools
from typing import NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

import aetk_jax as aet

from _common import epochs, gaussian_encoder, mlp


class PoissonParams(NamedTuple):
    rate: jax.Array


class PoissonDecoder(nn.Module):
    body: nn.Module
    output_dim: int

    @nn.compact
    def __call__(self, z):
        return PoissonParams(nn.softplus(nn.Dense(self.output_dim)(self.body(z))))


@aet.decoder_loglikelihood.register(PoissonDecoder)
def _(decoder, x, out):
    return jnp.sum(x * jnp.log(out.rate) - out.rate - jax.scipy.special.gammaln(x + 1), axis=-1)


# count data: the digits' 0..16 pixel intensities, coarsened to counts 0..4
from sklearn.datasets import load_digits  # noqa: E402

counts = (load_digits().data // 4).astype(np.float32)
train, val = counts[:1400], counts[1400:]
for name, model, lossf in (
    ("vae", aet.VAE(gaussian_encoder(), PoissonDecoder(mlp(), 64)), aet.vae.loss),
    ("hvae", aet.HVAE(gaussian_encoder(), PoissonDecoder(mlp(), 64)), functools.partial(aet.hvae.loss, eps=1e-3)),
):
    loss = functools.partial(lossf, model)
    variables, history = aet.train.fit(model, loss, train, key=jax.random.key(0), epochs=epochs(20),
                                       batch_size=64, val_data=val, progress=False)
    print(f"{name} with a Poisson decoder: val loss {history['val']['loss'][0]:.1f} -> {history['val']['loss'][-1]:.1f}")
