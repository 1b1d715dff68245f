"""Plots of a 2-D latent space under a metric: log volume heat map, codes, geodesics.

matplotlib is imported inside the plotting functions only, so importing
``aetk_jax`` (or this module) never imports it. This is the plotting layer:
it imports ``aetk_jax.geometry``, never the other way round.

- :func:`metric_volume_grid`: the magnification factor ``log √det G`` on a grid;
- :func:`plot_latent_metric`: that heat map under the codes, with given curves;
- :func:`plot_metric_geodesics`: the same with geodesics between class centres
  fitted by ``aet.geometry.fit_geodesics`` (any metric: a model's
  ``aet.geometry.fisher_metric_fn``, an RHVAE's ``aet.rhvae.metric_fn``, …).
"""
from __future__ import annotations

from typing import Any, Optional, Sequence, Union

import jax
import jax.numpy as jnp
import numpy as np

from .geometry import MetricFn, _check_metric_fn, fit_geodesics, magnification_factor
from .validation import check_int

Extent = tuple[float, float, float, float]
VolumeGrid = tuple[np.ndarray, np.ndarray, np.ndarray]


def _check_extent(extent: Any) -> Extent:
    try:
        vals = tuple(float(v) for v in extent)
    except TypeError as err:
        raise TypeError(f"`extent` must be (xmin, xmax, ymin, ymax), got {extent!r}") from err
    if len(vals) != 4 or not all(np.isfinite(vals)):
        raise ValueError(f"`extent` must be four finite numbers (xmin, xmax, ymin, ymax), got {extent!r}")
    x0, x1, y0, y1 = vals
    if not (x1 > x0 and y1 > y0):
        raise ValueError(f"`extent` must have xmax > xmin and ymax > ymin, got {extent!r}")
    return vals  # type: ignore[return-value]


def metric_volume_grid(metric_fn: MetricFn, extent: Extent, n: int = 100, *, batch_size: int = 4096) -> VolumeGrid:
    """The log volume element ``log √det G(z)`` on an ``n × n`` grid of a 2-D latent space.

    ``extent = (xmin, xmax, ymin, ymax)``. Returns NumPy arrays ``(X, Y, V)``,
    each ``(n, n)`` (``X[i, j] = x_j``, ``Y[i, j] = y_i``, as ``np.meshgrid``),
    with ``V = ½ log det G`` computed by ``jax.vmap`` in chunks of
    ``batch_size`` points (``jax.lax.map``); ``−inf`` where ``G`` is singular.
    """
    x0, x1, y0, y1 = _check_extent(extent)
    check_int(n, "n", minimum=2)
    check_int(batch_size, "batch_size", minimum=1)
    dtype = jnp.result_type(float)
    _check_metric_fn(metric_fn, 2, dtype)
    xs = np.linspace(x0, x1, n)
    ys = np.linspace(y0, y1, n)
    X, Y = np.meshgrid(xs, ys)
    pts = jnp.asarray(np.stack([X.ravel(), Y.ravel()], axis=1), dtype)

    logvol = jax.jit(lambda z: magnification_factor(metric_fn, z, batch_size=batch_size))
    V = np.asarray(logvol(pts)).reshape(n, n)
    return X, Y, V


def _check_overlays(
    z_codes: Any, labels: Any, geodesics: Sequence[Any]
) -> tuple[Optional[np.ndarray], Optional[np.ndarray], list[np.ndarray]]:
    """``plot_latent_metric``'s codes ``(batch, 2)``, labels ``(batch,)`` and curves ``(n_t, 2)`` as arrays, checked."""
    codes = None if z_codes is None else np.asarray(z_codes)
    if codes is not None and (codes.ndim != 2 or codes.shape[1] != 2):
        raise ValueError(f"`z_codes` must have shape (batch, 2), got {codes.shape}")
    labs = None if labels is None else np.asarray(labels)
    if labs is not None:
        if codes is None:
            raise ValueError("`labels` needs `z_codes`")
        if labs.shape != (codes.shape[0],):
            raise ValueError(f"`labels` must have shape ({codes.shape[0]},), got {labs.shape}")
    curves = [np.asarray(c) for c in geodesics]
    for i, c in enumerate(curves):
        if c.ndim != 2 or c.shape[1] != 2:
            raise ValueError(f"`geodesics[{i}]` must have shape (n_t, 2), got {c.shape}")
    return codes, labs, curves


