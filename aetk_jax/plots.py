"""Matplotlib figures for a training run: loss curves, latent space, reconstructions, samples.

Imported only by the CLI and the examples (``import aetk_jax`` does not import
matplotlib). Importing this module changes no global state: every figure is a
``matplotlib.figure.Figure`` drawn with the object-oriented API and written by
``Figure.savefig`` (which needs no pyplot backend), so the user's backend is
left alone and plotting works headless. Every ``*_curves``/``*_codes``/
``*_grid`` function writes one PNG and returns its path.

Layout rules (each PNG is at most ~1800 px wide at ``DPI``):

- loss curves: one panel per metric on a grid of at most ``MAX_COLUMNS``
  columns; a metric whose train and validation values never change (e.g. an
  HVAE's ``logdet``, ``converged``) gets no panel but is named, with its value,
  in the figure title; y axes are labelled and show plain numbers (no offset);
- examples: data with an image shape (``Dataset.image_shape``, or a square
  size when ``image_shape="auto"``) are drawn as images on the data's own value
  range (``vmin``/``vmax`` from the data, not [0, 1]); other data as one line per
  example (value against feature index) on that range;
- classes: one colour per label (``class_colours``), the legend outside the axes.
"""
from __future__ import annotations

import math
import os
import textwrap
from typing import Any, Callable, Optional, Sequence, Union

import numpy as np
from matplotlib.figure import Figure

DPI = 120
MAX_COLUMNS = 3
MAX_EXAMPLES = 10
_LEGEND_MAX_ROWS = 20

ImageShape = Union[Sequence[int], None, str]


def new_figure(figsize: tuple[float, float]) -> Figure:
    """A pyplot-free ``Figure`` of ``figsize`` inches (saved at ``DPI``)."""
    return Figure(figsize=figsize, dpi=DPI)


