"""How XLA's CPU thread settings and core pinning change ``fit``'s epoch, on an idle and a busy machine.

Each configuration runs in a fresh process (XLA reads its flags and the process its
affinity before JAX starts), which compiles ``fit``'s epoch (``aet.train.make_epoch``, as
:class:`benchmarks.jax_side.JaxRunner` does) for each setting and reports the median wall
time of its epochs:

* ``default`` — no pinning, XLA's own thread settings (what a user gets);
* ``pinned`` — the process pinned to core 0 (``taskset -c 0``), XLA's settings;
* ``pinned, 1 thread`` — pinned, and ``--xla_cpu_multi_thread_eigen=false
  intra_op_parallelism_threads=1`` (what ``benchmarks.run --threads 1`` uses);
* ``1 thread`` — those flags without pinning.

``busy``: the same, while another process spins on the machine's last core (a neighbour
on a shared 2-core machine). The configurations alternate in ``rounds`` rounds and each
cell is the median over its rounds. Settings: the VAE on digits-b64 (batch 64, hidden
128) and on MNIST-sized data (784 features, hidden 512-256, batch 128), and the RHVAE on
digits-b64 (with its end-of-epoch metric update).

``python -m benchmarks.threads --out benchmarks/results`` writes ``threads-cpu.json`` and
``threads-cpu.md``.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import subprocess
import sys
import time
from typing import Any, Optional

CONFIGS = {
    "default": {"pin": False, "flags": ""},
    "pinned": {"pin": True, "flags": ""},
    "pinned, 1 thread": {"pin": True, "flags": "--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1"},
    "1 thread": {"pin": False, "flags": "--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1"},
}
SETTINGS = [("vae", "digits-b64", 1438, 15), ("vae", "mnist-synthetic", 2048, 6), ("rhvae", "digits-b64", 1438, 8)]


def _child(settings: list[tuple[str, str, int, int]]) -> dict[str, float]:
    """Median ms of ``fit``'s compiled epoch for each setting (run in the configured process), and
    ``"cores"``, the number of cores the process may run on."""
    import numpy as np

    from . import data
    from .config import default_setting
    from .jax_side import JaxRunner

    out = {"cores": float(len(os.sched_getaffinity(0)))}  # what the configuration left this process
    for model, dataset, n, epochs in settings:
        s = default_setting(model, dataset)
        x = data.load(dataset, n)
        runner = JaxRunner(s, x)
        runner.compile_epoch(x)
        runner.epoch(-1)
        out[f"{model} {dataset}"] = float(np.median([runner.epoch(e)[0] for e in range(epochs)]) * 1e3)
    return out


def _run_config(name: str, settings: list[tuple[str, str, int, int]], timeout_s: float) -> dict[str, float]:
    cfg = CONFIGS[name]
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    env["XLA_FLAGS"] = " ".join(f for f in (os.environ.get("XLA_FLAGS", ""), cfg["flags"]) if f)
    code = ("import json, os, sys\n"
            f"if {cfg['pin']!r}: os.sched_setaffinity(0, {{sorted(os.sched_getaffinity(0))[0]}})\n"
            "from benchmarks.threads import _child\n"
            f"print('RESULT ' + json.dumps(_child({settings!r})))\n")
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    proc = subprocess.run([sys.executable, "-c", code], cwd=root, env=env, capture_output=True, text=True,
                          timeout=timeout_s)
    line = next((ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")), None)
    if proc.returncode != 0 or line is None:
        raise RuntimeError(f"configuration {name!r} failed: {proc.stderr.strip().splitlines()[-1:]}")
    return json.loads(line[len("RESULT "):])


class _Spinner:
    """A busy neighbour: a process spinning on the last usable core while the block runs."""

    def __enter__(self) -> "_Spinner":
        self.proc = subprocess.Popen([sys.executable, "-c", "while True: pass"])
        cores = sorted(os.sched_getaffinity(0))
        if len(cores) > 1:
            os.sched_setaffinity(self.proc.pid, {cores[-1]})
        time.sleep(0.5)
        return self

    def __exit__(self, *exc: Any) -> None:
        self.proc.kill()
        self.proc.wait()


def measure(rounds: int = 2, settings: Optional[list[tuple[str, str, int, int]]] = None,
            timeout_s: float = 600.0) -> dict[str, Any]:
    """``{"cells": {load: {config: {setting: median ms}}}, "all": ..., ...}`` over ``rounds`` rounds."""
    from .report import load_average, machine_info

    settings = settings or SETTINGS
    runs: dict[str, dict[str, list[dict[str, float]]]] = {"idle": {c: [] for c in CONFIGS},
                                                          "busy": {c: [] for c in CONFIGS}}
    info = {**machine_info(), "load_average_start": load_average()}
    for _ in range(rounds):
        for load in ("idle", "busy"):
            for name in CONFIGS:
                with _Spinner() if load == "busy" else contextlib.nullcontext():
                    runs[load][name].append(_run_config(name, settings, timeout_s))
    info["load_average_end"] = load_average()
    keys = [f"{m} {d}" for m, d, _, _ in settings]
    cells = {load: {c: {k: statistics.median(r[k] for r in rs) for k in keys} for c, rs in by.items()}
             for load, by in runs.items()}
    return {"machine": info, "rounds": rounds, "settings": [list(s) for s in settings], "configs": CONFIGS,
            "cells": cells, "all": runs}


def markdown(res: dict[str, Any]) -> str:
    keys = [f"{m} {d}" for m, d, _, _ in res["settings"]]
    m = res["machine"]
    lines = [f"# CPU threads and pinning: `fit`'s epoch ({m.get('cpu')}, {m.get('logical_cpus')} cores)", "",
             f"`python -m benchmarks.threads`, {m.get('date_utc')}; median ms an epoch over {res['rounds']} rounds, each "
             f"configuration a fresh process; load average start/end {m.get('load_average_start')} / "
             f"{m.get('load_average_end')}. busy: another process spins on the last core.", "",
             "| load | configuration | " + " | ".join(keys) + " |", "| --- | --- | " + " | ".join("---" for _ in keys) + " |"]
    for load, by in res["cells"].items():
        base = by["default"]
        for name, cell in by.items():
            vals = [f"{cell[k]:.1f} ({cell[k] / base[k]:.2f}×)" for k in keys]
            lines.append(f"| {load} | {name} | " + " | ".join(vals) + " |")
    lines += ["", "In parentheses: the time over the same load's `default`."]
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--out", default=None, help="write threads-cpu.json/.md into this folder")
    args = ap.parse_args()
    res = measure(args.rounds)
    md = markdown(res)
    print(md)
    if args.out:
        os.makedirs(args.out, exist_ok=True)
        with open(os.path.join(args.out, "threads-cpu.json"), "w") as f:
            json.dump(res, f, indent=1)
        with open(os.path.join(args.out, "threads-cpu.md"), "w") as f:
            f.write(md)


if __name__ == "__main__":
    main()