def plot_latent_metric(
    ax: Any,
    metric: Union[MetricFn, VolumeGrid],
    z_codes: Optional[Any] = None,
    labels: Optional[Any] = None,
    geodesics: Sequence[Any] = (),
    extent: Optional[Extent] = None,
    *,
    n: int = 100,
    cmap: Optional[Any] = None,
    colorbar: bool = True,
    point_size: float = 10.0,
    geodesic_color: str = "black",
) -> Any:
    """Draw a 2-D latent space on the matplotlib axes ``ax``.

    - a heat map of ``log √det G(z)``: ``metric`` is a metric function
      ``(2,) -> (2, 2)`` (evaluated by :func:`metric_volume_grid` on ``n × n``
      points of ``extent``) or a precomputed ``(X, Y, V)`` grid;
    - the latent codes ``z_codes`` ``(batch, 2)`` on top of the heat map,
      coloured by ``labels`` ``(batch,)`` when given: one distinct colour per
      label, points edged in white, and a legend of every label outside the
      axes (below them when there is a colour bar, else right of them);
    - each curve of ``geodesics`` (arrays ``(n_t, 2)``) as a line with its ends
      marked (``geodesic_color``, with a white halo).

    ``cmap`` defaults to a white-to-mid-grey map (``plots.light_greys``) so that
    coloured codes stand out on it; ``point_size`` is the codes' marker area.

    ``extent = (xmin, xmax, ymin, ymax)`` defaults to the codes' range padded
    by 10 %. Returns the heat map's ``QuadMesh``.
    """
    codes, labs, curves = _check_overlays(z_codes, labels, geodesics)
    if callable(metric):
        if extent is None:
            if codes is None:
                raise ValueError("`extent` is required when there are no `z_codes` to take it from")
            lo, hi = codes.min(axis=0), codes.max(axis=0)
            pad = 0.1 * np.maximum(hi - lo, 1e-3)
            extent = (lo[0] - pad[0], hi[0] + pad[0], lo[1] - pad[1], hi[1] + pad[1])
        X, Y, V = metric_volume_grid(metric, extent, n)
    else:
        try:
            X, Y, V = (np.asarray(a) for a in metric)
        except (TypeError, ValueError) as err:
            raise TypeError("`metric` must be a metric function or an (X, Y, V) grid") from err
        if not (X.shape == Y.shape == V.shape and V.ndim == 2):
            raise ValueError(f"`metric` grid arrays must share one 2-D shape, got {X.shape}, {Y.shape}, {V.shape}")

    from matplotlib import patheffects  # lazy: matplotlib is imported only to plot

    from .plots import light_greys, scatter_classes

    Vm = np.ma.masked_invalid(V)
    mesh = ax.pcolormesh(X, Y, Vm, cmap=light_greys() if cmap is None else cmap, shading="auto", zorder=1)
    if colorbar:
        ax.figure.colorbar(mesh, ax=ax, label=r"$\log\sqrt{\det G(z)}$")
    if codes is not None:
        if labs is None:
            ax.scatter(codes[:, 0], codes[:, 1], s=point_size, c="black", alpha=0.6, linewidths=0, zorder=2.5)
        else:
            scatter_classes(ax, codes, labs, point_size=point_size, legend="below" if colorbar else "right")
    halo = patheffects.withStroke(linewidth=4, foreground="white")  # visible on any shade
    for c in curves:
        ax.plot(c[:, 0], c[:, 1], color=geodesic_color, lw=2, zorder=3, path_effects=[halo])
        ax.plot(c[[0, -1], 0], c[[0, -1], 1], "o", color=geodesic_color, mec="white", ms=6, zorder=3)
    ax.set_xlim(X.min(), X.max())
    ax.set_ylim(Y.min(), Y.max())
    ax.set_xlabel("$z_1$")
    ax.set_ylabel("$z_2$")
    return mesh


