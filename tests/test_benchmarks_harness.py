"""The benchmark harness's aetk_jax side: settings, data, timing, reports and plots.

pythae and torch are not needed (and not imported): the checks that compare the
two libraries live in ``benchmarks/parity.py`` and run inside the benchmark.
"""
from __future__ import annotations

import json
import math
import os
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import aetk_jax as aet  # noqa: E402
from benchmarks import config, data, jax_side, memory, plots, report  # noqa: E402
from benchmarks.julia_export import export  # noqa: E402
from benchmarks.run import bench_model, time_interleaved, variants_for  # noqa: E402


# --------------------------------------------------------------------------- settings


def test_mmd_kernel_matches_pythae_rbf_convention():
    # pythae's RBF kernel: exp(-|a-b|^2 / (2 d bandwidth^2)); ours with rho = mmd_kernel_rho(s)
    s = config.Setting(model="mmdvae", kernel_bandwidth=0.7)
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(5, 3)), rng.normal(size=(4, 3))
    sq = ((a[:, None, :] - b[None, :, :]) ** 2).sum(-1)
    want = np.exp(-sq / (2 * 3 * 0.7**2))
    got = aet.mmdvae.gaussian_kernel(jnp.asarray(a, jnp.float32), jnp.asarray(b, jnp.float32), rho=config.mmd_kernel_rho(s))
    np.testing.assert_allclose(np.asarray(got), want, rtol=2e-6, atol=1e-7)


def test_hyperparameters_translate_between_libraries():
    s = config.Setting(model="rhvae", batch_size=64, K=4, eps=2e-3, beta0=0.5, T=0.9, metric_lam=0.05, n_fixed_point=2)
    assert config.aetk_hyper(s) == {"K": 4, "eps": 2e-3, "beta0": 0.5, "n_fixed_point": 2, "flow_gradient": "detached"}
    # pythae's RHVAE uses its beta_zero as the square root of beta_0; its HVAE takes the root itself
    assert config.pythae_hyper(s) == {"n_lf": 4, "eps_lf": 2e-3, "beta_zero": pytest.approx(math.sqrt(0.5)),
                                      "temperature": 0.9, "regularization": 0.05}
    assert config.pythae_hyper(s.replace(model="hvae"))["beta_zero"] == 0.5
    assert s.centroids == 64 and s.to_dict()["n_centroids"] == 64
    assert s.replace(n_centroids=16).centroids == 16
    m = config.Setting(model="mmdvae", batch_size=32, mmd_lam=3.0, mmd_alpha=0.25)
    hp, pp = config.aetk_hyper(m), config.pythae_hyper(m)
    # both libraries weight the MMD by lam + alpha - 1 and the KL by 1 - alpha
    assert hp["lam"] + hp["alpha"] - 1 == pp["lbd"] + pp["alpha"] - 1 == 2.25
    assert hp["n_latent_samples"] == 32  # pythae draws one prior sample per code
    with pytest.raises(ValueError, match="model"):
        config.Setting(model="nope")
    with pytest.raises(ValueError, match="batch_size"):
        config.Setting(batch_size=1)


