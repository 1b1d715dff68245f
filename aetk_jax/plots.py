"""Matplotlib figures for a training run: loss curves, latent space, reconstructions, samples.

Imported only by the CLI and the examples (``import aetk_jax`` does not import
matplotlib). Every function writes one PNG and returns its path.
"""
from __future__ import annotations

import math
import os
from typing import Any, Optional

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402


def _save(fig: Any, path: str) -> str:
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path, dpi=120, bbox_inches="tight")
    plt.close(fig)
    return path


def loss_curves(history: dict[str, Any], path: str) -> str:
    """Train (and validation) loss per epoch, plus every other shared metric in small panels."""
    train, val = history.get("train", {}), history.get("val", {})
    keys = ["loss"] + [k for k in train if k not in ("loss", "grad_norm") and k in val]
    n = len(keys)
    fig, axes = plt.subplots(1, n, figsize=(4 * n, 3.2), squeeze=False)
    for ax, k in zip(axes[0], keys):
        ax.plot(history["epoch"], train[k], label="train")
        if k in val:
            ax.plot(history["epoch"], val[k], label="validation")
        ax.set_xlabel("epoch")
        ax.set_title(k)
        ax.legend()
    fig.tight_layout()
    return _save(fig, path)


def latent_codes(z: np.ndarray, labels: Optional[np.ndarray], path: str, *, title: str = "latent space") -> str:
    """Scatter of the encoder means (first two latent dimensions), coloured by label."""
    fig, ax = plt.subplots(figsize=(5, 4.5))
    draw_codes(ax, z, labels)
    ax.set_title(title)
    return _save(fig, path)


def draw_codes(ax: Any, z: np.ndarray, labels: Optional[np.ndarray]) -> None:
    """Scatter ``z[:, :2]`` on ``ax`` coloured by ``labels`` (with a legend of the classes)."""
    z = np.asarray(z)
    if z.shape[1] == 1:
        z = np.concatenate([z, np.zeros_like(z)], axis=1)
    if labels is None:
        ax.scatter(z[:, 0], z[:, 1], s=6, alpha=0.7)
    else:
        sc = ax.scatter(z[:, 0], z[:, 1], c=labels, cmap="tab10", s=6, alpha=0.8)
        ax.legend(*sc.legend_elements(), fontsize=6, loc="best", markerscale=0.7)
    ax.set_xlabel("z₁")
    ax.set_ylabel("z₂")


def _as_images(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x).reshape(x.shape[0], -1)
    side = int(round(math.sqrt(x.shape[1])))
    if side * side == x.shape[1]:
        return x.reshape(-1, side, side)
    return x.reshape(x.shape[0], 1, -1)  # a strip for non-square data


def image_grid(rows: list[np.ndarray], row_titles: list[str], path: str, *, title: str = "") -> str:
    """A grid with one row per array of examples (images when the size is a square)."""
    rows = [_as_images(r) for r in rows]
    n = max(len(r) for r in rows)
    fig, axes = plt.subplots(len(rows), n, figsize=(n * 0.9, len(rows) * 1.0), squeeze=False)
    for i, (imgs, name) in enumerate(zip(rows, row_titles)):
        for j in range(n):
            ax = axes[i][j]
            ax.axis("off")
            if j < len(imgs):
                ax.imshow(imgs[j], cmap="gray_r", vmin=0.0, vmax=1.0, aspect="auto")
        axes[i][0].set_title(name, fontsize=7, loc="left")
    if title:
        fig.suptitle(title)
    return _save(fig, path)
