"""The run plots: readable loss grids, images only for image data, one example per class, no backend change."""
from __future__ import annotations

import io
import re
import os
import subprocess
import sys

import numpy as np
import pytest

pytest.importorskip("matplotlib")

from matplotlib.image import AxesImage, imread  # noqa: E402

from aetk_jax import plots  # noqa: E402

# ------------------------------------------------------------------------------ loss curves


def _history(n_epochs: int = 4) -> dict:
    """A history like an RHVAE's: 10 metrics, two of them constant, one near 1000 (offset-label bait)."""
    rng = np.random.default_rng(0)
    t = np.arange(n_epochs, dtype=float)
    train = {
        "loss": list(40 - 3 * t),
        "elbo": list(-40 + 3 * t),
        "kl": list(1 + 0.1 * t),
        "loglikelihood": list(-39 + 3 * t),
        "logdet": [-1.2] * n_epochs,
        "converged": [1.0] * n_epochs,
        "fixed_point_residual": list(1e-8 * (1 + rng.uniform(size=n_epochs))),  # tiny, not constant
        "logprior": list(1000.001 + 1e-3 * t),  # changes by 3e-6 relative: not constant
        "logq": list(-2.5 + 0.1 * t),
        "logp_momentum": list(-2 + 0.2 * t),
        "grad_norm": list(10 - t),
    }
    val = {k: list(np.asarray(v) + 0.5) for k, v in train.items() if k not in ("grad_norm", "logdet", "converged")}
    val.update(logdet=[-1.2] * n_epochs, converged=[1.0] * n_epochs, logprior=list(1000.0015 + 1e-3 * t),
               fixed_point_residual=list(0.9 * np.asarray(train["fixed_point_residual"])))
    return {"epoch": list(range(n_epochs)), "train": train, "val": val}


def test_loss_png_of_ten_metrics_is_at_most_1800_px_wide(tmp_path):
    path = plots.loss_curves(_history(), str(tmp_path / "loss.png"))
    h, w = imread(path).shape[:2]
    assert w <= 1800 and h <= 1800, (w, h)  # the old single row was ~4800 px wide


def test_loss_figure_grid_leaves_out_constant_series_and_labels_axes():
    fig = plots._loss_figure(_history())
    axes = [ax for ax in fig.axes if ax.get_visible()]
    titles = [ax.get_title() for ax in axes]
    # loss first, the 7 changing metrics, no grad_norm, no constants
    assert titles == ["loss", "elbo", "kl", "loglikelihood", "fixed_point_residual", "logprior", "logq", "logp_momentum"]
    assert max(ax.get_subplotspec().get_gridspec().ncols for ax in axes) <= 3
    suptitle = fig._suptitle.get_text()
    assert "logdet = -1.2" in suptitle and "converged = 1" in suptitle
    assert all(ax.get_ylabel() == ax.get_title() for ax in axes)
    fig.savefig(io.BytesIO(), format="png")  # draw: tick labels and offset texts are computed
    for ax in axes:
        assert ax.yaxis.get_offset_text().get_text() == "", ax.get_title()  # no "+1e3" / "1e-5" artefacts
    labels = [t.get_text() for t in axes[5].get_yticklabels()]  # logprior near 1000.001
    assert any(lab.startswith("1000.00") for lab in labels), labels
    labels = [t.get_text() for t in axes[4].get_yticklabels()]  # fixed_point_residual near 1e-8
    assert all(re.fullmatch(r"[0-9.]+e-0[89]", lab) for lab in labels), labels  # each tick its own exponent


def test_loss_figure_of_one_epoch_drops_nothing():
    fig = plots._loss_figure(_history(n_epochs=1))
    assert len([ax for ax in fig.axes if ax.get_visible()]) == 10  # one value is not "constant"
    assert "constant" not in fig._suptitle.get_text()
    # no epoch at all (a run interrupted in its first): a note, not an error
    fig = plots._loss_figure({"epoch": [], "train": {}, "val": {}})
    assert [t.get_text() for t in fig.axes[0].texts] == ["no epochs recorded"]


