"""The plots that ``aet train`` writes into a run folder.

``run_plots`` draws the loss curves, the latent codes, reconstructions and
samples of a fitted recipe (see ``aetk_jax.builders``); for every VAE-family
model with a 2-D latent space the Fisher–Rao metric map with a few geodesics
(``fisher_plots``); for an RHVAE also the learned metric's volume with one
geodesic (``rhvae_plots``). This is the apps
layer: it may import any lower module, and nothing in the library imports it.

Examples are drawn as images only when the training set records an image shape
(``Dataset.image_shape``; the digits, MNIST IDX files, an ``.npz`` with a
``shape`` entry), on the training data's value range; other data are drawn as
lines. Reconstructions show the first validation example of each label (up to
ten labels) when there are labels, else the first ten examples. Figures are
``matplotlib.figure.Figure`` objects: no pyplot, no backend change.
"""
from __future__ import annotations

import os

import jax.numpy as jnp
import numpy as np

from . import base, decoders, encoders, geometry, geometry_plots, plots, rhvae, sampling


def _example_style(train) -> dict:
    """``image_grid`` keywords for the data of ``train``: its image shape and value range."""
    x = np.asarray(train.x)
    return {"image_shape": getattr(train, "image_shape", None), "value_range": (float(x.min()), float(x.max()))}


def _reconstruction_rows(model, variables, val, z: np.ndarray) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Examples to reconstruct (one per label where labels exist), their reconstructions and column titles."""
    if val.y is not None:
        idx = plots.first_of_each_class(val.y, plots.MAX_EXAMPLES)
        titles = [f"label {val.y[i]}" for i in idx]
    else:
        idx = np.arange(min(plots.MAX_EXAMPLES, len(val)))
        titles = None
    recon = decoders.decoder_mean(model.decoder, base.decode(model, variables, jnp.asarray(z[idx])))
    return np.asarray(val.x)[idx], np.asarray(recon), titles


def run_plots(recipe, variables, train, val, history, out: str, key) -> list[str]:
    """Write the run's PNG plots into ``out``; returns their paths."""
    paths = [plots.loss_curves(history, os.path.join(out, "loss.png"))]
    model = recipe.model
    if base.is_conditional(model):  # labels enter the encoder and decoder: plots per class
        return paths + conditional_plots(recipe, variables, train, val, out, key)
    x_val = jnp.asarray(val.x)
    z = np.asarray(encoders.encoder_mean(model.encoder, base.encode(model, variables, x_val)))
    paths.append(plots.latent_codes(z, val.y, os.path.join(out, "latent.png"), title=f"{recipe.name}: latent means"))
    style = _example_style(train)
    x, recon, titles = _reconstruction_rows(model, variables, val, z)
    path = os.path.join(out, "reconstructions.png")
    paths.append(plots.image_grid([x, recon], ["data", "reconstruction"], path, column_titles=titles, **style))
    if recipe.name != "ae":
        if recipe.name in ("rae_l2", "rae_gp"):  # RAEs sample from a mixture fitted to the codes
            from . import rae

            variables = rae.fit_code_density(model, variables, jnp.asarray(train.x), key=key)
        if recipe.name in ("vqvae", "hrqvae"):  # @vq: VQ models sample from a code prior fitted after training
            from . import vqvae

            variables = vqvae.fit_code_prior(model, variables, jnp.asarray(train.x))
        s = np.asarray(sampling.sample(model, variables, key, 20).x)
        paths.append(plots.image_grid([s[:10], s[10:]], ["samples", ""], os.path.join(out, "samples.png"), **style))
    if recipe.name == "rhvae" and z.shape[1] == 2:  # the metric plot is of a 2-D latent space
        paths.extend(rhvae_plots(recipe, variables, z, val.y, out, key))
    paths.extend(fisher_plots(recipe, variables, z, val.y, out, key))
    return paths