def test_scaling_grid_per_model():
    q, f = config.quick_suite(), config.full_suite()
    assert {m: len(config.scaling_points(q, m)) for m in ("vae", "hvae", "rhvae")} == {"vae": 4, "hvae": 2, "rhvae": 4}
    # full: batch 8 points, latent 6, K 6 (HVAE, RHVAE), centroids 5 (RHVAE)
    assert {m: len(config.scaling_points(f, m)) for m in ("vae", "hvae", "rhvae")} == {"vae": 14, "hvae": 20, "rhvae": 25}
    assert f.scaling["batch_size"][0] == 32 and f.scaling["batch_size"][-1] == 4096
    assert (f.scaling["latent_dim"][0], f.scaling["latent_dim"][-1], f.scaling["K"][-1]) == (2, 64, 10)
    assert (f.scaling["n_centroids"][0], f.scaling["n_centroids"][-1]) == (16, 4096)
    q = f
    base = config.default_setting("rhvae", "mnist-synthetic").to_dict()
    for axis, value, s in config.scaling_points(q, "rhvae"):
        d = s.to_dict()
        changed = {k for k in d if d[k] != base[k]}
        # each point changes its own axis only (the centroid count follows the batch by default)
        assert changed <= {axis, "n_centroids"}
        assert (s.centroids if axis == "n_centroids" else getattr(s, axis)) == value
    rh = config.default_setting("rhvae", "digits")
    full = "full gradient (aetk_jax default)"
    assert [v[0] for v in variants_for(rh, config.quick_suite())] == [full, "n_fixed_point=1"]
    assert [v[1] for v in variants_for(rh, f)] == [{"flow_gradient": "full"}, {"n_fixed_point": 1},
                                                   {"n_fixed_point": 3}]
    assert variants_for(config.default_setting("vae", "digits"), f) == []
    (label, over, _), = variants_for(config.default_setting("hvae", "digits"), f)
    assert label == full and over == {"potential_grad": aet.hvae.grad_potential_energy}
    # the main rows differentiate what pythae differentiates
    assert config.aetk_hyper(rh)["flow_gradient"] == "detached"
    assert config.aetk_hyper(rh.replace(matched_gradient=False))["flow_gradient"] == "full"
    hv = config.default_setting("hvae", "digits")
    assert jax_side.build(hv)[2]["potential_grad"] is jax_side.grad_potential_first_order
    assert "potential_grad" not in jax_side.build(hv.replace(matched_gradient=False))[2]


def test_get_suite_restricts_models():
    s = config.get_suite("quick", ["rhvae", "vae"])
    assert s.models == ("vae", "rhvae") and s.scaling_model_list() == ("vae", "rhvae")
    assert s.scaling_models["K"] == () and s.scaling_models["batch_size"] == ("vae", "rhvae")
    with pytest.raises(ValueError, match="unknown model"):
        config.get_suite("quick", ["gan"])


# --------------------------------------------------------------------------- data


def test_mnist_synthetic_is_binary_reproducible_and_as_documented():
    x = data.mnist_synthetic(400, seed=3)
    assert x.shape == (400, 784) and x.dtype == np.float32
    assert set(np.unique(x)) <= {0.0, 1.0}
    np.testing.assert_array_equal(x, data.mnist_synthetic(400, seed=3))
    assert not np.array_equal(x, data.mnist_synthetic(400, seed=4))
    # the documented model: logit = z.w - 1.5 with z.w ~ N(0, |w|^2), E|w|^2 = 9, so the expected
    # on-fraction is E[sigmoid(-1.5 + 3 g)], g ~ N(0, 1) (Gauss-Hermite quadrature, independent of the code)
    g, wts = np.polynomial.hermite_e.hermegauss(80)
    expected = float(np.sum(wts / (1 + np.exp(1.5 - 3 * g))) / np.sqrt(2 * np.pi))
    assert abs(x.mean() - expected) < 0.02, (x.mean(), expected)


def test_digits_binary_is_the_thresholded_training_split():
    x = data.digits_binary()
    train, _ = aet.data.load_digits()
    assert x.shape == (len(train.x), 64) == (1438, 64)
    np.testing.assert_array_equal(x, (train.x > 0.5).astype(np.float32))
    assert data.load("digits", 2000).shape == (2000, 64)  # repeated to reach larger batches


# --------------------------------------------------------------------------- the aetk_jax runner


@pytest.fixture(scope="module")
def small_runner():
    s = config.Setting(model="vae", dataset="digits", hidden=(16,), batch_size=32)
    x = data.load("digits", 256)
    return s, x, jax_side.JaxRunner(s, x, n_batches=2)