# ------------------------------------------------------------------------------ examples


def _standardised(n=6, d=64, seed=1):
    x = np.random.default_rng(seed).normal(size=(n, d))
    return (x - x.mean(0)) / x.std(0)


def test_image_data_are_drawn_on_the_datas_own_range():
    x = _standardised()
    fig = plots._image_grid_figure([x, 0.5 * x], ["data", "reconstruction"], image_shape=(8, 8))
    images = [im for ax in fig.axes for im in ax.get_images()]
    assert len(images) == 12
    for im in images:
        assert im.get_array().shape == (8, 8)
        np.testing.assert_allclose(im.get_clim(), (x.min(), x.max()))  # not clipped to [0, 1]
    fig = plots._image_grid_figure([x], ["data"], image_shape=(8, 8), value_range=(-5.0, 7.0))
    assert fig.axes[0].get_images()[0].get_clim() == (-5.0, 7.0)
    with pytest.raises(ValueError, match="image_shape"):
        plots._image_grid_figure([x], ["data"], image_shape=(4, 4))
    # colour images, channels last or first, are scaled from the data's range to [0, 1]
    rgb = np.random.default_rng(5).normal(size=(2, 4, 4, 3))
    for shape, xs in (((4, 4, 3), rgb), ((3, 4, 4), np.moveaxis(rgb, -1, 1))):
        fig = plots._image_grid_figure([xs.reshape(2, -1)], ["data"], image_shape=shape)
        img = np.asarray(fig.axes[0].get_images()[0].get_array())
        np.testing.assert_allclose(img, (rgb[0] - rgb.min()) / np.ptp(rgb), atol=1e-12)


def test_non_image_data_are_drawn_as_lines():
    x = _standardised(n=4, d=5)
    for shape in (None, "auto"):  # 5 features: no image shape, not a square
        fig = plots._image_grid_figure([x], ["data"], image_shape=shape)
        assert not any(isinstance(a, AxesImage) for ax in fig.axes for a in ax.get_children())
        for ax, row in zip(fig.axes, x):
            (line,) = ax.get_lines()
            np.testing.assert_allclose(line.get_ydata(), row)
            lo, hi = ax.get_ylim()
            assert lo <= x.min() and hi >= x.max()
    # 64 standardised features that are not images: lines too, when the data say so
    fig = plots._image_grid_figure([_standardised()], ["data"], image_shape=None)
    assert not any(ax.get_images() for ax in fig.axes)


def test_first_of_each_class():
    labels = np.array([3, 3, 1, 0, 1, 2, 0, 3])
    np.testing.assert_array_equal(plots.first_of_each_class(labels), [3, 2, 5, 0])
    np.testing.assert_array_equal(plots.first_of_each_class(labels, limit=2), [3, 2])
    many = np.repeat(np.arange(12), 2)[::-1]
    idx = plots.first_of_each_class(many)
    assert len(idx) == 10 and list(many[idx]) == list(range(10))


def _calls(monkeypatch):
    seen = []
    real = plots.image_grid

    def spy(rows, row_titles, path, **kw):
        seen.append((os.path.basename(path), [np.asarray(r) for r in rows], kw))
        return real(rows, row_titles, path, **kw)

    monkeypatch.setattr(plots, "image_grid", spy)
    return seen


