"""Deterministic autoencoder on the bundled digits: reconstruction error, latent codes, reconstructions."""
import functools
import os

import jax
import jax.numpy as jnp

import aetk_jax as aet
from aetk_jax import plots

from _common import epochs, mlp, out_dir

train, val = aet.data.load_digits()
model = aet.AE(aet.Encoder(mlp(), 2), aet.Decoder(mlp(), 64))
loss = functools.partial(aet.ae.loss, model)
variables, history = aet.train.fit(model, loss, train, key=jax.random.key(0), epochs=epochs(20),
                                   batch_size=64, val_data=val, progress=False)
x = jnp.asarray(val.x)
z = model.apply(variables, x, method="encode")
x_hat = model.apply(variables, z, method="decode")
plots.latent_codes(z, val.y, os.path.join(out_dir(), "ae_latent.png"), title="AE codes of held-out digits")
plots.image_grid([x[:10], x_hat[:10]], ["held-out digits", "reconstructions"],
                 os.path.join(out_dir(), "ae_reconstructions.png"))
print(f"ae: held-out mean squared error {float(loss(variables, x)):.4f} "
      f"(first epoch {history['val']['loss'][0]:.4f})")
