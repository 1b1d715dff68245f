"""Latent geometry of a VAE on the bundled digits: pullback vs Fisher metric, geodesic
interpolation between digits, geodesic vs Euclidean distances."""
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
from aetk_jax import geometry as geo  # noqa: E402
from aetk_jax import geometry_plots, plots  # noqa: E402

from _common import epochs, out_dir  # noqa: E402

train, val = aet.data.load_digits()
def smooth():  # tanh layers: a smooth metric, unlike ReLU's piecewise one
    return aet.MLP([128, 128], activation=nn.tanh, final_activation=nn.tanh)


model = aet.VAE(aet.JointGaussianLogEncoder(smooth(), 2), aet.BernoulliDecoder(smooth(), 64))
variables, _ = aet.train.fit(model, functools.partial(aet.vae.loss, model), train, key=jax.random.key(0), epochs=epochs(60),
                             batch_size=64, progress=False)
z = np.asarray(aet.encoder_mean(model.encoder, aet.base.encode(model, variables, jnp.asarray(val.x))))

# two metrics of the same decoder: JᵀJ of the pixel probabilities, and the Fisher–Rao metric
pullback = geo.decoder_metric_fn(model, variables)
fisher = geo.fisher_metric_fn(model, variables)
opts = {"graph_points": None}  # from straight lines (graph_points=z: from the codes' graph)
fig, axes = plt.subplots(1, 2, figsize=(12, 5.2))
fig.subplots_adjust(wspace=0.45)
fits = {}
for ax, (name, metric) in zip(axes, [("pullback JᵀJ", pullback), ("Fisher JᵀFJ", fisher)]):
    _, curves, info = geometry_plots.plot_metric_geodesics(ax, metric, z, val.y, key=jax.random.key(1), n_pairs=4,
                                                           n=60, geodesic_options=opts, colorbar=False)
    ax.set_title(f"{name}: log √det G(z)")
    fits[name] = (curves, info)
fig.savefig(os.path.join(out_dir(), "geometry_metrics.png"), dpi=110, bbox_inches="tight")
plt.close(fig)
curves, info = fits["Fisher JᵀFJ"]
straight_length = jax.jit(lambda a, b: geo.polygon_length(fisher, jnp.linspace(a, b, curves.shape[1])))
for k in range(len(curves)):
    straight = float(straight_length(jnp.asarray(curves[k, 0]), jnp.asarray(curves[k, -1])))
    print(f"Fisher geodesic {k}: length {float(info.length[k]):.3f}, straight line {straight:.3f}, "
          f"converged {bool(info.converged[k])}")

# geodesic interpolation from the 0s' centre to the 1s' centre (the first fitted pair), evenly in arc
# length (geo.interpolate(fisher, z0, z1, 10, key) fits and resamples in one call), against the line
path = jax.jit(geo.resample_curve, static_argnums=(0, 2))(fisher, jnp.asarray(curves[0]), 10)
line = np.linspace(curves[0, 0], curves[0, -1], 10)
decode = jax.jit(lambda zz: aet.decoder_mean(model.decoder, aet.base.decode(model, variables, zz)))
plots.image_grid([np.asarray(decode(path)), np.asarray(decode(jnp.asarray(line)))],
                 ["geodesic", "straight line"], os.path.join(out_dir(), "geometry_interpolation.png"),
                 image_shape=(8, 8))

# geodesic vs Euclidean distances between twelve held-out codes
pick = np.linspace(0, len(z) - 1, 12).round().astype(int)
D = np.asarray(geo.distance_matrix(fisher, jnp.asarray(z[pick]), jax.random.key(3), n_t=16, steps=200, graph_points=None))
E = np.linalg.norm(z[pick, None] - z[None, pick], axis=-1)
iu = np.triu_indices(len(pick), 1)
fig, ax = plt.subplots(figsize=(4.6, 4.2))
ax.scatter(E[iu], D[iu], s=14, c="black")
ax.set_xlabel("Euclidean distance in z")
ax.set_ylabel("Fisher geodesic distance")
ax.set_title("66 pairs of held-out codes")
fig.savefig(os.path.join(out_dir(), "geometry_distances.png"), dpi=110, bbox_inches="tight")
plt.close(fig)
rho = np.corrcoef(np.argsort(np.argsort(E[iu])), np.argsort(np.argsort(D[iu])))[0, 1]
print(f"rank correlation of geodesic and Euclidean distances: {rho:.3f}")
