"""What a non-finite guard costs a step, by where it decides: after the update or before it.

Three bare flax/optax scans of the same VAE (:class:`benchmarks.jax_side._MinimalVAE`, Adam;
:func:`benchmarks.jax_side.minimal_scan`), each step computing the loss and its gradient, then:

* ``bare`` — the optax update, unconditionally (no guard);
* ``select`` — the update, then the gradient's global norm and ``ok = isfinite(loss) ∧
  isfinite(‖g‖)`` pick the new or the old parameters and Adam moments leaf by leaf
  (``optax.tree.where``): what ``make_epoch`` did before it passed its policy as ``accept``;
* ``cond`` — the norm and ``ok`` first, then the update under ``lax.cond(ok, update, identity)``:
  what ``make_step``'s step does with ``accept`` (``aet.train.make_step``).

Each is one compiled ``lax.scan`` over the data in order; the three are timed in interleaved
rounds and reported as milliseconds per step (median over rounds). Run it pinned to one core:
``taskset -c 0 python -m benchmarks.guard_cost [dataset]`` (``mnist-synthetic`` by default;
``--out DIR`` writes ``guard_cost-<dataset>.json``/``.md`` there).
"""
from __future__ import annotations

import argparse
import json
import os
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from .jax_side import MINIMAL_GUARDS as VARIANTS
from .jax_side import _MinimalVAE, minimal_scan


def measure(dataset: str = "mnist-synthetic", n: int = 4096, rounds: int = 7) -> dict[str, Any]:
    """Median ms per step of each variant (the first round is a warm-up), with the setting."""
    from . import data
    from .config import default_setting

    s = default_setting("vae", dataset)
    x = np.asarray(data.load(dataset, n), np.float32)
    nb = len(x) // s.batch_size
    xb = jnp.asarray(x[: nb * s.batch_size].reshape(nb, s.batch_size, -1))
    net = _MinimalVAE(tuple(s.hidden), s.latent_dim, s.input_dim)
    key = jax.random.key(0)
    params = jax.jit(net.init)(key, xb[0], key)
    opt = optax.adam(s.learning_rate)
    compiled = {v: minimal_scan(net, opt, v).lower(params, opt.init(params), xb, key).compile() for v in VARIANTS}
    times: dict[str, list[float]] = {v: [] for v in VARIANTS}
    for r in range(rounds):
        for v in VARIANTS:
            t0 = time.perf_counter()
            jax.block_until_ready(compiled[v](params, opt.init(params), xb, jax.random.key(r)))
            times[v].append((time.perf_counter() - t0) * 1e3 / nb)
    med = {v: float(np.median(ts[1:])) for v, ts in times.items()}
    return {"dataset": dataset, "batch_size": s.batch_size, "hidden": list(s.hidden), "steps_per_epoch": nb,
            "rounds": rounds, "ms_per_step": med, "all_ms_per_step": times,
            "load_average": list(os.getloadavg()), "device": jax.devices()[0].device_kind}


def markdown(res: dict[str, Any]) -> str:
    bare = res["ms_per_step"]["bare"]
    lines = [f"# Guard cost: {res['dataset']}, batch {res['batch_size']}, hidden {res['hidden']} ({res['device']})", "",
             f"`python -m benchmarks.guard_cost {res['dataset']}`, one core; median of {res['rounds'] - 1} interleaved "
             f"epochs of {res['steps_per_epoch']} steps; load average {res['load_average']}", "",
             "| variant | ms per step | over bare |", "| --- | --- | --- |"]
    for v in VARIANTS:
        ms = res["ms_per_step"][v]
        lines.append(f"| {v} | {ms:.2f} | {ms / bare:.2f}× |")
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("dataset", nargs="?", default="mnist-synthetic")
    ap.add_argument("--out", default=None, help="write guard_cost-<dataset>.json/.md into this folder")
    args = ap.parse_args()
    res = measure(args.dataset, 4096 if args.dataset == "mnist-synthetic" else 1438)
    md = markdown(res)
    print(md)
    if args.out:
        os.makedirs(args.out, exist_ok=True)
        stem = os.path.join(args.out, f"guard_cost-{args.dataset}")
        with open(stem + ".json", "w") as f:
            json.dump(res, f, indent=1)
        with open(stem + ".md", "w") as f:
            f.write(md)


if __name__ == "__main__":
    main()
