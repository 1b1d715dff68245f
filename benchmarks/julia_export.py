"""Write the Julia benchmark's inputs: the suite's settings and the exact data arrays.

``python -m benchmarks.julia_export --suite quick [--out benchmarks/julia/input]`` writes

* ``config.json``: the suite (warm-up, rounds, steps, epochs) and one entry per
  (model, data set) with the same fields as :class:`benchmarks.config.Setting`;
* ``<dataset>.f32``: the float32 data, row-major ``(n, input_dim)`` (read in Julia
  as a column-major ``(input_dim, n)`` matrix, i.e. one example per column);
* ``shapes.json``: ``{dataset: [n, input_dim]}``.

``benchmarks/julia/bench.jl`` reads them, so both languages see identical
configurations and data.
"""
from __future__ import annotations

import argparse
import json
import os
from typing import Any, Optional, Sequence

import numpy as np

from . import data
from .config import default_setting, get_suite

DEFAULT_OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "julia", "input")


def export(suite_name: str, out: str) -> dict[str, Any]:
    suite = get_suite(suite_name)
    os.makedirs(out, exist_ok=True)
    shapes: dict[str, list[int]] = {}
    settings = []
    for ds in suite.datasets:
        n = max(suite.epoch_examples.get(ds, 4096), 16 * 128)
        x = np.ascontiguousarray(data.load(ds, n), dtype=np.float32)
        x.tofile(os.path.join(out, f"{ds}.f32"))
        shapes[ds] = [int(x.shape[0]), int(x.shape[1])]
        for model in suite.models:
            s = default_setting(model, ds)
            settings.append(s.to_dict())
    cfg = {"suite": suite.to_dict(), "settings": settings}
    with open(os.path.join(out, "config.json"), "w") as f:
        json.dump(cfg, f, indent=1)
    with open(os.path.join(out, "shapes.json"), "w") as f:
        json.dump(shapes, f)
    return cfg


def main(argv: Optional[Sequence[str]] = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--suite", choices=("quick", "full", "tiny"), default="quick")
    p.add_argument("--out", default=DEFAULT_OUT)
    a = p.parse_args(argv)
    cfg = export(a.suite, a.out)
    print(f"wrote {len(cfg['settings'])} settings and the data to {a.out}")


if __name__ == "__main__":
    main()
