"""Benchmark entry point: ``python -m benchmarks.run --suite quick|full [--device cpu|gpu]``.

For each model (VAE, β-VAE, InfoVAE/MMD, HVAE, RHVAE) and each data set (the
bundled digits, an MNIST-sized synthetic set) it builds the same architecture in
aetk_jax and pythae, checks that both compute the same quantities from one
shared initial state (``benchmarks.parity``), then measures, in one process
with the two libraries interleaved round by round:

* the training-step time (median of many steps after warm-up);
* aetk_jax's compile time (trace + XLA compile of the step);
* the time of a whole epoch (aetk_jax: ``fit``'s compiled epoch scan; pythae:
  its ``BaseTrainer.train_step`` and a plain loop);
* peak memory, each library in a fresh process (``benchmarks.memory``);

then step-time scaling curves (batch size, latent dimension, K, centroids),
and writes ``benchmarks/results/<suite>-<device>.json`` and ``.md`` and the
scaling PNGs. See ``benchmarks/README.md``.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
import traceback
from typing import Any, Optional, Sequence

from . import report
from .config import Setting, Suite, default_setting, get_suite, scaling_points

HERE = os.path.dirname(os.path.abspath(__file__))


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m benchmarks.run", description="aetk_jax vs pythae benchmarks")
    p.add_argument("--suite", choices=("quick", "full", "tiny"), default="quick")
    p.add_argument("--device", choices=("cpu", "gpu"), default="cpu")
    p.add_argument("--models", nargs="*", default=None, help="restrict to these models")
    p.add_argument("--out", default=report.RESULTS_DIR, help="results folder (default benchmarks/results)")
    p.add_argument("--no-scaling", action="store_true", help="skip the scaling curves")
    p.add_argument("--scaling-only", action="store_true",
                   help="only the scaling curves (no head-to-head table, targets or profiles)")
    p.add_argument("--no-memory", action="store_true", help="skip the memory probes")
    p.add_argument("--threads", type=int, default=None,
                   help="pin the run (and its memory probes) to this many cores, with as many torch and XLA "
                        "threads (default: all cores, each library's own default)")
    p.add_argument("--note", action="append", default=[], help="a note to record in the JSON (repeatable)")
    return p.parse_args(argv)


def apply_threads(n: Optional[int]) -> None:
    """Restrict this process (and its children) to ``n`` cores and ``n`` compute threads per library.

    Must run before JAX and torch are imported: sets the CPU affinity, ``XLA_FLAGS``
    (``intra_op_parallelism_threads``; with one thread also
    ``--xla_cpu_multi_thread_eigen=false``), ``OMP_NUM_THREADS`` and
    ``AETK_BENCH_THREADS`` (read by ``torch_side`` for ``torch.set_num_threads``).
    """
    if n is None:
        return
    if n < 1:
        raise SystemExit(f"--threads must be >= 1, got {n}")
    if hasattr(os, "sched_setaffinity"):
        cpus = sorted(os.sched_getaffinity(0))
        os.sched_setaffinity(0, set(cpus[:n]))
    flags = os.environ.get("XLA_FLAGS", "")
    extra = f"--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads={n}" if n == 1 else \
        f"intra_op_parallelism_threads={n}"
    os.environ["XLA_FLAGS"] = (flags + " " + extra).strip()
    os.environ["OMP_NUM_THREADS"] = str(n)
    os.environ["AETK_BENCH_THREADS"] = str(n)


def select_device(device: str) -> None:
    """Make JAX use the requested platform; must run before JAX is imported."""
    if device == "cpu":
        if "jax" in sys.modules:
            import jax

            jax.config.update("jax_platforms", "cpu")
        else:
            os.environ["JAX_PLATFORMS"] = "cpu"


def check_gpu() -> Optional[str]:
    """``None`` when both libraries see a GPU, else the reason."""
    import jax
    import torch

    problems = []
    if jax.default_backend() != "gpu":
        problems.append(f"JAX's default backend is {jax.default_backend()!r} (install jax[cuda12])")
    if not torch.cuda.is_available():
        problems.append("torch.cuda.is_available() is False (install a CUDA build of torch)")
    return "; ".join(problems) or None


# --------------------------------------------------------------------------- timing


def time_interleaved(runners: Sequence[Any], warmup: int, rounds: int, steps: int) -> tuple[list[list[float]], list[list[float]]]:
    """Per-step wall times and process CPU times (s) for each runner; the runners take turns.

    Every runner first does ``warmup`` untimed steps. Then, for each round, each
    runner (in an order that reverses every round, so no runner always follows
    the same one) runs ``steps`` timed steps; a step returns only when its
    results are ready (``block_until_ready`` / CUDA synchronise). CPU time is
    ``time.process_time`` (all threads of this process): on a shared machine it
    leaves out the time other processes held the cores, but with several
    threads it also counts their spin-waiting.
    """
    for r in runners:
        for _ in range(warmup):
            r.step()
    wall: list[list[float]] = [[] for _ in runners]
    cpu: list[list[float]] = [[] for _ in runners]
    order = list(range(len(runners)))
    for k in range(rounds):
        for i in (order if k % 2 == 0 else order[::-1]):
            r = runners[i]
            for _ in range(steps):
                c0, t0 = time.process_time(), time.perf_counter()
                r.step()
                wall[i].append(time.perf_counter() - t0)
                cpu[i].append(time.process_time() - c0)
    return wall, cpu


def _first_step(runner: Any) -> float:
    t0 = time.perf_counter()
    runner.step()
    return time.perf_counter() - t0


def _err(e: BaseException) -> str:
    return "".join(traceback.format_exception_only(type(e), e)).strip() + "\n" + traceback.format_exc(limit=3)[-1500:]


# --------------------------------------------------------------------------- one model


def variants_for(s: Setting, suite: Suite) -> list[tuple[str, dict[str, Any], str]]:
    """Extra aetk_jax settings timed beside the main one: (label, hyper overrides, why)."""
    if s.model == "hvae":
        import aetk_jax as aet

        return [("full gradient (aetk_jax default)", {"potential_grad": aet.hvae.grad_potential_energy},
                 "the paper's gradient: through the leapfrog's grad U into the decoder (pythae does not)")]
    if s.model != "rhvae":
        return []
    out = [("full gradient (aetk_jax default)", {"flow_gradient": "full"},
            "the paper's gradient through the K leapfrog steps (pythae detaches them); with these settings "
            "it diverges within a few steps (benchmarks/results/rhvae_stability.md)")]
    for nfp in suite.rhvae_fixed_point_variants:
        if nfp != s.n_fixed_point:
            why = ("closest to pythae, whose position update is explicit (one evaluation)" if nfp == 1 else
                   "pythae iterates its first momentum half-step 3 times")
            out.append((f"n_fixed_point={nfp}", {"n_fixed_point": nfp}, why))
    return out


def bench_model(s: Setting, suite: Suite, x_steps: Any, x_epoch: Any, device: str, *, memory: bool,
                log=print) -> dict[str, Any]:
    """Everything measured for one setting; a JSON-able record (never raises)."""
    rec: dict[str, Any] = {"model": s.model, "dataset": s.dataset, "setting": s.to_dict(), "status": "ok"}
    from . import jax_side

    try:
        jax_side.check_available(s.model)
    except jax_side.ModelUnavailable as e:
        rec.update(status="not available", error=str(e))
        log(f"  {s.model}: {e}")
        return rec

    torch_device = "cuda" if device == "gpu" else "cpu"
    try:
        from . import parity

        rec["parity"] = parity.check(s, x_steps) if device == "cpu" else {"skipped": "parity runs on the CPU suite"}
        if rec["parity"].get("ok") is False:
            log(f"  {s.model}: PARITY FAILED {[c['check'] for c in rec['parity']['checks'] if not c['ok']]}")
    except Exception as e:  # noqa: BLE001
        rec["parity"] = {"ok": False, "error": _err(e)}
        log(f"  {s.model}: parity check error: {e}")

    try:
        from . import torch_side

        jr = jax_side.JaxRunner(s, x_steps)
        comp = jr.compile()
        first_j = _first_step(jr)
        tr = torch_side.TorchRunner(s, x_steps, device=torch_device)
        first_t = _first_step(tr)
        variants = []
        for label, over, why in variants_for(s, suite):
            vr = jax_side.JaxRunner(s, x_steps, **over)
            vcomp = vr.compile()
            _first_step(vr)
            variants.append((label, why, vr, vcomp))
        runners = [jr, tr] + [v[2] for v in variants]
        times, cpu = time_interleaved(runners, suite.warmup, suite.rounds, suite.steps_per_round)
        rec["aetk_jax"] = {"step": report.summarize(times[0]), "step_cpu": report.summarize(cpu[0]),
                           "compile_s": comp["compile_s"], "compile_cpu_s": comp["compile_cpu_s"],
                           "trace_lower_s": comp["trace_lower_s"], "xla_compile_s": comp["xla_compile_s"],
                           "first_step_s": comp["compile_s"] + first_j, "xla_memory": comp["xla_memory"],
                           "final_loss": jr.loss_value(), **jr.info()}
        rec["pythae"] = {"step": report.summarize(times[1]), "step_cpu": report.summarize(cpu[1]),
                         "first_step_s": first_t, "final_loss": tr.loss_value(), **tr.info()}
        rec["ratio"] = {"step": report.ratio(rec["pythae"]["step"]["median_ms"], rec["aetk_jax"]["step"]["median_ms"]),
                        "step_cpu": report.ratio(rec["pythae"]["step_cpu"]["median_ms"],
                                                 rec["aetk_jax"]["step_cpu"]["median_ms"])}
        rec["variants"] = []
        for (label, why, vr, vcomp), t, c in zip(variants, times[2:], cpu[2:]):
            st, sc = report.summarize(t), report.summarize(c)
            rec["variants"].append({"label": label, "why": why, "step": st, "step_cpu": sc,
                                    "compile_s": vcomp["compile_s"], "compile_cpu_s": vcomp["compile_cpu_s"],
                                    "ratio_step": report.ratio(rec["pythae"]["step"]["median_ms"], st["median_ms"]),
                                    "ratio_step_cpu": report.ratio(rec["pythae"]["step_cpu"]["median_ms"], sc["median_ms"]),
                                    "final_loss": vr.loss_value()})
        rec["sanity"] = report.training_sanity(rec)
        if rec["sanity"]["ok"] is False:
            log(f"  {s.model}: aetk_jax TRAINING DIVERGED: final loss {rec['sanity']['aetk_jax_final_loss']:.4g} "
                f"vs pythae {rec['sanity']['pythae_final_loss']:.4g}")
        log(f"  {s.model}: step aetk_jax {rec['aetk_jax']['step']['median_ms']:.2f} ms, pythae "
            f"{rec['pythae']['step']['median_ms']:.2f} ms, ratio {rec['ratio']['step']:.2f}; compile {comp['compile_s']:.1f} s")

        # ---- epochs
        ep = jr.compile_epoch(x_epoch)
        rec["aetk_jax"].update(ep)
        ja, tl, tt = [], [], []
        with torch_side.tempdir() as work:
            trainer = tr.trainer(x_epoch, work)
            # one untimed aetk_jax epoch: the new executable's first run pays one-time costs (pythae's
            # epochs run the step code already warmed up by the step timing)
            jr.epoch(-1)
            for e in range(suite.epochs):
                ja.append(jr.epoch(e))
                tl.append(tr.manual_epoch(x_epoch, e))
                tt.append(tr.trainer_epoch(trainer, e))
        n_steps = len(x_epoch) // s.batch_size
        rec["epoch_examples"], rec["epoch_steps"] = int(len(x_epoch)), int(n_steps)
        w = lambda xs: [a for a, _ in xs]  # noqa: E731
        c = lambda xs: [b for _, b in xs]  # noqa: E731
        rec["aetk_jax"].update(epoch_s=report.median(w(ja)), epoch_cpu_s=report.median(c(ja)), epoch_all_s=w(ja))
        if s.model == "vae":  # the bare flax/optax scan, in rounds of its own with aetk_jax's epoch (timed
            bare = jax_side.MinimalEpoch(s, x_epoch)  # right after pythae's epochs it measured 15 ms, alone 6 ms)
            bare.epoch(1000)  # warm-up (its seed is folded into a uint32 key)
            bm, jb = [], []
            for e in range(suite.epochs):
                jb.append(jr.epoch(100 + e))
                bm.append(bare.epoch(e))
            rec["aetk_jax"].update(minimal_epoch_s=report.median(w(bm)), minimal_epoch_all_s=w(bm),
                                   epoch_beside_minimal_s=report.median(w(jb)))
        rec["pythae"].update(epoch_loop_s=report.median(w(tl)), epoch_loop_cpu_s=report.median(c(tl)),
                             epoch_loop_all_s=w(tl), epoch_trainer_s=report.median(w(tt)),
                             epoch_trainer_cpu_s=report.median(c(tt)), epoch_trainer_all_s=w(tt))
        rec["ratio"].update(epoch_loop=report.ratio(rec["pythae"]["epoch_loop_s"], rec["aetk_jax"]["epoch_s"]),
                            epoch_trainer=report.ratio(rec["pythae"]["epoch_trainer_s"], rec["aetk_jax"]["epoch_s"]),
                            epoch_loop_cpu=report.ratio(rec["pythae"]["epoch_loop_cpu_s"], rec["aetk_jax"]["epoch_cpu_s"]),
                            epoch_trainer_cpu=report.ratio(rec["pythae"]["epoch_trainer_cpu_s"],
                                                           rec["aetk_jax"]["epoch_cpu_s"]))
        log(f"  {s.model}: epoch ({n_steps} steps) aetk_jax {rec['aetk_jax']['epoch_s']:.3f} s, pythae loop "
            f"{rec['pythae']['epoch_loop_s']:.3f} s / trainer {rec['pythae']['epoch_trainer_s']:.3f} s")
        rec["aetk_jax"].update(jr.fit_compile(x_epoch))
        if s.dataset == report.EPOCH_DATASET:  # the compile targets' rows: also a rerun with a warm disk cache
            from . import compile_cache

            rec["aetk_jax"]["fit_compile_cache"] = cc = compile_cache.measure(s.model, s.dataset, len(x_epoch))
            if "error" not in cc:
                log(f"  {s.model}: fit compile excess in a fresh process {cc['cold']['fit_compile_excess_s']:.1f} s, "
                    f"rerun with the persistent compilation cache {cc['warm']['fit_compile_excess_s']:.1f} s")
        rec["floor"] = fl = jax_side.floor(jr, rec["aetk_jax"]["step"].get("median_ms"),  # epochs paired with the
                                           rec["aetk_jax"]["epoch_s"] * 1e3 / n_steps, rounds=5)  # matmul rate
        log(f"  {s.model}: fit compile excess {rec['aetk_jax']['fit_compile_excess_s']:.1f} s; epoch step "
            f"{fl.get('epoch_step_over_floor') or float('nan'):.2f}x, step alone {fl.get('step_over_floor') or float('nan'):.2f}x "
            f"its FLOP floor ({fl.get('floor_ms') or float('nan'):.2f} ms at {fl['matmul']['gflops_per_s']:.1f} GFLOP/s)")
        rec["_runners"] = (jr, tr)  # for profiling; removed before writing
    except Exception as e:  # noqa: BLE001
        rec.update(status="error", error=_err(e))
        log(f"  {s.model}: error {e}")
        return rec

    if memory:
        from . import memory as mem

        for lib in ("aetk_jax", "pythae"):
            m = mem.run_probe(lib, s.model, s.dataset, s.batch_size, max(5, suite.steps_per_round), device)
            m.pop("setting", None)
            rec[lib]["memory"] = m
        log(f"  {s.model}: memory steady peak delta aetk_jax {rec['aetk_jax']['memory'].get('steady_peak_delta_mb')} MB,"
            f" pythae {rec['pythae']['memory'].get('steady_peak_delta_mb')} MB")
    return rec


# --------------------------------------------------------------------------- scaling


def bench_scaling(suite: Suite, device: str, log=print) -> list[dict[str, Any]]:
    """Step time at each scaling point, both libraries interleaved (aetk_jax only for centroids)."""
    from . import data, jax_side, torch_side

    out: list[dict[str, Any]] = []
    torch_device = "cuda" if device == "gpu" else "cpu"
    for model in suite.scaling_model_list():
        try:
            jax_side.check_available(model)
        except jax_side.ModelUnavailable as e:
            out.append({"model": model, "axis": "all", "value": None, "note": f"model not available: {e}"})
            continue
        too_slow: dict[tuple[str, str], float] = {}
        for axis, value, s in scaling_points(suite, model):
            rec: dict[str, Any] = {"model": model, "axis": axis, "value": value, "setting": s.to_dict()}
            over: dict[str, Any] = {}
            notes = []
            if axis == "n_centroids":
                over["metric_source"] = "centroids"
                notes.append("aetk_jax metric_source='centroids' (pythae's training metric uses the batch; n/a)")
            n = max(2 * s.batch_size, s.centroids if model == "rhvae" else 0, 512)
            x = data.load("mnist-synthetic", n)
            runners, labels = [], []
            try:
                if (axis, "aetk_jax") not in too_slow:
                    jr = jax_side.JaxRunner(s, x, n_batches=2, **over)
                    rec["aetk_jax_compile_s"] = jr.compile()["compile_s"]
                    jr.step()
                    runners.append(jr)
                    labels.append("aetk_jax")
                else:
                    notes.append(f"aetk_jax skipped: a smaller point took > {suite.scaling_max_step_s} s per step")
                if axis != "n_centroids":
                    if (axis, "pythae") not in too_slow:
                        tr = torch_side.TorchRunner(s, x, device=torch_device, n_batches=2)
                        tr.step()
                        runners.append(tr)
                        labels.append("pythae")
                    else:
                        notes.append(f"pythae skipped: a smaller point took > {suite.scaling_max_step_s} s per step")
                times, cpu = time_interleaved(runners, 1, suite.scaling_rounds, suite.scaling_steps)
                for lab, t, c in zip(labels, times, cpu):
                    st = report.summarize(t)
                    rec[f"{lab}_ms"] = st["median_ms"]
                    rec[f"{lab}_cpu_ms"] = report.summarize(c)["median_ms"]
                    rec[f"{lab}_step"] = st
                    if st["median_ms"] / 1e3 > suite.scaling_max_step_s:
                        too_slow[(axis, lab)] = st["median_ms"]
            except Exception as e:  # noqa: BLE001
                rec["error"] = _err(e)
                notes.append(f"error: {str(e).splitlines()[0][:200]}")
            if notes:
                rec["note"] = "; ".join(notes)
            log(f"  scaling {model} {axis}={value}: aetk_jax {rec.get('aetk_jax_ms')} ms, pythae {rec.get('pythae_ms')} ms"
                + (f" ({rec['note']})" if notes else ""))
            out.append(rec)
    return out


# --------------------------------------------------------------------------- main


def run(args: argparse.Namespace) -> dict[str, Any]:
    apply_threads(args.threads)
    select_device(args.device)
    suite = get_suite(args.suite, args.models)
    log = lambda msg: print(msg, flush=True)  # noqa: E731

    if args.device == "gpu":
        why = check_gpu()
        if why:
            raise SystemExit(f"--device gpu: no usable GPU here: {why}. Nothing was measured.")
    from . import data, jax_side, torch_side

    machine = report.machine_info()
    dev_name = jax_side.device_name() if args.device == "cpu" else torch_side.device_name("cuda")
    results: dict[str, Any] = {
        "schema": report.SCHEMA,
        "suite": suite.name,
        "device": args.device,
        "device_name": dev_name if args.device == "gpu" else f"CPU ({machine.get('cpu')})",
        "command": "python -m benchmarks.run " + " ".join(_argv(args)),
        "machine": machine,
        "versions": {**jax_side.versions(), **torch_side.versions()},
        "suite_config": suite.to_dict(),
        "threads": args.threads if args.threads else "library defaults (all cores)",
        "notes": list(args.note),
        "models": [],
        "scaling": [],
    }
    t_start = time.perf_counter()
    if getattr(args, "scaling_only", False):
        if args.no_scaling:
            raise SystemExit("--scaling-only and --no-scaling exclude each other")
        results["notes"].append("--scaling-only: the head-to-head table, targets and profiles were not measured")
    for ds in () if getattr(args, "scaling_only", False) else suite.datasets:
        n_step = 16 * 128
        x_steps = data.load(ds, max(n_step, 2048))
        n_ep = suite.epoch_examples.get(ds, 4096)
        for model in suite.models:
            s = default_setting(model, ds)
            x_epoch = data.load(ds, n_ep)
            x_epoch = x_epoch[: (len(x_epoch) // s.batch_size) * s.batch_size]
            log(f"[{time.perf_counter() - t_start:6.0f} s] {model} on {ds}")
            memory = (suite.memory and not args.no_memory and ds == "mnist-synthetic"
                      and (not suite.memory_models or model in suite.memory_models))
            results["models"].append(bench_model(s, suite, x_steps, x_epoch, args.device, memory=memory, log=log))

    # profiles of missed targets (before the runners are dropped)
    results["targets"] = report.evaluate_targets(results)
    results["profiles"] = []
    from . import profile

    missed = list(dict.fromkeys(t["model"] for t in results["targets"] if t.get("met") is False))
    for model in missed:
        r = next((r for r in results["models"] if r["model"] == model and r["dataset"] == report.TARGET_DATASET
                  and "_runners" in r), None)
        if r is not None:
            jr, tr = r["_runners"]
            log(f"  profiling {model} (missed target)")
            pr = {"model": model, **profile.profile_jax(jr), **profile.profile_torch(tr)}
            pr["reading"] = profile.explain(pr)
            results["profiles"].append(pr)
    for r in results["models"]:
        r.pop("_runners", None)

    if not args.no_scaling and suite.scaling:
        log(f"[{time.perf_counter() - t_start:6.0f} s] scaling curves")
        results["scaling"] = bench_scaling(suite, args.device, log=log)

    results["machine"]["load_average_end"] = report.load_average()
    results["elapsed_s"] = time.perf_counter() - t_start
    note = report.shared_machine_note(results["machine"])
    if note:
        results["notes"].append(note)
    results["notes"].append(
        "pythae's HVAE and RHVAE estimate their ELBO differently from aetk_jax (see parity.pythae_differences); "
        "their step-time ratios compare the cost of one training step each library's HVAE/RHVAE takes, "
        "with the same K, step size, networks and batch. The main HVAE/RHVAE rows differentiate what pythae "
        "differentiates (HVAE: potential_grad with stop_gradient; RHVAE: flow_gradient='detached'); "
        "aetk_jax's default, the paper's full gradient through the leapfrog, is timed as a variant.")
    if any(r["model"] == "rhvae" for r in results["models"]):
        results["notes"].append(
            "RHVAE: aetk_jax solves both implicit halves of the generalized leapfrog with n_fixed_point "
            "iterations (default 5); pythae iterates the first momentum half-step 3 times (gradients not "
            "differentiated) and makes the position update explicit. The n_fixed_point=1 variant is the closest "
            "amount of work.")
    julia = report.find_julia(args.out, suite.name, args.device)
    if julia:
        results["julia"] = julia
    else:
        results["julia_note"] = (f"No benchmarks/results/julia-{suite.name}-{args.device}.json: the Julia script "
                                 "(benchmarks/julia/bench.jl) has not been run on this machine (Julia is not installed).")

    stem = report.output_stem(suite.name, args.device, dev_name)
    os.makedirs(args.out, exist_ok=True)
    if results["scaling"]:
        from . import plots

        results["figures"] = [os.path.basename(p) for p in plots.scaling_figures(results, os.path.join(args.out, stem))]
    json_path = report.write_json(results, os.path.join(args.out, stem + ".json"))
    md_path = report.write_markdown(results, os.path.join(args.out, stem + ".md"))
    log(f"wrote {json_path} and {md_path} in {results['elapsed_s']:.0f} s")
    return results


def _argv(args: argparse.Namespace) -> list[str]:
    out = ["--suite", args.suite, "--device", args.device]
    if args.models:
        out += ["--models", *args.models]
    if args.no_scaling:
        out.append("--no-scaling")
    if getattr(args, "scaling_only", False):
        out.append("--scaling-only")
    if args.no_memory:
        out.append("--no-memory")
    if args.threads:
        out += ["--threads", str(args.threads)]
    return out


def main(argv: Optional[Sequence[str]] = None) -> None:
    run(parse_args(argv))


if __name__ == "__main__":
    main()
