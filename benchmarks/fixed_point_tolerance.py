"""RHVAE fixed points: the volume error of an unsolved generalised leapfrog step.

    python -m benchmarks.fixed_point_tolerance [--epochs 3] [--batch 128]

An exactly solved generalised leapfrog step is symplectic, so its Jacobian in
(z, ρ) has log|det J| = 0, and the RHVAE ELBO counts it as 0. With a finite
number of fixed-point iterations the implicit equations are solved only
approximately and the map the code computes has some other log|det J|: that is
an error the ELBO never sees. This script measures it against the relative
fixed-point residual the loss reports (``aet.rhvae.FixedPointInfo``), on a
trained model:

* the CLI's RHVAE (``builders.build("rhvae", ...)``: MLP 128-128, latent 2,
  64 centroids, T 0.8, λ 0.01, ``flow_gradient="detached"``), trained for
  ``--epochs`` epochs on the digits with Adam (1e-3) and the convergence check off;
* on ``--batch`` held-out digits, with the batch's metric (``metric_source="batch"``),
  from z₀ ~ q(z|x), ρ₀ = γ/√β₀ (β₀ = 0.3), one step for every step size ε and
  number of iterations n: log|det J| of the step (z, ρ) ↦ (z̄, ρ̄) by ``jax.jacfwd``
  and ``slogdet`` (float64) per example, and the step's relative residual.

Writes ``benchmarks/results/fixed_point_tolerance.{json,md}``: per (ε, n) the
largest residual and volume error, and, pooled over all of them, the largest
volume error among the steps whose residual is below each threshold; the
default ``fixed_point_tol`` is read off that table.
"""
from __future__ import annotations

import argparse
import datetime
import functools
import json
import os
import platform

import jax
import jax.numpy as jnp
import numpy as np
import optax

import aetk_jax as aet
from aetk_jax import builders, rhvae

RESULTS = os.path.join(os.path.dirname(__file__), "results")
EPS = (3e-3, 1e-2, 3e-2, 1e-1, 3e-1)
N_FIXED_POINT = (1, 2, 3, 5, 8)
THRESHOLDS = (1e-5, 1e-4, 2e-4, 5e-4, 1e-3, 3e-3, 1e-2, 3e-2, 1e-1, 0.5)


def train_model(epochs: int, seed: int = 0):
    """The CLI's RHVAE trained briefly on the digits; returns ``(model, variables, x_val)``."""
    recipe = builders.build("rhvae", (64,), fixed_point_tol=1e30)
    train, val = aet.data.load_digits()
    variables, _ = aet.train.fit(recipe.model, recipe.loss, train, key=jax.random.key(seed), epochs=epochs,
                                 batch_size=128, optimizer=optax.adam(1e-3), progress=False)
    return recipe.model, variables, np.asarray(val.x)


def _start(model, variables, x, key, beta0: float = 0.3):
    """The batch's metric and a start point (z₀, ρ₀) of the flow, as the loss draws them."""
    enc = aet.base.encode(model, variables, x)
    metric = rhvae._training_metric(model, variables, x, enc, "batch")
    k_z, k_rho = jax.random.split(key)
    z0 = aet.encoder_sample(model.encoder, enc, k_z)
    gamma = aet.utils.sample_mvnormal_canon(k_rho, jnp.zeros_like(z0), rhvae.inverse_metric(metric, z0))
    return metric, z0, gamma / jnp.sqrt(beta0)


@functools.partial(jax.jit, static_argnames=("model", "n_fixed_point"))
def step_volume(model, variables, x, metric, z, rho, eps, n_fixed_point: int):
    """Per example: log|det ∂(z̄, ρ̄)/∂(z, ρ)| of one generalised leapfrog step and its residual."""
    d = z.shape[-1]

    def one(xi, zi, ri):
        potential, kinetic = rhvae._energies(model, variables, xi[None], metric)
        grad_v = rhvae._sum_grad(potential)

        def step(state):
            zz, rr = state[None, :d], state[None, d:]
            zb, rb, _, _, info = rhvae._leapfrog_step(grad_v, kinetic, zz, rr, grad_v(zz), eps, n_fixed_point)
            return jnp.concatenate([zb[0], rb[0]]), info.max()[0]

        jac, residual = jax.jacfwd(step, has_aux=True)(jnp.concatenate([zi, ri]))
        return jnp.linalg.slogdet(jac)[1], residual

    return jax.vmap(one)(x, z, rho)