def test_runner_compiles_the_fit_step_and_steps_like_adam(small_runner):
    s, x, jr = small_runner
    comp = jr.compile()
    n_params = (64 * 16 + 16) + 2 * (16 * 2 + 2) + (2 * 16 + 16) + (16 * 64 + 64)
    assert jax_side.n_params(jr.variables) == n_params
    # the step's arguments hold the parameters and Adam's two moments (float32)
    assert comp["xla_memory"]["argument_size_in_bytes"] >= 3 * 4 * n_params
    assert comp["compile_s"] > 0 and comp["compile_cpu_s"] > 0
    before = jr.state.params
    want = aet.vae.loss(jr.model, jr.state.variables, jr.batches[0], jr.keys[0])
    jr.step()
    np.testing.assert_allclose(jr.loss_value(), float(want), rtol=1e-5)
    # Adam's first update moves every parameter with a non-zero gradient by lr * g / (|g| + eps) ~ lr
    deltas = jax.tree_util.tree_leaves(jax.tree_util.tree_map(lambda a, b: jnp.max(jnp.abs(a - b)), jr.state.params, before))
    assert max(float(d) for d in deltas) == pytest.approx(s.learning_rate, rel=1e-2)
    assert int(jr.state.step) == 1


def test_runner_epoch_runs_every_full_batch(small_runner):
    s, x, jr = small_runner
    info = jr.compile_epoch(x)
    assert info["epoch_compile_s"] > 0
    start = int(jr.state.step)
    wall, cpu = jr.epoch(0)
    assert int(jr.state.step) - start == len(x) // s.batch_size == 8
    assert wall > 0 and cpu >= 0