def conditional_plots(recipe, variables, train, val, out: str, key, n_per_class: int = 10) -> list[str]:
    """A conditional run's latent codes, reconstructions and samples per class.

    The codes and reconstructions use each validation example's own label; the
    samples (``samples_per_class.png``) decode the same ``n_per_class`` draws
    z ~ p(z) once for every label (up to ten), one row per label, so a column
    shows one code under every condition.
    """
    import jax

    model = recipe.model
    pair = (jnp.asarray(val.x), jnp.asarray(val.y))
    z = np.asarray(encoders.encoder_mean(model.encoder, base.encode(model, variables, pair)))
    paths = [plots.latent_codes(z, val.y, os.path.join(out, "latent.png"), title=f"{recipe.name}: latent means given y")]
    style = _example_style(train)
    idx = plots.first_of_each_class(val.y, plots.MAX_EXAMPLES)
    recon = decoders.decoder_mean(model.decoder, base.decode(model, variables, jnp.asarray(z[idx]), pair[1][idx]))
    paths.append(plots.image_grid([np.asarray(val.x)[idx], np.asarray(recon)], ["data", "reconstruction"],
                                  os.path.join(out, "reconstructions.png"),
                                  column_titles=[f"label {val.y[i]}" for i in idx], **style))
    if recipe.name in ("rae_l2", "rae_gp"):  # RAEs sample from a mixture fitted to the codes
        from . import rae

        variables = rae.fit_code_density(model, variables, (jnp.asarray(train.x), jnp.asarray(train.y)), key=key)
    if recipe.name in ("vqvae", "hrqvae"):  # and VQ models from one code prior per label, p(k | y)
        from . import vqvae

        variables = vqvae.fit_code_prior(model, variables, (jnp.asarray(train.x), jnp.asarray(train.y)))
    labels = list(range(min(int(model.n_conditions), plots.MAX_EXAMPLES)))
    k_z = jax.random.fold_in(key, 1)  # the same key for every label: the same codes in every row
    rows = [np.asarray(sampling.sample(model, variables, k_z, n_per_class, condition=jnp.full(n_per_class, c)).x)
            for c in labels]
    paths.append(plots.image_grid(rows, [f"y = {c}" for c in labels], os.path.join(out, "samples_per_class.png"),
                                  title=f"{recipe.name}: samples per class (one z per column)", **style))
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
    fig = plots.new_figure((5.5, 5.2))
    ax = fig.subplots()
    geometry_plots.plot_latent_metric(ax, metric, z, labels=labels, geodesics=[np.asarray(curve)], extent=extent)
    ax.set_title("RHVAE: log √det G(z), codes and a geodesic")
    return [plots.save(fig, os.path.join(out, "metric.png"))]


# CLI scale: three short fits from straight lines (the graph initialisation would add ~2 s of
# compilation), so the figure costs ~1.5 s of CPU
_FISHER_GEODESICS = {"n_t": 16, "steps": 150, "graph_points": None}


def fisher_plots(recipe, variables, z, labels, out: str, key) -> list[str]:
    """The decoder's Fisher–Rao metric map (``log √det G``) with geodesics between class centres.

    Written as ``fisher_metric.png`` for models with a likelihood (not the
    deterministic autoencoders of ``builders.DETERMINISTIC_MODELS``) whose decoder
    has a registered ``aet.geometry.fisher_information``, when the latent space is 2-D.
    """
    from .builders import DETERMINISTIC_MODELS

    decoder = recipe.model.decoder
    registered = geometry.fisher_information.dispatch(type(decoder)) is not geometry.fisher_information.dispatch(object)
    if z.shape[1] != 2 or recipe.name in DETERMINISTIC_MODELS or not registered:
        return []
    metric = geometry.fisher_metric_fn(recipe.model, variables)
    fig = plots.new_figure((5.5, 5.2))
    ax = fig.subplots()
    geometry_plots.plot_metric_geodesics(ax, metric, z, labels, key=key, n_pairs=3, n=60,
                                         geodesic_options=_FISHER_GEODESICS)
    ax.set_title(f"{recipe.name}: Fisher metric log √det G(z) and geodesics")
    return [plots.save(fig, os.path.join(out, "fisher_metric.png"))]
