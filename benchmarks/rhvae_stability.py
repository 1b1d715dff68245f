"""RHVAE training stability: the full (paper) gradient against the detached (pythae) one.

    python -m benchmarks.rhvae_stability [--steps-digits 150] [--steps-mnist 60]

For two settings, trains the same RHVAE twice from the same initial state with
Adam (1e-3), once with ``flow_gradient="full"`` and once with ``"detached"``,
and records every step's loss and largest relative fixed-point residual
(``aet.rhvae.FixedPointInfo``; the convergence check is switched off with
``fixed_point_tol=1e30`` so the trajectory is seen to its end):

* ``digits``: the CLI's RHVAE (``builders.build("rhvae", ...)``: MLP 128-128,
  latent 2, 64 centroids, T 0.8, λ 0.01, K 3, ε 3e-3, 5 fixed-point iterations), batch 128;
* ``mnist-synthetic``: the benchmark's RHVAE (784 inputs, MLP 512-256, latent 2,
  the batch's 128 codes as centroids, T 1.5, λ 0.01, K 3, ε 1e-3, 5 iterations; pythae's
  defaults), batch 128.

Writes ``benchmarks/results/rhvae_stability.{json,md}``.
"""
from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import platform

import jax
import jax.numpy as jnp
import numpy as np
import optax

import aetk_jax as aet
from aetk_jax import builders

from . import data as bdata
from . import jax_side
from .config import Setting

RESULTS = os.path.join(os.path.dirname(__file__), "results")


def _digits_setup(flow_gradient: str):
    recipe = builders.build("rhvae", (64,), flow_gradient=flow_gradient, fixed_point_tol=1e30)
    train, _ = aet.data.load_digits()
    x = np.asarray(train.x, np.float32)
    variables = jax.jit(recipe.model.init)(jax.random.key(0), jnp.asarray(x[:128]))
    xc = aet.rhvae.select_centroid_data(recipe.model, variables, jnp.asarray(x))
    variables = aet.rhvae.update_metric(recipe.model, variables, xc)
    return recipe.model, recipe.loss, variables, x


def _mnist_setup(flow_gradient: str):
    s = Setting(model="rhvae", dataset="mnist-synthetic")
    x = bdata.load("mnist-synthetic", 2048)
    model, loss, _ = jax_side.build(s, flow_gradient=flow_gradient, fixed_point_tol=1e30)
    return model, loss, jax_side.init_variables(model, s, x, jax.random.key(0)), x


SETUPS = {"digits": _digits_setup, "mnist-synthetic": _mnist_setup}


def run(name: str, flow_gradient: str, n_steps: int, batch_size: int = 128) -> dict:
    model, loss, variables, x = SETUPS[name](flow_gradient)
    trainer = aet.train.make_trainer(model, loss, optax.adam(1e-3))
    step = jax.jit(trainer.step)
    state = trainer.init(variables)
    n_batches = len(x) // batch_size
    losses, residuals = [], []
    for i in range(n_steps):
        b = i % n_batches
        state, m = step(state, jnp.asarray(x[b * batch_size:(b + 1) * batch_size]), jax.random.key(i))
        losses.append(float(m["loss"]))
        residuals.append(float(m["fixed_point_residual"]))
        if not math.isfinite(losses[-1]):
            break
    first_nan = next((i for i, v in enumerate(losses) if not math.isfinite(v)), None)
    first_unconverged = next((i for i, r in enumerate(residuals) if not r <= 0.5), None)
    finite = [v for v in losses if math.isfinite(v)]
    return {
        "setting": name, "flow_gradient": flow_gradient, "steps_run": len(losses),
        "first_nonfinite_step": first_nan, "first_step_residual_above_0.5": first_unconverged,
        "loss_first": losses[0], "loss_last_finite": finite[-1] if finite else None,
        "max_residual_before_failure": max((r for r in residuals if math.isfinite(r)), default=None),
        "losses": losses, "residuals": residuals,
    }


def _fmt(v, spec=".4g"):
    return "—" if v is None else format(v, spec) if isinstance(v, float) else str(v)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps-digits", type=int, default=150)
    ap.add_argument("--steps-mnist", type=int, default=60)
    args = ap.parse_args(argv)
    rows = []
    for name, n in (("digits", args.steps_digits), ("mnist-synthetic", args.steps_mnist)):
        for fg in ("full", "detached"):
            r = run(name, fg, n)
            print(f"{name:16s} {fg:9s} steps {r['steps_run']:4d}  first NaN {r['first_nonfinite_step']}  "
                  f"first residual>0.5 {r['first_step_residual_above_0.5']}  loss {r['loss_first']:.4g} → "
                  f"{_fmt(r['loss_last_finite'])}", flush=True)
            rows.append(r)
    meta = {"date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "machine": platform.platform(), "processor": platform.processor() or platform.machine(),
            "cpu_count": os.cpu_count(), "jax": jax.__version__, "aetk_jax": aet.__version__,
            "device": str(jax.devices()[0]), "command": "python -m benchmarks.rhvae_stability"}
    os.makedirs(RESULTS, exist_ok=True)
    with open(os.path.join(RESULTS, "rhvae_stability.json"), "w") as f:
        json.dump({"meta": meta, "runs": rows}, f, indent=1)
    lines = [
        "# RHVAE stability: full vs detached flow gradient", "",
        f"{meta['date']}, {meta['machine']}, jax {meta['jax']}; `{meta['command']}`. Adam 1e-3, batch 128, "
        "same initial state for both gradients. Residual: the largest relative fixed-point residual of the step.", "",
        "| setting | flow_gradient | steps run | first non-finite step | first step with residual > 0.5 "
        "| max residual before failure | loss: first → last finite |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['setting']} | {r['flow_gradient']} | {r['steps_run']} | {_fmt(r['first_nonfinite_step'])} | "
            f"{_fmt(r['first_step_residual_above_0.5'])} | {_fmt(r['max_residual_before_failure'], '.2g')} | "
            f"{r['loss_first']:.4g} → {_fmt(r['loss_last_finite'])} |"
        )
    with open(os.path.join(RESULTS, "rhvae_stability.md"), "w") as f:
        f.write("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
