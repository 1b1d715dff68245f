"""VAE and β-VAE on the bundled digits: train, evaluate, plot the latent space and samples."""
import functools
import os

import jax
import jax.numpy as jnp
import optax

import aetk_jax as aet
from aetk_jax import plots

from _common import bernoulli_decoder, epochs, gaussian_encoder, out_dir

train, val = aet.data.load_digits()
results = {}
for name, beta in (("vae", 1.0), ("betavae", 2.0)):
    model = aet.VAE(gaussian_encoder(), bernoulli_decoder())
    loss = functools.partial(aet.vae.loss, model, beta=beta)
    variables, history = aet.train.fit(
        model, loss, train, key=jax.random.key(0), optimizer=optax.adam(1e-3),
        epochs=epochs(30), batch_size=64, val_data=val, progress=False,
    )
    x = jnp.asarray(val.x)
    elbo = float(aet.evaluate.elbo(model, variables, x, jax.random.key(1)).mean())
    ll = float(aet.evaluate.marginal_loglikelihood(model, variables, x, jax.random.key(2), 128).mean())
    results[name] = (elbo, ll)
    z = aet.encoder_mean(model.encoder, aet.base.encode(model, variables, x))
    plots.latent_codes(z, val.y, os.path.join(out_dir(), f"{name}_latent.png"), title=f"{name} (β = {beta})")
    samples = aet.sample(model, variables, jax.random.key(3), 10)
    plots.image_grid([samples.x], ["prior samples"], os.path.join(out_dir(), f"{name}_samples.png"))
for name, (elbo, ll) in results.items():
    print(f"{name}: held-out ELBO {elbo:.2f}, log-likelihood {ll:.2f} nats")
