"""Peak memory of one library's training, measured in a fresh process.

Method (CPU): ``python -m benchmarks.memory --lib aetk_jax|pythae --model M
--dataset D --batch-size B [...]`` imports only that library, builds the data
and the model, then reads the resident set size (RSS) of the process from
``/proc/self/statm`` in a background thread every 0.5 ms while it runs

1. the first step (for aetk_jax: tracing, XLA compilation and the first run), and
2. ``--steps`` further steps.

It prints one JSON line: the RSS before phase 1 (``baseline_mb``) and the peak
RSS increase over that baseline in each phase (``first_step_peak_delta_mb``,
``steady_peak_delta_mb``; the steady figure is relative to the RSS at the start
of phase 2, i.e. memory that steps allocate and free again). For aetk_jax it
adds XLA's own accounting of the compiled step (arguments + outputs − aliased
+ temporaries), which is exact for the step's buffers.

Limits: RSS counts pages the process touched, whatever allocated them, so it
includes allocator caches (glibc arenas, torch's CPU caching, XLA's BFC pool on
GPU) and misses peaks shorter than the sampling interval; the sampler thread
needs the GIL, which both libraries release while they compute, but a long
pure-Python stretch can delay a sample. Separate processes make the two
libraries' numbers independent of each other; they are approximate to a few MB.
On a GPU (``--device gpu``) the figures are the devices' own peak counters:
``jax.Device.memory_stats()['peak_bytes_in_use']`` and
``torch.cuda.max_memory_allocated()``.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import threading
import time
from typing import Any, Optional

_PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


def rss_bytes() -> int:
    """Current resident set size of this process (Linux ``/proc/self/statm``)."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * _PAGE


class PeakSampler:
    """Samples RSS in a daemon thread; ``peak`` is the largest value seen since ``start``."""

    def __init__(self, interval_s: float = 5e-4):
        self.interval_s = interval_s
        self.peak = 0
        self._stop = threading.Event()
        self._thread: Optional[threading.Thread] = None

    def start(self) -> "PeakSampler":
        self.peak = rss_bytes()
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, rss_bytes())
            time.sleep(self.interval_s)

    def stop(self) -> int:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        self.peak = max(self.peak, rss_bytes())
        return self.peak


def _mb(b: float) -> float:
    return round(b / 2**20, 2)


def probe(lib: str, model: str, dataset: str, batch_size: int, steps: int, device: str, **changes: Any) -> dict[str, Any]:
    """Run the measurement in this process (call it from a fresh one)."""
    from . import data
    from .config import default_setting

    s = default_setting(model, dataset, batch_size=batch_size, **changes)
    x = data.load(dataset, max(4 * batch_size, s.centroids if model == "rhvae" else 0, 256))
    out: dict[str, Any] = {"lib": lib, "setting": s.to_dict(), "steps": steps, "device": device}
    if lib == "aetk_jax":
        from . import jax_side

        runner: Any = jax_side.JaxRunner(s, x, n_batches=4)
    else:
        from . import torch_side

        runner = torch_side.TorchRunner(s, x, device="cuda" if device == "gpu" else "cpu", n_batches=4)
    base = rss_bytes()
    sampler = PeakSampler().start()
    if lib == "aetk_jax":
        out["compile"] = runner.compile()
    runner.step()
    peak1 = sampler.stop()
    mid = rss_bytes()
    sampler = PeakSampler().start()
    for _ in range(steps):
        runner.step()
    peak2 = sampler.stop()
    out.update(
        method="rss-sampler",
        baseline_mb=_mb(base),
        first_step_peak_delta_mb=_mb(peak1 - base),
        steady_peak_delta_mb=_mb(peak2 - mid),
        end_rss_delta_mb=_mb(rss_bytes() - base),
    )
    if device == "gpu":
        out.update(_gpu_peak(lib))
    return out


def _gpu_peak(lib: str) -> dict[str, Any]:
    if lib == "aetk_jax":
        import jax

        stats = jax.devices()[0].memory_stats() or {}
        return {"gpu_peak_mb": _mb(stats.get("peak_bytes_in_use", 0))}
    import torch

    return {"gpu_peak_mb": _mb(torch.cuda.max_memory_allocated())}


def run_probe(lib: str, model: str, dataset: str, batch_size: int, steps: int, device: str, timeout_s: float = 600.0,
              **changes: Any) -> dict[str, Any]:
    """Run :func:`probe` in a fresh interpreter and return its JSON (or an error record)."""
    cmd = [sys.executable, "-m", "benchmarks.memory", "--lib", lib, "--model", model, "--dataset", dataset,
           "--batch-size", str(batch_size), "--steps", str(steps), "--device", device]
    for k, v in changes.items():
        cmd += ["--set", f"{k}={v}"]
    env = dict(os.environ)
    if device == "cpu":
        env["JAX_PLATFORMS"] = "cpu"
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    try:
        res = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s, env=env, cwd=root)
    except subprocess.TimeoutExpired:
        return {"lib": lib, "error": f"timed out after {timeout_s} s"}
    lines = [ln for ln in res.stdout.splitlines() if ln.startswith("{")]
    if res.returncode != 0 or not lines:
        return {"lib": lib, "error": (res.stderr or res.stdout)[-2000:]}
    return json.loads(lines[-1])


def main(argv: Optional[list[str]] = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--lib", choices=("aetk_jax", "pythae"), required=True)
    p.add_argument("--model", required=True)
    p.add_argument("--dataset", default="mnist-synthetic")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--device", choices=("cpu", "gpu"), default="cpu")
    p.add_argument("--set", action="append", default=[], help="extra Setting field, e.g. n_fixed_point=1")
    a = p.parse_args(argv)
    changes: dict[str, Any] = {}
    for item in a.set:
        k, v = item.split("=", 1)
        changes[k] = int(v) if v.lstrip("-").isdigit() else float(v)
    if a.device == "cpu":
        os.environ.setdefault("JAX_PLATFORMS", "cpu")
    print(json.dumps(probe(a.lib, a.model, a.dataset, a.batch_size, a.steps, a.device, **changes)))


if __name__ == "__main__":
    main()
