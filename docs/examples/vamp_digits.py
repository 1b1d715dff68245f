"""VAMP (a VAE with a VampPrior) against the VAE on the bundled digits: held-out bounds, the codes
with the pseudo-inputs' posterior means, the learned pseudo-inputs, and samples from the prior."""
import functools
import os

import jax
import jax.numpy as jnp
import numpy as np
import optax

import aetk_jax as aet
from aetk_jax import plots

from _common import bernoulli_decoder, epochs, gaussian_encoder, out_dir

train, val = aet.data.load_digits()
x = jnp.asarray(val.x)
fitted = {}
for name, model in (("vae", aet.VAE(gaussian_encoder(), bernoulli_decoder())),
                    ("vamp", aet.VAMP(gaussian_encoder(), bernoulli_decoder(), n_components=50))):
    variables, _ = aet.train.fit(
        model, functools.partial(aet.vae.loss, model), train, key=jax.random.key(0),
        optimizer=optax.adam(1e-3), epochs=epochs(30), batch_size=64, progress=False,
    )
    elbo = float(aet.evaluate.elbo(model, variables, x, jax.random.key(1), n_samples=8).mean())
    ll = float(aet.evaluate.marginal_loglikelihood(model, variables, x, jax.random.key(2), 512).mean())
    print(f"{name}: held-out ELBO {elbo:.2f}, log-likelihood (512 samples) {ll:.2f} nats")
    fitted[name] = (model, variables)

model, variables = fitted["vamp"]
u = variables["params"]["prior"]["pseudo_inputs"]
z = np.asarray(aet.encoder_mean(model.encoder, aet.base.encode(model, variables, x)))
zu = np.asarray(aet.encoder_mean(model.encoder, aet.base.encode(model, variables, u)))
fig = plots.new_figure((5.6, 4.6))
ax = fig.add_subplot()
plots.draw_codes(ax, z, val.y)
ax.scatter(zu[:, 0], zu[:, 1], marker="x", c="k", s=30, label="pseudo-inputs' posterior means")
ax.set_title("VAMP: held-out codes and the prior's 50 components")
plots.save(fig, os.path.join(out_dir(), "vamp_latent.png"))
plots.image_grid([np.asarray(u[:10]), np.asarray(u[10:20])], ["pseudo-inputs", ""],
                 os.path.join(out_dir(), "vamp_pseudo_inputs.png"), image_shape=(8, 8), value_range=(0.0, 1.0))
samples = aet.sample(model, variables, jax.random.key(3), 20)
plots.image_grid([np.asarray(samples.x[:10]), np.asarray(samples.x[10:])], ["prior samples", ""],
                 os.path.join(out_dir(), "vamp_samples.png"), image_shape=(8, 8))
