"""Scaling curves: step time against one axis per figure, both libraries, log-log."""
from __future__ import annotations

import os
from typing import Any

AXIS_LABEL = {
    "batch_size": "batch size",
    "latent_dim": "latent dimension",
    "K": "leapfrog steps K",
    "n_centroids": "RHVAE centroids (aetk_jax metric_source='centroids')",
}
COLORS = {"vae": "tab:blue", "betavae": "tab:cyan", "mmdvae": "tab:purple", "hvae": "tab:orange", "rhvae": "tab:red"}


def scaling_figures(results: dict[str, Any], stem: str) -> list[str]:
    """One PNG per scaling axis, ``<stem>-scaling-<axis>.png``; returns the paths written."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    pts = [p for p in results.get("scaling", []) if p.get("value") is not None]
    paths = []
    for axis in dict.fromkeys(p["axis"] for p in pts):
        fig, ax = plt.subplots(figsize=(6.4, 4.4))
        for model in dict.fromkeys(p["model"] for p in pts if p["axis"] == axis):
            rows = sorted((p for p in pts if p["axis"] == axis and p["model"] == model), key=lambda p: p["value"])
            for lib, style in (("aetk_jax", "-o"), ("pythae", "--s")):
                xy = [(p["value"], p[f"{lib}_ms"]) for p in rows if p.get(f"{lib}_ms") is not None]
                if xy:
                    ax.plot(*zip(*xy), style, color=COLORS.get(model, "k"), label=f"{model} {lib}", ms=4)
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel(AXIS_LABEL.get(axis, axis))
        ax.set_ylabel("training step time (ms, median)")
        title = f"{results.get('suite')} suite, {results.get('device_name', results.get('device'))}"
        if isinstance(results.get("threads"), int):
            title += f", {results['threads']} thread(s) per library"
        ax.set_title(title, fontsize=9)
        notes = []
        if any(p["model"] == "rhvae" and p["axis"] == axis for p in pts):
            notes.append("RHVAE: aetk_jax n_fixed_point=5 (implicit leapfrog); pythae: explicit position update")
        if any("shared" in n for n in results.get("notes", [])):
            notes.append("measured on a shared machine")
        if notes:
            fig.text(0.01, 0.01, "\n".join(notes), fontsize=7, va="bottom")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=7, ncol=2)
        fig.tight_layout(rect=(0, 0.05 * len(notes), 1, 1))
        path = f"{stem}-scaling-{axis}.png"
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        fig.savefig(path, dpi=110)
        plt.close(fig)
        paths.append(path)
    return paths
