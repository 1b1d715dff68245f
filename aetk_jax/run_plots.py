"""The plots that ``aet train`` writes into a run folder.

``run_plots`` draws the loss curves, the latent codes, reconstructions and
samples of a fitted recipe (see ``aetk_jax.builders``); for an RHVAE it adds the
learned metric's volume with one geodesic (``rhvae_plots``). This is the apps
layer: it may import any lower module, and nothing in the library imports it.
"""
from __future__ import annotations

import os

import jax.numpy as jnp
import matplotlib.pyplot as plt
import numpy as np

from . import base, decoders, encoders, geometry, geometry_plots, plots, rhvae, sampling


def run_plots(recipe, variables, train, val, history, out: str, key) -> list[str]:
    """Write the run's PNG plots into ``out``; returns their paths."""
    paths = [plots.loss_curves(history, os.path.join(out, "loss.png"))]
    model = recipe.model
    x_val = jnp.asarray(val.x)
    z = np.asarray(encoders.encoder_mean(model.encoder, base.encode(model, variables, x_val)))
    paths.append(plots.latent_codes(z, val.y, os.path.join(out, "latent.png"), title=f"{recipe.name}: latent means"))
    n = min(10, x_val.shape[0])
    recon = decoders.decoder_mean(model.decoder, base.decode(model, variables, jnp.asarray(z[:n])))
    paths.append(
        plots.image_grid(
            [np.asarray(x_val[:n]), np.asarray(recon)], ["data", "reconstruction"], os.path.join(out, "reconstructions.png")
        )
    )
    if recipe.name != "ae":
        s = sampling.sample(model, variables, key, 20)
        paths.append(plots.image_grid([np.asarray(s.x[:10]), np.asarray(s.x[10:])], ["samples", ""], os.path.join(out, "samples.png")))
    if recipe.name == "rhvae":
        paths.extend(rhvae_plots(recipe, variables, z, val.y, out, key))
    return paths


def rhvae_plots(recipe, variables, z, labels, out: str, key) -> list[str]:
    """Metric volume heat map under the latent codes, and one fitted geodesic."""

    metric = rhvae.metric_fn(recipe.model, variables)
    lo, hi = z.min(axis=0), z.max(axis=0)
    pad = 0.25 * (hi - lo)
    extent = (lo[0] - pad[0], hi[0] + pad[0], lo[1] - pad[1], hi[1] + pad[1])
    # a geodesic between the codes of the first two distinct labels' centres
    if labels is not None and len(np.unique(labels)) > 1:
        a, b = np.unique(labels)[:2]
        z0, z1 = z[labels == a].mean(axis=0), z[labels == b].mean(axis=0)
    else:
        z0, z1 = z[0], z[1]
    _, curve = geometry.fit_geodesic(metric, jnp.asarray(z0), jnp.asarray(z1), key)
    fig, ax = plt.subplots(figsize=(5.5, 4.5))
    geometry_plots.plot_latent_metric(ax, metric, z, labels=labels, geodesics=[np.asarray(curve)], extent=extent)
    ax.set_title("RHVAE: log √det G(z), codes and a geodesic")
    path = os.path.join(out, "metric.png")
    fig.savefig(path, dpi=120, bbox_inches="tight")
    plt.close(fig)
    return [path]
