"""Every documentation example runs (small budget) and prints the numbers its page describes."""
from __future__ import annotations

import math
import os
import re
import runpy
import sys

import pytest

EXAMPLES = os.path.join(os.path.dirname(__file__), "..", "docs", "examples")
FIGURES = os.path.join(EXAMPLES, "figures")
DOCS = os.path.join(EXAMPLES, "..")
SCRIPTS = sorted(f for f in os.listdir(EXAMPLES) if f.endswith(".py") and not f.startswith("_"))


@pytest.mark.slow
@pytest.mark.parametrize("script", SCRIPTS)
def test_example_runs(script, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("AETK_EXAMPLE_OUT", str(tmp_path))
    monkeypatch.setenv("AETK_EXAMPLE_EPOCHS", "2")
    monkeypatch.syspath_prepend(EXAMPLES)
    sys.modules.pop("_common", None)
    runpy.run_path(os.path.join(EXAMPLES, script), run_name="__main__")
    out = capsys.readouterr().out
    numbers = [float(v) for v in re.findall(r"-?\d+\.\d+", out)]
    assert numbers, f"{script} printed no numbers:\n{out}"
    assert all(math.isfinite(v) for v in numbers), out
    for png in os.listdir(tmp_path):  # every figure is a real image, and the docs carry it
        assert os.path.getsize(tmp_path / png) > 2000, png
        assert os.path.isfile(os.path.join(FIGURES, png)), (
            f"{script} writes {png}, which is not in docs/examples/figures: run `python docs/examples/{script}`"
        )
    if script == "vae_digits.py":  # the importance-sampled log-likelihood is at least the ELBO
        rows = re.findall(r"(\w+): held-out ELBO (-?\d+\.\d+), log-likelihood (-?\d+\.\d+)", out)
        assert len(rows) == 2, out
        for name, elbo, ll in rows:
            assert float(ll) >= float(elbo) - 0.1, (name, elbo, ll)
            assert -60.0 < float(elbo) < 0.0, (name, elbo)



def test_pages_embed_every_committed_figure_and_nothing_missing():
    """Every image a page links exists; every committed example figure is shown on some page."""
    shown = set()
    for root, _, files in os.walk(DOCS):
        for name in files:
            if not name.endswith(".md"):
                continue
            page = os.path.join(root, name)
            with open(page, encoding="utf-8") as f:
                text = f.read()
            for target in re.findall(r"!\[[^\]]*\]\(([^)\s]+)\)", text):
                path = os.path.normpath(os.path.join(root, target))
                assert os.path.isfile(path), f"{os.path.relpath(page, DOCS)} links a missing image {target}"
                shown.add(path)
    committed = {os.path.normpath(os.path.join(FIGURES, f)) for f in os.listdir(FIGURES) if f.endswith(".png")}
    assert committed, "no example figures committed"
    assert committed <= shown, sorted(os.path.basename(p) for p in committed - shown)
