"""HVAE on the bundled digits, against a VAE with the same networks and budget."""
import functools
import os

import jax
import jax.numpy as jnp

import aetk_jax as aet
from aetk_jax import plots

from _common import bernoulli_decoder, epochs, gaussian_encoder, out_dir

train, val = aet.data.load_digits()
x = jnp.asarray(val.x)
hyper = dict(K=3, eps=1e-2, beta0=0.3)
for name, model, loss in (
    ("vae", aet.VAE(gaussian_encoder(), bernoulli_decoder()), aet.vae.loss),
    ("hvae", aet.HVAE(gaussian_encoder(), bernoulli_decoder()), functools.partial(aet.hvae.loss, **hyper)),
):
    v, _ = aet.train.fit(model, functools.partial(loss, model), train, key=jax.random.key(0),
                         epochs=epochs(20), batch_size=64, progress=False)
    kw = hyper if name == "hvae" else {}
    elbo = float(aet.evaluate.elbo(model, v, x, jax.random.key(1), **kw).mean())
    ll = float(aet.evaluate.marginal_loglikelihood(model, v, x, jax.random.key(2), 128).mean())
    print(f"{name}: held-out ELBO {elbo:.2f}, log-likelihood {ll:.2f} nats")
    if name == "hvae":  # codes z₀ = μ(x) of the held-out digits, and decoded prior samples
        z = aet.encoder_mean(model.encoder, aet.base.encode(model, v, x))
        plots.latent_codes(z, val.y, os.path.join(out_dir(), "hvae_latent.png"), title="HVAE (K = 3)")
        samples = aet.sample(model, v, jax.random.key(3), 10)
        plots.image_grid([samples.x], ["prior samples"], os.path.join(out_dir(), "hvae_samples.png"))
