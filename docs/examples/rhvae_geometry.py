"""RHVAE on the bundled digits: the learned metric's volume, a geodesic, and samples from the metric."""
import functools
import os

import flax.linen as nn
import jax
import jax.numpy as jnp
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

import aetk_jax as aet  # noqa: E402
from aetk_jax import geometry_plots, plots  # noqa: E402

from _common import bernoulli_decoder, epochs, gaussian_encoder, mlp, out_dir  # noqa: E402

train, val = aet.data.load_digits()
model = aet.RHVAE(gaussian_encoder(), bernoulli_decoder(), aet.rhvae.MetricNetwork(mlp(), 2),
                  n_centroids=64, T=0.8, lam=1e-2)
loss = functools.partial(aet.rhvae.loss, model, K=3, eps=3e-3, beta0=0.3, n_fixed_point=5,
                         flow_gradient="detached")  # pythae's gradient: see the RHVAE page
variables, history = aet.train.fit(model, loss, train, key=jax.random.key(0), epochs=epochs(10),
                                   batch_size=64, progress=False)

x = jnp.asarray(val.x)
z = np.asarray(aet.encoder_mean(model.encoder, aet.base.encode(model, variables, x)))
metric = aet.rhvae.metric_fn(model, variables)
z0, z1 = z[val.y == 0].mean(axis=0), z[val.y == 1].mean(axis=0)
params, curve = aet.geometry.fit_geodesic(metric, jnp.asarray(z0), jnp.asarray(z1), jax.random.key(1))
t = jnp.linspace(0.0, 1.0, 50)
geo = aet.geometry.NeuralGeodesic((32, 32), jnp.asarray(z0), jnp.asarray(z1))
length = float(aet.geometry.curve_length(metric, geo.apply, params, t))

fig, ax = plt.subplots(figsize=(5.5, 4.5))
geometry_plots.plot_latent_metric(ax, metric, z, labels=val.y, geodesics=[np.asarray(curve)])
ax.set_title("RHVAE: log √det G(z), codes and a geodesic")
fig.savefig(os.path.join(out_dir(), "rhvae_metric.png"), dpi=120, bbox_inches="tight")
plt.close(fig)
samples = aet.sample(model, variables, jax.random.key(2), 10)
plots.image_grid([samples.x], ["samples from the metric"], os.path.join(out_dir(), "rhvae_samples.png"))
print(f"geodesic length from the 0s to the 1s: {length:.3f}")
