"""Every documentation example runs (small budget) and prints the numbers its page describes."""
from __future__ import annotations

import math
import os
import re
import runpy
import sys

import pytest

EXAMPLES = os.path.join(os.path.dirname(__file__), "..", "docs", "examples")
SCRIPTS = sorted(f for f in os.listdir(EXAMPLES) if f.endswith(".py") and not f.startswith("_"))


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
    for png in os.listdir(tmp_path):  # every figure is a real image
        assert os.path.getsize(tmp_path / png) > 2000, png
    if script == "vae_digits.py":  # the importance-sampled log-likelihood is at least the ELBO
        rows = re.findall(r"(\w+): held-out ELBO (-?\d+\.\d+), log-likelihood (-?\d+\.\d+)", out)
        assert len(rows) == 2, out
        for name, elbo, ll in rows:
            assert float(ll) >= float(elbo) - 0.1, (name, elbo, ll)
            assert -60.0 < float(elbo) < 0.0, (name, elbo)