@pytest.mark.parametrize("image", [True, False])
def test_run_plots_reconstructs_one_example_per_class(tmp_path, monkeypatch, image):
    import jax

    from aetk_jax import builders, data
    from aetk_jax.run_plots import run_plots

    rng = np.random.default_rng(2)
    d = 16 if image else 5
    x = rng.uniform(size=(40, d)).astype(np.float32)
    y = np.array([4, 4, 2, 0, 2, 7, 0, 4] * 5, np.int32)
    shape = (4, 4) if image else None
    train = data.Dataset(x[:24], y[:24], "t", shape)
    val = data.Dataset(x[24:], y[24:], "v", shape)
    recipe = builders.build("vae", (d,), hidden=(8,))
    variables = recipe.model.init(jax.random.key(0), train.x[:1])
    history = {"epoch": [0, 1], "train": {"loss": [2.0, 1.0]}, "val": {"loss": [2.5, 1.5]}}
    seen = _calls(monkeypatch)
    paths = run_plots(recipe, variables, train, val, history, str(tmp_path), jax.random.key(1))
    assert sorted(os.path.basename(p) for p in paths) == [
        "fisher_metric.png", "latent.png", "loss.png", "reconstructions.png", "samples.png"]
    name, rows, kw = seen[0]
    assert name == "reconstructions.png"
    np.testing.assert_array_equal(rows[0], val.x[[3, 2, 0, 5]])  # first 0, 2, 4, 7 of the validation labels
    assert kw["column_titles"] == ["label 0", "label 2", "label 4", "label 7"]
    assert kw["image_shape"] == shape
    np.testing.assert_allclose(kw["value_range"], (train.x.min(), train.x.max()))


# ------------------------------------------------------------------------------ no global state


def test_importing_and_plotting_leaves_the_backend_alone(tmp_path):
    code = (
        "import sys, matplotlib\n"
        "before = matplotlib.get_backend()\n"
        "import aetk_jax.plots, aetk_jax.geometry_plots, aetk_jax.run_plots\n"
        "history = {'epoch': [0, 1], 'train': {'loss': [2.0, 1.0]}, 'val': {}}\n"
        f"aetk_jax.plots.loss_curves(history, {str(tmp_path / 'l.png')!r})\n"
        "print(before, matplotlib.get_backend(), 'matplotlib.pyplot' in sys.modules)\n"
    )
    env = dict(os.environ, JAX_PLATFORMS="cpu", MPLBACKEND="svg")  # a user's (non-Agg) choice
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["svg", "svg", "False"]
    assert imread(str(tmp_path / "l.png")).shape[1] > 100  # a PNG, written without pyplot


# ------------------------------------------------------------------------------ classes on the metric plot


def _legend_is_outside(fig, ax) -> bool:
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    renderer = FigureCanvasAgg(fig).get_renderer()
    fig.draw(renderer)
    leg, box = ax.get_legend().get_window_extent(renderer), ax.get_window_extent(renderer)
    return not leg.overlaps(box)


@pytest.mark.parametrize("n_classes", [3, 25])
def test_plot_latent_metric_draws_every_class(n_classes):
    from matplotlib.collections import PathCollection
    from matplotlib.colors import to_hex
    from matplotlib.figure import Figure

    from aetk_jax import geometry_plots

    rng = np.random.default_rng(0)
    codes = rng.normal(size=(400, 2))
    labels = np.arange(400) % n_classes
    X, Y = np.meshgrid(np.linspace(-4, 4, 20), np.linspace(-4, 4, 20))
    fig = Figure(figsize=(6, 5))
    ax = fig.subplots()
    mesh = geometry_plots.plot_latent_metric(ax, (X, Y, X**2 + Y), codes, labels=labels)
    points = [c for c in ax.collections if isinstance(c, PathCollection)]
    assert [p.get_label() for p in points] == [str(k) for k in range(n_classes)]
    colours = {to_hex(p.get_facecolor()[0]) for p in points}
    assert len(colours) == n_classes  # one distinct colour per class
    assert ax.get_legend() is not None
    assert [t.get_text() for t in ax.get_legend().get_texts()] == [str(k) for k in range(n_classes)]
    assert _legend_is_outside(fig, ax)  # the legend covers no point
    assert all(p.get_zorder() >= mesh.get_zorder() for p in points)  # drawn on top of the heat map
    assert "#7f7f7f" not in colours  # tab10's grey would vanish on the grey heat map