def test_minimal_epoch_is_the_same_network_scanned_over_every_batch():
    s = config.Setting(model="vae", dataset="digits", hidden=(16,), batch_size=32)
    x = data.load("digits", 256)
    bare = jax_side.MinimalEpoch(s, x)
    params = bare.state[0]["params"]
    shapes = sorted(tuple(v["kernel"].shape) for v in params.values())
    assert shapes == sorted(jax_side.dense_shapes(s)[:1] + [(16, 2), (16, 2)] + jax_side.dense_shapes(s)[2:])
    losses = []
    for e in range(6):
        wall, cpu = bare.epoch(e)
        assert wall > 0 and cpu >= 0
        adam = bare.state[1][0]
        assert int(adam.count) == (e + 1) * (len(x) // s.batch_size)  # one Adam update per batch
        losses.append(float(bare.compiled(*bare.state, bare.xb, jax.random.key(99))[1].mean()))
    assert losses[-1] < losses[0]  # it trains


def test_unrolled_flops_count_every_iteration_of_every_loop():
    n = 64
    one = 2 * n**3  # the flops of one n x n product

    def f(x):
        y = jax.lax.fori_loop(0, 3, lambda i, a: a @ a, x)  # 3 products (a scan: static bounds)
        z = jax.lax.scan(lambda c, _: (jax.lax.fori_loop(0, 2, lambda i, a: a @ a, c), None), y, None, length=4)[0]
        return jax.lax.cond(jnp.sum(z) > 0, lambda: z @ z, lambda: -z)  # 4 x 2 nested, then 1 in a branch

    got = jax_side.unrolled_flops(f, jnp.ones((n, n)))
    # XLA's cost analysis of the program as written counts each loop body once: 3 products, not 12
    assert 3 * one <= got["rolled_flops"] < 3.1 * one
    assert 12 * one <= got["flops"] < 12.1 * one
    assert (got["scans"], got["whiles"]) == (3, 0)
    # a while_loop has no static trip count: left rolled and reported
    w = jax_side.unrolled_flops(lambda x: jax.lax.while_loop(lambda c: c[0] < 5, lambda c: (c[0] + 1, c[1] @ c[1]),
                                                             (0, x))[1], jnp.ones((n, n)))
    assert w["whiles"] == 1 and one <= w["flops"] < 1.1 * one


def test_step_flops_grow_linearly_with_the_leapfrog_steps():
    counts = {}
    for k in (1, 2, 3):
        s = config.Setting(model="hvae", dataset="digits", hidden=(16,), batch_size=16, K=k)
        counts[k] = jax_side.JaxRunner(s, data.load("digits", 64), n_batches=1).step_flops()
    per_step = counts[2]["flops"] - counts[1]["flops"]
    assert per_step > 0.05 * counts[1]["flops"]  # a leapfrog step costs a decoder pass and its gradient
    np.testing.assert_allclose(counts[3]["flops"] - counts[2]["flops"], per_step, rtol=1e-3)
    # as compiled, K = 2 and K = 3 report the same flops (one loop body)
    np.testing.assert_allclose(counts[3]["rolled_flops"], counts[2]["rolled_flops"], rtol=1e-3)
    assert counts[3]["flops"] > counts[3]["rolled_flops"] + per_step  # the rolled count misses iterations


def test_floor_pairs_each_epoch_with_the_rate_beside_it(small_runner):
    s, x, jr = small_runner
    jr.compile_epoch(x)
    fl = jax_side.floor(jr, 2.0, 1.5, rounds=3, calls=4)
    flops = jr.step_flops()["flops"]
    pr = fl["paired"]
    assert len(pr["epoch_step_ms"]) == len(pr["gflops_per_s"]) == len(pr["epoch_step_over_floor"]) == 3
    want = [t / (flops / (g * 1e9) * 1e3) for t, g in zip(pr["epoch_step_ms"], pr["gflops_per_s"])]
    np.testing.assert_allclose(pr["epoch_step_over_floor"], want, rtol=1e-12)
    assert fl["epoch_step_over_floor"] == pytest.approx(float(np.median(want)), rel=1e-12)
    assert fl["matmul"]["gflops_per_s"] == pytest.approx(float(np.median(pr["gflops_per_s"])), rel=1e-12)
    assert fl["floor_ms"] == pytest.approx(flops / (fl["matmul"]["gflops_per_s"] * 1e9) * 1e3, rel=1e-12)
    assert fl["epoch_step_over_floor_main"] == pytest.approx(1.5 / fl["floor_ms"], rel=1e-12)
    assert fl["step_over_floor"] == pytest.approx(2.0 / fl["floor_ms"], rel=1e-12)
    assert fl["step_gflop"] == pytest.approx(flops / 1e9) and fl["flop_count"]["while_loops_left"] == 0


def test_first_order_potential_gradient_has_the_value_and_no_derivative():
    s = config.Setting(model="hvae", dataset="digits", hidden=(4,), batch_size=8)
    model, _, _ = jax_side.build(s)
    x = jnp.asarray(data.load("digits", 8))
    v = jax.jit(model.init)(jax.random.key(0), x)
    z = jnp.full((8, 2), 0.3)
    first = jax.jit(jax_side.grad_potential_first_order, static_argnums=0)
    ref = jax.jit(aet.hvae.grad_potential_energy, static_argnums=0)
    np.testing.assert_allclose(first(model, v, x, z), ref(model, v, x, z), rtol=1e-6)
    g = jax.jit(jax.grad(lambda p: jnp.sum(first(model, {"params": p}, x, z) ** 2)))(v["params"])
    assert all(float(jnp.max(jnp.abs(leaf))) == 0.0 for leaf in jax.tree_util.tree_leaves(g))
    # ...although the value does depend on the parameters (so the zero derivative is the stop_gradient's doing)
    moved = jax.tree_util.tree_map(lambda a: a + 0.1, v)
    diff = first(model, moved, x, z) - first(model, v, x, z)
    assert float(jnp.max(jnp.abs(diff))) > 1e-3


def test_unavailable_model_is_recorded_not_raised(monkeypatch):
    monkeypatch.delattr(aet.rhvae, "G_inv")
    with pytest.raises(jax_side.ModelUnavailable, match="aet.rhvae.G_inv"):
        jax_side.check_available("rhvae")
    s = config.default_setting("rhvae", "digits")
    rec = bench_model(s, config.tiny_suite(), None, None, "cpu", memory=False, log=lambda m: None)
    assert rec["status"] == "not available" and "aet.rhvae.G_inv" in rec["error"]


# --------------------------------------------------------------------------- timing


class _Fake:
    def __init__(self, name, log, sleep_s=0.0):
        self.name, self.log, self.sleep_s = name, log, sleep_s

    def step(self):
        self.log.append(self.name)
        if self.sleep_s:
            time.sleep(self.sleep_s)


def test_time_interleaved_alternates_and_separates_cpu_from_wall():
    log: list[str] = []
    a, b = _Fake("a", log, 0.004), _Fake("b", log)
    wall, cpu = time_interleaved([a, b], warmup=2, rounds=3, steps=2)
    assert log[:4] == ["a", "a", "b", "b"]  # warm-up
    assert log[4:] == ["a", "a", "b", "b", "b", "b", "a", "a", "a", "a", "b", "b"]
    assert [len(w) for w in wall] == [6, 6] and [len(c) for c in cpu] == [6, 6]
    assert min(wall[0]) >= 0.004  # a sleeps 4 ms per step...
    assert np.median(cpu[0]) < 0.002  # ...which costs (almost) no CPU time


def test_summarize_and_ratio():
    s = report.summarize([0.001, 0.002, 0.003, 0.004, 0.005])
    assert (s["median_ms"], s["p25_ms"], s["p75_ms"], s["min_ms"], s["n"]) == pytest.approx((3, 2, 4, 1, 5))
    assert report.summarize([0.004, 0.001, 0.003, 0.002])["median_ms"] == pytest.approx(2.5)
    assert report.ratio(6.0, 2.0) == 3.0
    assert report.ratio(None, 2.0) is None and report.ratio(1.0, 0.0) is None


def test_peak_sampler_sees_an_allocation():
    sampler = memory.PeakSampler(interval_s=1e-4).start()
    base = sampler.peak
    buf = np.ones(40 * 2**20 // 8)  # 40 MiB, every page touched
    time.sleep(0.02)
    peak = sampler.stop()
    del buf
    assert peak - base >= 30 * 2**20


# --------------------------------------------------------------------------- reports


def _results(with_scaling=False):
    def rec(model, a_ms, p_ms, status="ok", parity_ok=True, compile_s=3.0):
        r = {"model": model, "dataset": "mnist-synthetic", "setting": {"batch_size": 128, "latent_dim": 2},
             "status": status}
        if status == "ok":
            r.update(parity={"ok": parity_ok, "checks": []},
                     aetk_jax={"step": {"median_ms": a_ms}, "compile_s": compile_s, "epoch_s": 1.0},
                     pythae={"step": {"median_ms": p_ms}, "epoch_loop_s": 2.0, "epoch_trainer_s": 4.0},
                     ratio={"step": p_ms / a_ms, "step_cpu": p_ms / a_ms, "epoch_loop": 2.0, "epoch_trainer": 4.0})
        else:
            r["error"] = "model not available in this aetk_jax: missing aet.rhvae.loss"
        return r

    res = {"suite": "quick", "device": "cpu", "device_name": "CPU (test)", "machine": {"cpu": "test"},
           "versions": {"jax": "x"}, "notes": [],
           "models": [rec("vae", 10.0, 25.0), rec("hvae", 10.0, 49.0, parity_ok=False),
                      rec("rhvae", 0, 0, status="not available")]}
    if with_scaling:
        res["scaling"] = [{"model": "vae", "axis": "batch_size", "value": v, "aetk_jax_ms": v / 10, "pythae_ms": v / 5}
                          for v in (32, 64, 128)]
    return res


def test_targets_are_issue_17s_goals():
    """Epoch ratios and fit's compile excess from the digits-b64 rows, the FLOP floor from the MNIST rows."""
    res = _results()
    for r in list(res["models"]):  # the same rows in the issue's digits setting, with fit's compile excess
        d = json.loads(json.dumps(r))
        d["dataset"], d["setting"] = "digits-b64", {**d["setting"], "batch_size": 64}
        d.setdefault("aetk_jax", {})["fit_compile_excess_s"] = 2.0
        if d["model"] == "vae":  # the two fresh processes of benchmarks.compile_cache, the bare scan
            d["aetk_jax"]["fit_compile_cache"] = {"cold": {"fit_compile_excess_s": 2.5}, "warm": {"fit_compile_excess_s": 0.4}}
            d["aetk_jax"].update(minimal_epoch_s=0.5, epoch_beside_minimal_s=0.8)
            d["floor"], d["epoch_steps"] = {"floor_ms": 40.0, "matmul": {"gflops_per_s": 20.0}}, 5
        res["models"].append(d)
    res["models"][0]["floor"] = {"step_gflop": 0.01, "floor_ms": 8.0, "step_over_floor": 1.25,
                                 "matmul": {"gflops_per_s": 50.0}, "epoch_step_ms": 13.6, "epoch_step_over_floor": 1.7,
                                 "flop_count": {"rolled_gflop": 0.005, "scans_unrolled": 2, "while_loops_left": 0}}
    t = {x["target"].split(" (")[0]: x for x in report.evaluate_targets(res)}
    vae = t["vae epoch ratio pythae/aetk_jax >= 10"]
    assert vae["met"] is False and vae["measured"] == pytest.approx(2.0)  # pythae loop 2 s / aetk_jax 1 s
    assert "takes 500.0 ms an epoch against aetk_jax's 800.0 ms in rounds of their own (pythae loop / bare scan: 4.0)" in vae["note"]
    # the epoch's FLOP floor beside it: 5 steps x 40 ms; x10 would need the 1 s epoch at 2 s / 10 = 1.00x the floor
    assert ("the epoch's FLOP floor 200.00 ms (5 steps at 20.0 GFLOP/s): aetk_jax's epoch is 5.00x it, "
            "and x10 would need 1.00x it") in vae["note"]
    assert t["hvae epoch ratio pythae/aetk_jax >= 8"]["note"].startswith("parity")
    assert t["rhvae epoch ratio pythae/aetk_jax >= 20"]["met"] is None
    assert t["vae fit compile"]["met"] is True and t["vae fit compile"]["measured"] == 2.0
    assert "fresh process 2.5 s" in t["vae fit compile"]["note"] and "cache (JAX_COMPILATION_CACHE_DIR) 0.4 s" in t["vae fit compile"]["note"]
    assert "cache" not in t["rhvae fit compile"]["note"]  # not measured: no cache note
    # the floor goal is judged on fit's epoch per step; the jitted step alone is in the note
    fl = t["vae fit's epoch, per step, <= 1.5x its FLOP floor"]
    assert fl["met"] is False and fl["measured"] == 1.7 and "50.0 GFLOP/s" in fl["note"]
    assert "epoch 13.60 ms a step; the jitted step called alone 1.25x" in fl["note"]
    assert "(XLA's count with the step's 2 scans unrolled; as compiled, each loop body once, 0.0050 GFLOP)" in fl["note"]
    assert t["hvae step <= 1.5x its FLOP floor"]["met"] is None  # no floor measured (an older record's label)
    del res["models"][0]["floor"]["epoch_step_over_floor"]  # a record from before the epoch was measured
    old = {x["target"].split(" (")[0]: x for x in report.evaluate_targets(res)}["vae step <= 1.5x its FLOP floor"]
    assert old["met"] is True and old["measured"] == 1.25


def test_json_and_markdown_outputs(tmp_path):
    res = _results()
    res["targets"] = report.evaluate_targets(res)
    p = report.write_json(res, str(tmp_path / "quick-cpu.json"))
    assert json.loads(Path(p).read_text()) == json.loads(json.dumps(res))
    md = Path(report.write_markdown(res, str(tmp_path / "quick-cpu.md"))).read_text()
    assert "**2.50×**" in md and "**4.90×**" in md  # pythae / aetk_jax per model
    assert "**FAILED**" in md and "not available" in md
    table = report.readme_table(res).strip().splitlines()
    assert len(table) == 2 + 3 and "2.5×" in table[2]
    assert report.output_stem("quick", "gpu", "NVIDIA H100 80GB HBM3") == "quick-gpu-NVIDIA_H100_80GB_HBM3"
    assert report.output_stem("full", "cpu") == "full-cpu"


def test_shared_machine_note():
    # compared with the machine's cores, also when the run itself was pinned to fewer
    assert "shared" in report.shared_machine_note({"logical_cpus": 2, "usable_cpus": 1, "load_average_start": [5.0, 4, 3]})
    assert report.shared_machine_note({"logical_cpus": 2, "usable_cpus": 1, "load_average_start": [0.5, 1, 1],
                                       "load_average_end": [1.5, 1, 1]}) is None


def test_scaling_figure_is_a_png(tmp_path):
    paths = plots.scaling_figures(_results(with_scaling=True), str(tmp_path / "quick-cpu"))
    assert [os.path.basename(p) for p in paths] == ["quick-cpu-scaling-batch_size.png"]
    head = Path(paths[0]).read_bytes()
    assert head[:8] == b"\x89PNG\r\n\x1a\n" and len(head) > 5000


def test_julia_export_writes_the_exact_data(tmp_path):
    cfg = export("tiny", str(tmp_path))
    shapes = json.loads((tmp_path / "shapes.json").read_text())
    n, d = shapes["digits"]
    x = np.fromfile(tmp_path / "digits.f32", dtype=np.float32).reshape(n, d)
    np.testing.assert_array_equal(x, data.load("digits", n))
    assert cfg["settings"][0]["model"] == "vae" and cfg["settings"][0]["input_dim"] == 64
    assert json.loads((tmp_path / "config.json").read_text())["suite"]["name"] == "tiny"


@pytest.mark.slow
def test_thread_configurations_take_effect_in_their_processes():
    from benchmarks import threads

    tiny = [("vae", "digits", 256, 1)]
    cores = len(os.sched_getaffinity(0))
    pinned = threads._run_config("pinned, 1 thread", tiny, 300)
    assert pinned["cores"] == 1 and pinned["vae digits"] > 0
    assert threads._run_config("default", tiny, 300)["cores"] == cores
    fake = {"machine": {"cpu": "x", "logical_cpus": 2}, "rounds": 1, "settings": tiny,
            "cells": {"idle": {"default": {"vae digits": 4.0}, "pinned": {"vae digits": 3.0}}}}
    md = threads.markdown(fake)
    assert "| idle | default | 4.0 (1.00×) |" in md and "| idle | pinned | 3.0 (0.75×) |" in md


def test_guard_cost_variants_compute_the_same_training_and_the_guards_keep_a_nan_batch_out():
    """jax_side.minimal_scan's guards (benchmarks.guard_cost times them): on finite data the three
    epochs give the same parameters (the guard only decides); with a NaN batch the select and cond guards give the same, finite, parameters
    (that batch left out), while the unguarded epoch's go NaN."""
    import optax

    net = jax_side._MinimalVAE((8,), 2, 6)
    rng = np.random.default_rng(0)
    xb = jnp.asarray(rng.integers(0, 2, size=(4, 8, 6)), jnp.float32)
    key = jax.random.key(0)
    params = net.init(key, xb[0], key)
    opt = optax.adam(1e-2)
    leaves = lambda t: np.concatenate([np.ravel(a) for a in jax.tree_util.tree_leaves(t)])  # noqa: E731
    run = {v: jax_side.minimal_scan(net, opt, v) for v in jax_side.MINIMAL_GUARDS}
    out = {v: leaves(f(params, opt.init(params), xb, key)[0][0]) for v, f in run.items()}
    np.testing.assert_allclose(out["select"], out["bare"], rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(out["cond"], out["bare"], rtol=1e-6, atol=1e-7)
    assert np.max(np.abs(out["bare"] - leaves(params))) > 1e-3  # four Adam steps moved them
    bad = xb.at[2, 0, 0].set(jnp.nan)
    out = {v: leaves(f(params, opt.init(params), bad, key)[0][0]) for v, f in run.items()}
    assert np.isnan(out["bare"]).any() and np.isfinite(out["cond"]).all()
    np.testing.assert_array_equal(out["select"], out["cond"])
    with pytest.raises(ValueError, match="guard"):
        jax_side.minimal_scan(net, opt, "both")