def measure(model, variables, x: np.ndarray, key) -> list[dict]:
    """One row per (ε, n): the per-example volume errors and residuals of one step in float64,
    and the residuals of the same step in float32 (what training sees)."""
    metric32, z32, rho32 = _start(model, variables, jnp.asarray(x, jnp.float32), key)
    rows = []
    for eps in EPS:
        for n in N_FIXED_POINT:
            _, res32 = step_volume(model, variables, jnp.asarray(x, jnp.float32), metric32, z32, rho32, eps, n)
            with jax.enable_x64(True):
                to64 = lambda t: jax.tree_util.tree_map(lambda a: jnp.asarray(a, jnp.float64), t)  # noqa: E731
                metric, z, rho = _start(model, to64(variables), jnp.asarray(x, jnp.float64), key)
                logdet, res = map(np.asarray, step_volume(model, to64(variables), jnp.asarray(x, jnp.float64),
                                                          metric, z, rho, eps, n))
            rows.append({"eps": eps, "n_fixed_point": n, "logdet": logdet.tolist(), "residual": res.tolist(),
                         "residual_float32": np.asarray(res32).tolist()})
    return rows


def threshold_table(rows: list[dict]) -> list[dict]:
    """Pooled over every (ε, n): for each threshold, the largest |log det J| among steps below it."""
    logdet = np.abs(np.concatenate([r["logdet"] for r in rows]))
    res = np.concatenate([r["residual"] for r in rows])
    out = []
    for t in THRESHOLDS:
        below = res <= t
        out.append({"tol": t, "steps": int(below.sum()),
                    "max_volume_error": float(logdet[below].max()) if below.any() else None,
                    "p99_volume_error": float(np.percentile(logdet[below], 99)) if below.any() else None})
    return out


def _fmt(v) -> str:
    return "—" if v is None or not np.isfinite(v) else f"{v:.2g}"


def markdown(rows: list[dict], table: list[dict], meta: dict) -> str:
    lines = [
        "# RHVAE: volume error of an unsolved leapfrog step against its fixed-point residual", "",
        f"{meta['date']}, {meta['platform']}, jax {meta['jax']}; `python -m benchmarks.fixed_point_tolerance "
        f"--epochs {meta['epochs']} --batch {meta['batch']}`. The CLI's RHVAE (detached flow gradient) trained "
        f"{meta['epochs']} epochs on the digits (held-out loss {meta['final_loss']:.2f}); one generalised "
        f"leapfrog step from z₀ ~ q(z|x), ρ₀ = γ/√0.3 on {meta['batch']} held-out digits, batch metric, float64. "
        "Volume error: |log|det J|| of the computed step (exactly 0 for an exactly solved, symplectic step). "
        "Residual: the relative fixed-point residual the loss reports (the larger of the two equations).", "",
        "## Pooled over every step size and iteration count", "",
        "| residual ≤ | steps | largest volume error (nats) | 99th percentile (nats) |",
        "|---|---|---|---|",
    ]
    lines += [f"| {t['tol']:g} | {t['steps']} | {_fmt(t['max_volume_error'])} | {_fmt(t['p99_volume_error'])} |"
              for t in table]
    lines += ["", "## Per step size ε and fixed-point iterations n", "",
              "| ε | n | median residual | largest residual | largest residual, float32 | median volume error "
              "| largest volume error |",
              "|---|---|---|---|---|---|---|"]
    for r in rows:
        ld, res, r32 = (np.abs(np.asarray(r["logdet"])), np.asarray(r["residual"]),
                        np.asarray(r["residual_float32"]))
        lines.append(f"| {r['eps']:g} | {r['n_fixed_point']} | {_fmt(np.median(res))} | {_fmt(res.max())} | "
                     f"{_fmt(r32.max())} | {_fmt(np.median(ld))} | {_fmt(ld.max())} |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--out", default=RESULTS)
    args = p.parse_args(argv)
    model, variables, x_val = train_model(args.epochs)
    recipe_loss = builders.build("rhvae", (64,), fixed_point_tol=1e30).loss
    final_loss = float(recipe_loss(variables, jnp.asarray(x_val[: args.batch]), jax.random.key(1)))
    rows = measure(model, variables, x_val[: args.batch], jax.random.key(2))
    table = threshold_table(rows)
    meta = {"date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "platform": platform.platform(), "jax": jax.__version__, "epochs": args.epochs, "batch": args.batch,
            "final_loss": final_loss}
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "fixed_point_tolerance.json"), "w") as f:
        json.dump({"meta": meta, "thresholds": table, "rows": rows}, f)
    text = markdown(rows, table, meta)
    with open(os.path.join(args.out, "fixed_point_tolerance.md"), "w") as f:
        f.write(text)
    print(text)


if __name__ == "__main__":
    main()
