"""``fit``'s compile excess in a fresh process, with JAX's persistent compilation cache.

A researcher who reruns a configuration (same model, shapes and hyper-parameters) pays
XLA's compile once if JAX's persistent compilation cache is on (``JAX_COMPILATION_CACHE_DIR``
or ``jax.config.update("jax_compilation_cache_dir", ...)``): later processes load the
compiled epoch from disk. :func:`measure` runs :meth:`JaxRunner.fit_compile` in two fresh
processes sharing an empty cache directory: the first compiles and writes the cache (a cold
process, the same quantity as the in-process row), the second reads it (a rerun). The
child processes inherit the benchmark's core pinning and thread settings.

Run by ``benchmarks.run`` for the ``digits-b64`` rows; by hand:
``python -m benchmarks.compile_cache vae digits-b64 1472``.
"""
from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from typing import Any


def _child(model: str, dataset: str, n: int, cache_dir: str) -> dict[str, Any]:
    import jax

    jax.config.update("jax_compilation_cache_dir", cache_dir)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
    from . import data
    from .config import default_setting
    from .jax_side import JaxRunner

    s = default_setting(model, dataset)
    x = data.load(dataset, n)
    x = x[: (len(x) // s.batch_size) * s.batch_size]
    return JaxRunner(s, x).fit_compile(x)


def measure(model: str, dataset: str, n: int, timeout_s: float = 600.0) -> dict[str, Any]:
    """``{"cold": fit_compile of the first process, "warm": of the second}`` (each a
    :meth:`JaxRunner.fit_compile` dict), or ``{"error": ...}``."""
    with tempfile.TemporaryDirectory(prefix="aetk-bench-cache-") as cache:
        out: dict[str, Any] = {}
        for run in ("cold", "warm"):
            p = subprocess.run([sys.executable, "-m", "benchmarks.compile_cache", model, dataset, str(n), cache],
                               capture_output=True, text=True, timeout=timeout_s)
            if p.returncode != 0:
                return {"error": (p.stderr or p.stdout)[-2000:]}
            out[run] = json.loads(p.stdout.strip().splitlines()[-1])
        return out


if __name__ == "__main__":
    model, dataset, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
    if len(sys.argv) > 4:
        print(json.dumps(_child(model, dataset, n, sys.argv[4])))
    else:
        print(json.dumps(measure(model, dataset, n), indent=1))
