"""Data-parallel step time against the device count and the batch size.

    python benchmarks/scaling_devices.py                     # 1, 2, 4 forced CPU devices
    python benchmarks/scaling_devices.py --devices 1 2 --batch-sizes 64 256 --models vae

Each device count runs in its own subprocess with
``XLA_FLAGS=--xla_force_host_platform_device_count=N`` (it must be set before JAX
is imported). In each, for every model and batch size, one jitted training
step (``aet.train.make_step``; with N > 1 devices ``mesh=aet.parallel.data_mesh()``,
the batch split over the devices, parameters replicated) is compiled, run
``--warmup`` times, then timed ``--steps`` times with ``block_until_ready``; the
median and the interquartile range are reported. The batches are placed on
the devices (sharded) before timing, so host-to-device copies are not timed.

Writes ``scaling_devices.json``, ``scaling_devices.md`` and
``scaling_devices.png`` to ``--out`` (default ``benchmarks/results``), with the
machine, the JAX version, the date and the load average.

On a CPU the forced devices are slices of the same cores, so no speed-up is
expected: the numbers show the overhead of partitioning the step (the
gradient all-reduce and per-device dispatch). Run it on a multi-GPU machine
(``--platform gpu``, one process, real devices) for real scaling.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import shlex
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)

NOTE_CPU = (
    "Forced CPU devices (--xla_force_host_platform_device_count) share the same cores, so no "
    "speed-up with the device count is expected: the numbers measure the overhead of the "
    "sharded step (partitioning, the gradient all-reduce, per-device dispatch), not scaling."
)


# ---------------------------------------------------------------------------
# worker: one device count


def _build(name: str, hidden: tuple[int, ...]):
    import functools

    import flax.linen as nn

    import aetk_jax as aet

    enc = aet.JointGaussianLogEncoder(aet.MLP(list(hidden), final_activation=nn.relu), 2)
    dec = aet.BernoulliDecoder(aet.MLP(list(hidden[::-1]), final_activation=nn.relu), 64)
    if name == "vae":
        model = aet.VAE(enc, dec)
        return model, functools.partial(aet.vae.loss, model)
    if name == "hvae":
        model = aet.HVAE(enc, dec)
        return model, functools.partial(aet.hvae.loss, model, K=3, eps=1e-3)
    raise ValueError(f"unknown model {name!r}")


def worker(args: argparse.Namespace) -> None:
    import jax
    import numpy as np
    import optax

    import aetk_jax as aet

    n_dev = jax.device_count()
    mesh = aet.parallel.data_mesh() if n_dev > 1 else None
    x_all = np.asarray(aet.data.load_digits()[0].x)
    rng = np.random.default_rng(0)
    rows = []
    for name in args.models:
        model, loss_fn = _build(name, tuple(args.hidden))
        opt = optax.adam(1e-3)
        for b in args.batch_sizes:
            if b % n_dev:
                continue
            batches = [x_all[rng.integers(0, len(x_all), b)] for _ in range(8)]
            variables = model.init(jax.random.key(0), batches[0])
            state = aet.train.init_state(variables, opt)
            step = aet.train.make_step(loss_fn, opt, mesh=mesh)
            if mesh is not None:
                state = aet.parallel.replicate(state, mesh)
                batches = [aet.parallel.shard_batch(xb, mesh) for xb in batches]
            else:
                batches = [jax.device_put(xb) for xb in batches]
            key = jax.random.key(1)
            t0 = time.perf_counter()
            state, m = step(state, batches[0], key)
            jax.block_until_ready(m)
            compile_s = time.perf_counter() - t0
            for i in range(args.warmup):
                state, m = step(state, batches[i % 8], jax.random.fold_in(key, i))
            jax.block_until_ready(state)
            times = []
            for i in range(args.steps):
                xb = batches[i % 8]
                k = jax.random.fold_in(key, 10_000 + i)
                t0 = time.perf_counter()
                state, m = step(state, xb, k)
                jax.block_until_ready((state, m))
                times.append(time.perf_counter() - t0)
            q1, med, q3 = np.percentile(times, [25, 50, 75])
            rows.append({
                "model": name, "devices": n_dev, "batch_size": b, "median_ms": 1e3 * med,
                "q1_ms": 1e3 * q1, "q3_ms": 1e3 * q3, "examples_per_s": b / med,
                "compile_s": compile_s, "steps": args.steps, "final_loss": float(m["loss"]),
                "sharded": mesh is not None,
            })
            print(f"[{n_dev} dev] {name} B={b}: {1e3 * med:.2f} ms (IQR {1e3 * q1:.2f}-{1e3 * q3:.2f})", flush=True)
    with open(args.worker_out, "w") as f:
        json.dump({"rows": rows, "devices": [str(d) for d in jax.devices()], "backend": jax.default_backend()}, f)


# ---------------------------------------------------------------------------
# driver


def _machine() -> dict:
    info = {"platform": platform.platform(), "python": platform.python_version(), "cpu_count": os.cpu_count()}
    try:
        with open("/proc/cpuinfo") as f:
            names = [ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")]
        info["cpu"] = names[0] if names else platform.processor()
    except OSError:
        info["cpu"] = platform.processor()
    try:
        with open("/proc/meminfo") as f:
            info["memory_gb"] = round(int(f.readline().split()[1]) / 2**20, 1)
    except (OSError, ValueError, IndexError):
        pass
    return info


def _run_worker(n_dev: int, args: argparse.Namespace) -> dict:
    env = dict(os.environ)
    if args.platform == "cpu":
        env["JAX_PLATFORMS"] = "cpu"
        env["XLA_FLAGS"] = (env.get("XLA_FLAGS", "") + f" --xla_force_host_platform_device_count={n_dev}").strip()
    else:  # real accelerators: expose the first n_dev of them
        env["CUDA_VISIBLE_DEVICES"] = ",".join(str(i) for i in range(n_dev))
    env["PYTHONPATH"] = os.pathsep.join([ROOT, env.get("PYTHONPATH", "")])
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "rows.json")
        cmd = [sys.executable, os.path.abspath(__file__), "--worker-out", out, "--steps", str(args.steps),
               "--warmup", str(args.warmup), "--models", *args.models, "--hidden", *map(str, args.hidden),
               "--batch-sizes", *map(str, args.batch_sizes)]
        subprocess.run(cmd, env=env, check=True)
        with open(out) as f:
            return json.load(f)


def _markdown(res: dict) -> str:
    lines = [
        "# Data-parallel step time: device count and batch size",
        "",
        f"Date: {res['date']}. JAX {res['jax']} (backend `{res['backend']}`). Machine: {res['machine'].get('cpu')}, "
        f"{res['machine'].get('cpu_count')} logical CPUs, {res['machine'].get('memory_gb', '?')} GB; "
        f"load average {res['load_start']} at start, {res['load_end']} at the end.",
        "",
        f"**Note.** {res['note']}",
        "",
        f"Step: `aet.train.make_step` (Adam), MLP widths {res['settings']['hidden']} (encoder; reversed for the "
        f"decoder), latent 2, digits (64 features). Median of {res['settings']['steps']} steps after "
        f"{res['settings']['warmup']} warm-up steps; IQR = interquartile range.",
        "",
        "| model | devices | batch | median step (ms) | IQR (ms) | examples/s | compile (s) |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in sorted(res["rows"], key=lambda r: (r["model"], r["batch_size"], r["devices"])):
        lines.append(
            f"| {r['model']} | {r['devices']} | {r['batch_size']} | {r['median_ms']:.2f} | "
            f"{r['q1_ms']:.2f}–{r['q3_ms']:.2f} | {r['examples_per_s']:.0f} | {r['compile_s']:.1f} |"
        )
    lines += ["", "Ratio to one device (same model and batch size; > 1 is slower):", "",
              "| model | batch | " + " | ".join(f"{n} dev" for n in res["settings"]["devices"]) + " |",
              "| --- | ---: | " + " | ".join("---:" for _ in res["settings"]["devices"]) + " |"]
    table = {(r["model"], r["batch_size"], r["devices"]): r["median_ms"] for r in res["rows"]}
    for model in res["settings"]["models"]:
        for b in res["settings"]["batch_sizes"]:
            base = table.get((model, b, 1))
            if base is None:
                continue
            cells = [f"{table[(model, b, n)] / base:.2f}" if (model, b, n) in table else "–"
                     for n in res["settings"]["devices"]]
            lines.append(f"| {model} | {b} | " + " | ".join(cells) + " |")
    lines += ["", f"Command: `{res['command']}`", ""]
    return "\n".join(lines)


def _plot(res: dict, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    models = res["settings"]["models"]
    fig, axes = plt.subplots(len(models), 2, figsize=(10, 3.6 * len(models)), squeeze=False)
    for i, model in enumerate(models):
        rows = [r for r in res["rows"] if r["model"] == model]
        ax = axes[i, 0]
        for b in res["settings"]["batch_sizes"]:
            pts = sorted((r["devices"], r["median_ms"], r["q1_ms"], r["q3_ms"]) for r in rows if r["batch_size"] == b)
            if pts:
                d, m, lo, hi = map(list, zip(*pts))
                ax.errorbar(d, m, yerr=[[a - c for a, c in zip(m, lo)], [c - a for a, c in zip(m, hi)]],
                            marker="o", capsize=3, label=f"batch {b}")
        ax.set_xlabel("devices (forced CPU)" if res["backend"] == "cpu" else "devices")
        ax.set_ylabel("median step (ms)")
        ax.set_xticks(res["settings"]["devices"])
        ax.set_yscale("log")
        ax.set_title(f"{model.upper()}: step time vs device count")
        ax.legend(fontsize=8)
        ax = axes[i, 1]
        for n in res["settings"]["devices"]:
            pts = sorted((r["batch_size"], r["median_ms"]) for r in rows if r["devices"] == n)
            if pts:
                b, m = map(list, zip(*pts))
                ax.plot(b, m, marker="o", label=f"{n} device{'s' if n > 1 else ''}")
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel("batch size")
        ax.set_ylabel("median step (ms)")
        ax.set_title(f"{model.upper()}: step time vs batch size")
        ax.legend(fontsize=8)
    fig.suptitle(f"aetk_jax data-parallel step, JAX {res['jax']}, {res['date'][:10]}"
                 + (" (forced CPU devices share the cores: no speed-up expected)" if res["backend"] == "cpu" else ""),
                 fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--devices", type=int, nargs="+", default=[1, 2, 4])
    p.add_argument("--batch-sizes", type=int, nargs="+", default=[64, 256, 1024])
    p.add_argument("--models", nargs="+", default=["vae", "hvae"])
    p.add_argument("--hidden", type=int, nargs="+", default=[128, 128])
    p.add_argument("--steps", type=int, default=100)
    p.add_argument("--warmup", type=int, default=10)
    p.add_argument("--platform", choices=["cpu", "gpu"], default="cpu")
    p.add_argument("--note", default="", help="free text recorded with the results (e.g. machine load)")
    p.add_argument("--out", default=os.path.join(HERE, "results"))
    p.add_argument("--worker-out", default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker_out:
        worker(args)
        return

    import jax

    load_start = [round(v, 2) for v in os.getloadavg()]
    busy = ""
    if load_start[0] > (os.cpu_count() or 1):
        busy = (f"The machine was shared with other jobs (1-min load average {load_start[0]} on "
                f"{os.cpu_count()} CPUs at start): absolute times are inflated and noisy. ")
    rows, backend, devices = [], None, {}
    for n in args.devices:
        out = _run_worker(n, args)
        rows += out["rows"]
        backend = out["backend"]
        devices[n] = out["devices"]
    res = {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "jax": jax.__version__,
        "backend": backend,
        "machine": _machine(),
        "load_start": load_start,
        "load_end": [round(v, 2) for v in os.getloadavg()],
        "note": (NOTE_CPU + " " if args.platform == "cpu" else "") + busy + args.note,
        "command": shlex.join(["python", os.path.relpath(__file__, ROOT)] + list(argv if argv is not None else sys.argv[1:])),
        "settings": {k: getattr(args, k) for k in ("devices", "batch_sizes", "models", "hidden", "steps", "warmup",
                                                    "platform")},
        "device_names": devices,
        "rows": rows,
    }
    os.makedirs(args.out, exist_ok=True)
    base = os.path.join(args.out, "scaling_devices")
    with open(base + ".json", "w") as f:
        json.dump(res, f, indent=1)
    with open(base + ".md", "w") as f:
        f.write(_markdown(res))
    _plot(res, base + ".png")
    print(f"wrote {base}.json, .md, .png")


if __name__ == "__main__":
    main()