def save(fig: Figure, path: str) -> str:
    """Write ``fig`` to ``path`` (folders created) at ``DPI``; returns ``path``."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path, dpi=DPI, bbox_inches="tight")
    return path


# ----------------------------------------------------------------------------- loss curves


def _constant_value(values: Sequence[float]) -> Optional[float]:
    """The value of a series of finite, equal numbers (to 1e-6 relative), else ``None``."""
    v = np.asarray(values, dtype=np.float64)
    if v.size == 0 or not np.all(np.isfinite(v)):
        return None
    lo, hi = float(v.min()), float(v.max())
    return lo if hi - lo <= 1e-6 * max(abs(lo), abs(hi)) else None  # float32 round-off is ~1e-7


def _loss_panels(history: dict[str, Any]) -> tuple[list[str], dict[str, float]]:
    """The metrics to draw (``loss`` first, no ``grad_norm``) and the constant ones left out.

    A metric is constant when it takes one value over two or more epochs, in
    training and validation alike; ``loss`` is always drawn.
    """
    train, val = history.get("train", {}), history.get("val", {})
    keys = (["loss"] if "loss" in train else []) + [k for k in train if k not in ("loss", "grad_norm")]
    several = len(history.get("epoch", ())) >= 2
    shown, constant = [], {}
    for k in keys:
        value = _constant_value(list(train[k]) + list(val.get(k, []))) if several else None
        if value is None or k == "loss":
            shown.append(k)
        else:
            constant[k] = value
    return shown, constant


def _plain_y_ticks(ax: Any, values: Sequence[float]) -> None:
    """Tick labels without an offset or a shared exponent: plain numbers, or ``2.5e-05`` each below 1e-3."""
    from matplotlib.ticker import FuncFormatter

    v = np.abs(np.asarray(values, dtype=np.float64))
    v = v[np.isfinite(v)]
    if v.size and 0 < v.max() < 1e-3:
        ax.yaxis.set_major_formatter(FuncFormatter(lambda t, _: f"{t:.3g}"))
    else:
        ax.ticklabel_format(axis="y", style="plain", useOffset=False)


def _loss_figure(history: dict[str, Any]) -> Figure:
    """The loss-curve figure of ``history`` (``{"epoch": [...], "train": {...}, "val": {...}}``).

    Args:
        history: as returned by ``aet.train.fit``.

    Returns:
        A ``Figure`` with one panel per non-constant metric on a grid of at most
        ``MAX_COLUMNS`` columns, constant metrics named in the title (a note
        "no epochs recorded" when ``history`` holds none).
    """
    keys, constant = _loss_panels(history)
    if not keys or not history.get("epoch"):  # e.g. a run interrupted in its first epoch
        fig = new_figure((4.0, 2.9))
        ax = fig.subplots()
        ax.text(0.5, 0.5, "no epochs recorded", ha="center", va="center", transform=ax.transAxes)
        ax.set_axis_off()
        return fig
    train, val, epochs = history["train"], history.get("val", {}), history["epoch"]
    ncols = min(MAX_COLUMNS, len(keys))
    nrows = math.ceil(len(keys) / ncols)
    fig = new_figure((4.0 * ncols, 2.9 * nrows + 0.4))
    axes = np.atleast_1d(fig.subplots(nrows, ncols, squeeze=False)).ravel()
    marker = "o" if len(epochs) < 2 else None
    for ax, k in zip(axes, keys):
        ax.plot(epochs, train[k], marker=marker, label="train")
        if k in val:
            ax.plot(epochs, val[k], marker=marker, label="validation")
        ax.set_title(k, fontsize="medium")
        ax.set_ylabel(k)
        ax.set_xlabel("epoch")
        _plain_y_ticks(ax, list(train[k]) + list(val.get(k, [])))
        ax.xaxis.get_major_locator().set_params(integer=True)
    for ax in axes[len(keys):]:
        ax.set_visible(False)
    if any(k in val for k in keys):
        axes[0].legend(fontsize="small")
    title = "training metrics per epoch"
    if constant:
        consts = ", ".join(f"{k} = {v:.4g}" for k, v in constant.items())
        title += "\n" + textwrap.fill(f"constant (not drawn): {consts}", width=40 * ncols)
    fig.suptitle(title, fontsize="medium")
    fig.tight_layout()
    return fig


def loss_curves(history: dict[str, Any], path: str) -> str:
    """Write the train (and validation) metrics per epoch to ``path`` (see ``_loss_figure``).

    Args:
        history: as returned by ``aet.train.fit``.
        path: the PNG to write.

    Returns:
        ``path``.
    """
    return save(_loss_figure(history), path)


# ----------------------------------------------------------------------------- classes and codes


def class_colours(n: int) -> list[tuple[float, float, float, float]]:
    """``n`` distinct RGBA colours for class labels.

    ``tab10`` with its grey replaced by black (grey vanishes on a grey heat map),
    ``tab20`` for up to 20 labels, else ``n`` samples of ``turbo``.
    """
    import matplotlib

    if n <= 10:
        return [(0.0, 0.0, 0.0, 1.0) if k == 7 else matplotlib.colormaps["tab10"](k) for k in range(n)]
    if n <= 20:
        return [matplotlib.colormaps["tab20"](k) for k in range(n)]
    return [matplotlib.colormaps["turbo"](k / (n - 1)) for k in range(n)]


def light_greys() -> Any:
    """A white-to-mid-grey colour map for heat maps under coloured points (the lighter 60 % of ``Greys``)."""
    import matplotlib
    from matplotlib.colors import ListedColormap

    return ListedColormap(matplotlib.colormaps["Greys"](np.linspace(0.0, 0.6, 256)), name="light_greys")


def first_of_each_class(labels: Any, limit: int = MAX_EXAMPLES) -> np.ndarray:
    """Indices of the first example of each label, in label order, for the first ``limit`` labels.

    Args:
        labels: ``(n,)`` labels.
        limit: the most indices returned.

    Returns:
        ``(min(n_labels, limit),)`` integer indices into ``labels``.
    """
    labels = np.asarray(labels)
    if labels.ndim != 1:
        raise ValueError(f"`labels` must have shape (n,), got {labels.shape}")
    _, first = np.unique(labels, return_index=True)
    return first[:limit]


def scatter_classes(
    ax: Any,
    z: np.ndarray,
    labels: np.ndarray,
    *,
    point_size: float = 10.0,
    legend: str = "right",
    zorder: float = 2.5,
) -> list[Any]:
    """Scatter ``z`` ``(n, 2)`` on ``ax`` with one colour and legend entry per label.

    Points have a thin white edge so that they stay visible on a heat map; the
    legend is placed outside the axes (``legend="right"`` of them, or ``"below"``
    them, e.g. when a colour bar takes the right) so that it covers no point.

    Args:
        ax: matplotlib axes.
        z: ``(n, 2)`` points.
        labels: ``(n,)`` labels.
        point_size: marker area.
        legend: ``"right"`` or ``"below"``.
        zorder: drawing order (above a ``pcolormesh`` at 1).

    Returns:
        The ``PathCollection`` of each label, in label order.
    """
    if legend not in ("right", "below"):
        raise ValueError(f"`legend` must be 'right' or 'below', got {legend!r}")
    uniq = np.unique(labels)
    colours = class_colours(len(uniq))
    out = []
    for lab, colour in zip(uniq, colours):
        sel = labels == lab
        out.append(
            ax.scatter(
                z[sel, 0], z[sel, 1], s=point_size, color=colour, label=str(lab),
                edgecolors="white", linewidths=0.3, zorder=zorder,
            )
        )
    if legend == "right":
        ncol = math.ceil(len(uniq) / _LEGEND_MAX_ROWS)
        ax.legend(loc="upper left", bbox_to_anchor=(1.02, 1.0), borderaxespad=0.0, ncol=ncol,
                  title="label", fontsize="small", markerscale=2.5, frameon=False)
    else:
        ncol = min(len(uniq), 10)
        ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.14), borderaxespad=0.0, ncol=ncol,
                  title="label", fontsize="small", markerscale=2.5, frameon=False, columnspacing=0.8)
    return out


def draw_codes(ax: Any, z: np.ndarray, labels: Optional[np.ndarray]) -> None:
    """Scatter ``z[:, :2]`` on ``ax``, coloured by ``labels`` with a legend outside the axes."""
    z = np.asarray(z)
    if z.ndim != 2:
        raise ValueError(f"`z` must have shape (n, latent_dim), got {z.shape}")
    if z.shape[1] == 1:
        z = np.concatenate([z, np.zeros_like(z)], axis=1)
    if labels is None:
        ax.scatter(z[:, 0], z[:, 1], s=6, alpha=0.7)
    else:
        labels = np.asarray(labels)
        if labels.shape != (z.shape[0],):
            raise ValueError(f"`labels` must have shape ({z.shape[0]},), got {labels.shape}")
        scatter_classes(ax, z, labels)
    ax.set_xlabel("z₁")
    ax.set_ylabel("z₂")


def latent_codes(z: np.ndarray, labels: Optional[np.ndarray], path: str, *, title: str = "latent space") -> str:
    """Write a scatter of the codes (first two latent dimensions), coloured by label, to ``path``."""
    fig = new_figure((5.0, 4.5))
    ax = fig.subplots()
    draw_codes(ax, z, labels)
    ax.set_title(title)
    return save(fig, path)


# ----------------------------------------------------------------------------- examples


def _image_reshaper(image_shape: ImageShape, size: int) -> Optional[Callable[[np.ndarray], np.ndarray]]:
    """How to draw one example of ``size`` values: a map to an image ``(h, w)``/``(h, w, c)``, or ``None`` (lines).

    ``"auto"``: a square ``size`` is a square image. ``None``: not an image. A
    shape must hold ``size`` values (``ValueError`` otherwise). Of a 3-D shape,
    the end axis of size 1, 3 or 4 is the channel axis (the smaller end axis if
    both qualify, the last on a tie): ``(h, w, c)`` or ``(c, h, w)``, drawn
    channels-last. Other layouts (e.g. 3-D volumes) are drawn as lines.
    """
    if isinstance(image_shape, str):
        if image_shape != "auto":
            raise ValueError(f"`image_shape` must be a shape, None or 'auto', got {image_shape!r}")
        side = math.isqrt(size)
        return (lambda x: x.reshape(side, side)) if side > 1 and side * side == size else None
    if image_shape is None:
        return None
    shape = tuple(int(s) for s in image_shape)
    if math.prod(shape) != size:
        raise ValueError(f"`image_shape` {shape} holds {math.prod(shape)} values, the examples have {size}")
    if len(shape) == 2:
        return lambda x: x.reshape(shape)
    if len(shape) == 3 and shape[-1] in (1, 3, 4) and (shape[-1] <= shape[0] or shape[0] not in (1, 3, 4)):
        return lambda x: x.reshape(shape).squeeze(-1) if shape[-1] == 1 else x.reshape(shape)
    if len(shape) == 3 and shape[0] in (1, 3, 4):
        return lambda x: x.reshape(shape)[0] if shape[0] == 1 else np.moveaxis(x.reshape(shape), 0, -1)
    return None


def _value_range(rows: list[np.ndarray], value_range: Optional[tuple[float, float]]) -> tuple[float, float]:
    if value_range is not None:
        lo, hi = (float(v) for v in value_range)
    else:
        finite = np.concatenate([r[np.isfinite(r)] for r in rows])
        lo, hi = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 1.0)
    if not (np.isfinite(lo) and np.isfinite(hi) and hi >= lo):
        raise ValueError(f"`value_range` must be finite (low, high) with high >= low, got {value_range!r}")
    return (lo - 0.5, hi + 0.5) if hi == lo else (lo, hi)


def _draw_example(ax: Any, x: np.ndarray, to_image: Optional[Callable], vrange: tuple[float, float]) -> None:
    lo, hi = vrange
    if to_image is None:
        ax.plot(np.arange(x.size), x, lw=1.0, marker="." if x.size <= 32 else None, ms=3)
        ax.set_ylim(lo - 0.05 * (hi - lo), hi + 0.05 * (hi - lo))
        ax.tick_params(labelsize=6, length=2)
        return
    img = to_image(x)
    if img.ndim == 3:  # colour: scale the data's range to [0, 1]
        ax.imshow(np.clip((img - lo) / (hi - lo), 0.0, 1.0), interpolation="nearest")
    else:
        ax.imshow(img, cmap="gray_r", vmin=lo, vmax=hi, interpolation="nearest")
    ax.set_axis_off()


def _image_grid_figure(
    rows: list[np.ndarray],
    row_titles: list[str],
    *,
    title: str = "",
    image_shape: ImageShape = "auto",
    value_range: Optional[tuple[float, float]] = None,
    column_titles: Optional[Sequence[str]] = None,
) -> Figure:
    """The figure of ``image_grid`` (same arguments, no path)."""
    rows = [np.asarray(r, dtype=np.float64).reshape(len(r), -1) for r in rows]
    if not rows or any(len(r) == 0 for r in rows):
        raise ValueError("`rows` must be a non-empty list of non-empty arrays (n, ...)")
    if len({r.shape[1] for r in rows}) != 1:
        raise ValueError(f"every row must hold examples of one size, got {[r.shape[1] for r in rows]}")
    if len(row_titles) != len(rows):
        raise ValueError(f"`row_titles` must have {len(rows)} entries, got {len(row_titles)}")
    size = rows[0].shape[1]
    to_image = _image_reshaper(image_shape, size)
    vrange = _value_range(rows, value_range)
    n = max(len(r) for r in rows)
    if to_image is None:
        cell = (1.35, 1.0)
    else:
        h, w = to_image(rows[0][0]).shape[:2]
        cell = (min(2.7, max(0.45, 0.9 * w / h)), 0.9)
    fig = new_figure((cell[0] * n + 0.8, cell[1] * len(rows) + (0.4 if title else 0.0)))
    axes = fig.subplots(len(rows), n, squeeze=False, sharey=to_image is None)
    for i, (xs, name) in enumerate(zip(rows, row_titles)):
        for j in range(n):
            if j < len(xs):
                _draw_example(axes[i][j], xs[j], to_image, vrange)
            else:
                axes[i][j].set_visible(False)
        if name and to_image is None:
            axes[i][0].set_ylabel(name, fontsize=8)
        elif name:
            axes[i][0].text(-0.08, 0.5, name, transform=axes[i][0].transAxes, ha="right", va="center", fontsize=8)
    if column_titles is not None:
        for j, t in enumerate(list(column_titles)[:n]):
            axes[0][j].set_title(str(t), fontsize=7)
    if title:
        fig.suptitle(title, fontsize="medium")
    return fig


def image_grid(
    rows: list[np.ndarray],
    row_titles: list[str],
    path: str,
    *,
    title: str = "",
    image_shape: ImageShape = "auto",
    value_range: Optional[tuple[float, float]] = None,
    column_titles: Optional[Sequence[str]] = None,
) -> str:
    """Write a grid with one row per array of examples: images for image data, else lines.

    Args:
        rows: arrays ``(n_i, ...)`` of examples of one size ``d``.
        row_titles: a name per row, written left of it.
        path: the PNG to write.
        title: the figure title.
        image_shape: the examples' image shape (e.g. a ``Dataset.image_shape``:
            ``(h, w)``, ``(h, w, c)`` or ``(c, h, w)``); ``None`` for data that are not
            images (one line per example, value against feature index); ``"auto"``
            (default): images when ``d`` is a square, else lines.
        value_range: ``(low, high)`` of the colour scale (images) or the y axis
            (lines); default the range of the values in ``rows``.
        column_titles: a title over each column (e.g. the examples' labels).

    Returns:
        ``path``.
    """
    fig = _image_grid_figure(
        rows, row_titles, title=title, image_shape=image_shape, value_range=value_range, column_titles=column_titles
    )
    return save(fig, path)