def centre_pairs(z_codes: Any, labels: Optional[Any] = None, n_pairs: int = 3) -> tuple[np.ndarray, np.ndarray]:
    """End points for geodesics: the centres (mean codes) of consecutive labels, or spread-out codes.

    Args:
        z_codes: codes ``(batch, d)``.
        labels: optional labels ``(batch,)``; with two or more distinct labels the pairs join
            the centres of labels ``(u_0, u_1), (u_1, u_2), …`` (``u`` the sorted distinct labels).
        n_pairs: the most pairs returned.

    Returns:
        ``(starts, ends)``, each ``(n, d)`` with ``1 ≤ n ≤ n_pairs``.
    """
    check_int(n_pairs, "n_pairs", minimum=1)
    z = np.asarray(z_codes, np.float64)
    if z.ndim != 2 or z.shape[0] < 2:
        raise ValueError(f"`z_codes` must have shape (batch, d) with batch >= 2, got {z.shape}")
    if labels is not None and len(np.unique(labels)) > 1:
        labs = np.asarray(labels)
        centres = np.stack([z[labs == u].mean(axis=0) for u in np.unique(labs)])
    else:  # codes in order of their first coordinate, at evenly spaced ranks
        order = np.argsort(z[:, 0])
        centres = z[order[np.linspace(0, len(order) - 1, n_pairs + 1).round().astype(int)]]
    k = min(n_pairs, len(centres) - 1)
    return centres[:k], centres[1 : k + 1]


def plot_metric_geodesics(
    ax: Any,
    metric_fn: MetricFn,
    z_codes: Any,
    labels: Optional[Any] = None,
    *,
    key: jax.Array,
    n_pairs: int = 3,
    extent: Optional[Extent] = None,
    n: int = 100,
    geodesic_options: Optional[dict] = None,
    **plot_options: Any,
) -> tuple[Any, np.ndarray, Any]:
    """A metric map of a 2-D latent space with fitted geodesics between class centres.

    Fits ``n_pairs`` geodesics between the pairs of :func:`centre_pairs` in one
    ``aet.geometry.fit_geodesics`` call (initialised from the codes' graph) and
    draws them with :func:`plot_latent_metric` over the heat map of
    ``log √det G`` and the codes.

    Args:
        ax: matplotlib axes.
        metric_fn: a metric function ``(2,) -> (2, 2)``.
        z_codes: codes ``(batch, 2)``; they also form the initialising graph
            (at most 300 of them, evenly strided).
        labels: optional labels ``(batch,)``.
        key: a PRNG key for the geodesic fit.
        n_pairs: number of geodesics.
        extent: ``(xmin, xmax, ymin, ymax)``; default the codes' range padded by 10 %.
        n: heat-map resolution (``n × n`` points).
        geodesic_options: keywords of ``fit_geodesics`` (``n_t``, ``steps``, …; ``graph_points=None``
            starts from straight lines, cheaper to compile).
        **plot_options: keywords of :func:`plot_latent_metric` (``cmap``, ``colorbar``, …).

    Returns:
        ``(mesh, curves, info)``: the heat map's ``QuadMesh``, the curves ``(n_pairs, n_t, 2)``
        as NumPy, and the fit's ``GeodesicInfo``.
    """
    z = np.asarray(z_codes)
    starts, ends = centre_pairs(z, labels, n_pairs)
    opts = dict(geodesic_options or {})
    graph = z[:: max(1, len(z) // 300)]
    opts.setdefault("graph_points", jnp.asarray(graph, jnp.float32))
    curves, info = fit_geodesics(metric_fn, jnp.asarray(starts, jnp.float32), jnp.asarray(ends, jnp.float32), key, **opts)
    curves = np.asarray(curves)
    mesh = plot_latent_metric(ax, metric_fn, z, labels=labels, geodesics=list(curves), extent=extent, n=n,
                              **plot_options)
    return mesh, curves, info
