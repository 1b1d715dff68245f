"""Data parallel training: sharded steps, shard_map, pmap, fit over a mesh, two processes.

The multi-device cases run in subprocesses started with
``XLA_FLAGS=--xla_force_host_platform_device_count=N`` (it must be set before
JAX is imported), all at once: one process with 4 devices, two processes with
2 devices each joined over loopback (``jax.distributed`` with gloo CPU
collectives), and one process with a single device that computes the
references with the plain single-device code path (``mesh=None``). The tests
compare their numbers. Measured cost: about 180 CPU-seconds in all, mostly
the workers' compilations (jax 0.10.2: 56 for the 1-device worker, 83 for the
4-device one, 22 for each of the two processes), i.e. roughly 90 s on a quiet
2-core machine.
"""
from __future__ import annotations

import functools
import json
import os
import socket
import subprocess
import sys
import time

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import aetk_jax as aet

TESTS = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(TESTS)
MODELS = ["vae", "hvae", "rhvae"]
BATCH = 16  # one step: 4 examples per device on 4 devices
FIT_N, FIT_BATCH, FIT_EPOCHS = 256, 32, 2
STEP_LR = 0.1  # SGD for the one-step checks: parameter differences are lr x gradient differences
STEP_KEY = 2


# ---------------------------------------------------------------------------
# shared between the main process and the workers (no side effects at import)


def build(name: str):
    """``(model, loss_fn)`` for a model name (``"ae"``: a deterministic loss); hidden 16, latent 2."""
    if name == "ae":
        model = aet.AE(aet.Encoder(aet.MLP([16], final_activation=nn.relu), 2),
                       aet.Decoder(aet.MLP([16], final_activation=nn.relu), 64))
        return model, functools.partial(aet.ae.loss, model)
    enc = aet.JointGaussianLogEncoder(aet.MLP([16], final_activation=nn.relu), 2)
    dec = aet.BernoulliDecoder(aet.MLP([16], final_activation=nn.relu), 64)
    if name == "vae":
        model = aet.VAE(enc, dec)
        return model, functools.partial(aet.vae.loss, model)
    if name == "hvae":
        model = aet.HVAE(enc, dec)
        return model, functools.partial(aet.hvae.loss, model, K=2, eps=0.05)
    if name == "rhvae":
        metric = aet.rhvae.MetricNetwork(aet.MLP([16], final_activation=nn.relu), 2)
        model = aet.RHVAE(enc, dec, metric, 8, 0.8, 1e-2)
        return model, functools.partial(aet.rhvae.loss, model, K=1, eps=0.01, n_fixed_point=5)
    raise ValueError(name)


def digits() -> np.ndarray:
    return np.asarray(aet.data.load_digits()[0].x[:FIT_N])


def init_state(name: str):
    model, loss_fn = build(name)
    x = digits()[:BATCH]
    variables = model.init(jax.random.key(1), x)
    return loss_fn, aet.train.init_state(variables, optax.sgd(STEP_LR)), x


def ae_phases():
    """``(phases, state, x)``: the AE trained in two phases (encoder, then decoder with half the rate)."""
    loss_fn, state, x = init_state("ae")
    phases = (aet.train.Phase("encoder", loss_fn, optax.sgd(STEP_LR)),
              aet.train.Phase("decoder", loss_fn, optax.sgd(STEP_LR / 2), group="decoder"))
    return phases, aet.train.init_state(state.variables, phases=phases), x


def mesh_2x2():
    """4 devices as a (2, 2) mesh ``("replica", "data")``: a batch split over its second axis only."""
    return jax.sharding.Mesh(np.asarray(jax.devices(), dtype=object).reshape(2, 2), ("replica", "data"))


def flat(tree) -> np.ndarray:
    return np.concatenate([np.ravel(np.asarray(a, np.float64)) for a in jax.tree_util.tree_leaves(jax.device_get(tree))])


def shardwise(loss_fn, n: int):
    """The loss pmap computes: the mean over ``n`` shards of the loss of shard s with key fold_in(key, s)."""

    def loss(variables, x, key):
        keys = jax.vmap(lambda s: jax.random.fold_in(key, s))(jnp.arange(n))
        shards = x.reshape(n, x.shape[0] // n, *x.shape[1:])
        return jnp.mean(jax.vmap(lambda xs, k: loss_fn(variables, xs, k))(shards, keys))

    return loss


def fit_vae(data, batch_size: int = FIT_BATCH, **kw):
    model, loss_fn = build("vae")
    return aet.train.fit(
        model, loss_fn, data, key=jax.random.key(3), epochs=FIT_EPOCHS, batch_size=batch_size, progress=False, **kw
    )


# ---------------------------------------------------------------------------
# workers (each runs in its own subprocess; XLA_FLAGS fixes its device count)


def _worker_single(out: str) -> None:
    """The references, on one device: one step per model (plain loss and per-shard loss), and fit."""
    assert jax.device_count() == 1, jax.devices()
    key = jax.random.key(STEP_KEY)
    res: dict = {"draw": np.asarray(jax.random.normal(key, (BATCH, 3))).tolist()}
    for name in MODELS:
        loss_fn, state, x = init_state(name)
        res[f"{name}/init_params"] = flat(state.params).tolist()
        new, metrics = aet.train.make_step(loss_fn, optax.sgd(STEP_LR))(state, x, key)
        res[f"{name}/loss"], res[f"{name}/params"] = float(metrics["loss"]), flat(new.params).tolist()
        new, metrics = aet.train.make_step(shardwise(loss_fn, 4), optax.sgd(STEP_LR))(state, x, key)
        res[f"{name}/shardwise_loss"], res[f"{name}/shardwise_params"] = float(metrics["loss"]), flat(new.params).tolist()
    # deterministic losses (the AE, and the AE in two phases) on the global batch
    loss_fn, state, x = init_state("ae")
    new, metrics = aet.train.make_step(loss_fn, optax.sgd(STEP_LR))(state, x, key)
    res["ae/init_params"], res["ae/loss"] = flat(state.params).tolist(), float(metrics["loss"])
    res["ae/params"] = flat(new.params).tolist()
    phases, state, x = ae_phases()
    new, metrics = aet.train.make_step(phases=phases)(state, x, key)
    res["ae_phases/metrics"], res["ae_phases/params"] = _floats(metrics), flat(new.params).tolist()
    variables, history = fit_vae(digits(), val_data=digits()[:64])
    res["fit_params"], res["fit_history"] = flat(variables["params"]).tolist(), history
    _dump(res, out)


def _worker_devices(out: str) -> None:
    """4 forced CPU devices: sharded steps, pmap steps, a sharded draw, fit over a mesh, errors."""
    assert jax.device_count() == 4, jax.devices()
    mesh = aet.parallel.data_mesh()
    key = jax.random.key(STEP_KEY)
    res: dict = {"threefry_partitionable": bool(jax.config.jax_threefry_partitionable)}

    # a draw for an array sharded over 4 devices (compared with the 1-device draw)
    sharded = jax.jit(lambda k: jax.random.normal(k, (BATCH, 3)), out_shardings=aet.parallel.batch_sharding(mesh))(key)
    res["draw_shards"] = len(sharded.addressable_shards)
    res["draw"] = np.asarray(sharded).tolist()

    for name in MODELS:
        loss_fn, state, x = init_state(name)
        rep = aet.parallel.replicate(state, mesh)
        # sharded path: the batch (a host array) is split over 4 devices inside the jitted step
        new, metrics = aet.train.make_step(loss_fn, optax.sgd(STEP_LR), mesh=mesh)(rep, x, key)
        res[f"{name}/sharded_loss"], res[f"{name}/sharded_params"] = float(metrics["loss"]), flat(new.params).tolist()
        res[f"{name}/param_devices"] = len(jax.tree_util.tree_leaves(new.params)[0].sharding.device_set)
        # pmap path: key broadcast, each device folds in its index, gradients pmean-ed
        pstep = aet.parallel.pmap_step(loss_fn, optax.sgd(STEP_LR))
        pnew, pmetrics = pstep(aet.parallel.pmap_replicate(state, 4), aet.parallel.split_for_pmap(x, 4), key)
        res[f"{name}/pmap_loss"] = np.asarray(pmetrics["loss"]).tolist()
        res[f"{name}/pmap_params"] = [flat(jax.tree_util.tree_map(lambda a: a[i], pnew.params)).tolist() for i in range(4)]
        # shard_map path: the same per-device step as pmap, the state replicated, the batch split by shard_map
        snew, smetrics = aet.parallel.shard_map_step(loss_fn, optax.sgd(STEP_LR), mesh)(state, x, key)
        res[f"{name}/shard_map_loss"] = float(smetrics["loss"])
        res[f"{name}/shard_map_params"] = flat(snew.params).tolist()
        res[f"{name}/shard_map_param_devices"] = len(jax.tree_util.tree_leaves(snew.params)[0].sharding.device_set)
    _shard_map_deterministic(res, key)
    # the sharded path with the per-shard loss pmap computes (VAE; the other models are compared on 1 device)
    loss_fn, state, x = init_state("vae")
    rep = aet.parallel.replicate(state, mesh)
    new, metrics = aet.train.make_step(shardwise(loss_fn, 4), optax.sgd(STEP_LR), mesh=mesh)(rep, x, key)
    res["vae/sharded_shardwise_loss"], res["vae/sharded_shardwise_params"] = float(metrics["loss"]), flat(new.params).tolist()

    # fit over an explicit 4-device mesh; a callback records where the parameters live
    seen = []
    cb = lambda e, v, h: seen.append(len(jax.tree_util.tree_leaves(v)[0].sharding.device_set))  # noqa: E731
    variables, history = fit_vae(digits(), mesh=mesh, callbacks=[cb])
    res["fit_params"], res["fit_history"], res["fit_param_devices"] = flat(variables["params"]).tolist(), history, seen

    # batch sizes not divisible by the device count (explicit mesh, default mesh, make_step)
    errors = {}
    for label, call in {
        "fit_mesh": lambda: fit_vae(digits(), mesh=mesh, batch_size=30),
        "fit_default_mesh": lambda: fit_vae(digits(), batch_size=30),
        "make_step": lambda: aet.train.make_step(loss_fn, optax.sgd(STEP_LR), mesh=mesh)(rep, x[:6], key),
        "shard_map_step": lambda: aet.parallel.shard_map_step(loss_fn, optax.sgd(STEP_LR), mesh)(state, x[:6], key),
        "shard_map_step_2x2": lambda: aet.parallel.shard_map_step(loss_fn, optax.sgd(STEP_LR), mesh_2x2(), "data")(
            state, x[:5], key),
    }.items():
        try:
            call()
            errors[label] = None
        except ValueError as err:
            errors[label] = str(err)
    res["errors"] = errors
    _dump(res, out)


def _shard_map_deterministic(res: dict, key: jax.Array) -> None:
    """shard_map_step with deterministic losses: the AE on the 4-device and the (2, 2) mesh, and in two phases."""
    loss_fn, state, x = init_state("ae")
    meshes = (("ae/shard_map", aet.parallel.data_mesh(), None), ("ae/shard_map_2x2", mesh_2x2(), "data"))
    for label, mesh, axis in meshes:
        new, metrics = aet.parallel.shard_map_step(loss_fn, optax.sgd(STEP_LR), mesh, axis)(state, x, key)
        res[f"{label}_loss"], res[f"{label}_params"] = float(metrics["loss"]), flat(new.params).tolist()
    phases, state, x = ae_phases()
    new, metrics = aet.parallel.shard_map_step(mesh=aet.parallel.data_mesh(), phases=phases)(state, x, key)
    res["ae_phases/shard_map_metrics"], res["ae_phases/shard_map_params"] = _floats(metrics), flat(new.params).tolist()
    pnew, pmetrics = aet.parallel.pmap_step(phases=phases)(
        aet.parallel.pmap_replicate(state, 4), aet.parallel.split_for_pmap(x, 4), key)
    res["ae_phases/pmap_metrics"] = _floats(aet.parallel.unreplicate(pmetrics))
    res["ae_phases/pmap_params"] = flat(aet.parallel.unreplicate(pnew.params)).tolist()


def _floats(metrics: dict) -> dict:
    return {k: float(v) for k, v in metrics.items()}


def _worker_process(out: str) -> None:
    """One of two processes (2 CPU devices each), configured through the AETK_* variables."""
    info = aet.parallel.initialize()
    data = aet.parallel.process_shard(digits())
    val = aet.parallel.process_shard(digits()[:64])
    variables, history = fit_vae(data, val_data=val, checkpoint_dir=os.environ["CKPT_DIR"])
    # a global batch from each process's first 4 rows, gathered back to every process
    mesh = aet.parallel.data_mesh()
    batch = aet.parallel.shard_batch(data[:4], mesh)
    whole = jax.jit(lambda a: a, out_shardings=aet.parallel.replicated(mesh))(batch)
    res = {"info": list(info), "shard_rows": int(data.shape[0]), "fit_params": flat(variables["params"]).tolist(),
           "fit_history": history, "batch_shape": list(batch.shape), "batch": np.asarray(whole).tolist()}
    _dump(res, out)
    jax.distributed.shutdown()


def _dump(res: dict, out: str) -> None:
    res["cpu_seconds"] = time.process_time()  # this worker's CPU time, to keep an eye on the test's cost
    with open(out, "w") as f:
        json.dump(res, f)


# ---------------------------------------------------------------------------
# fixtures

# lower LLVM optimisation in the workers: compiling dominates their run time (measured -25%)
XLA_EXTRA = "--xla_backend_optimization_level=0"


def _env(n_devices: int, **extra: str) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AETK_", "SLURM_", "OMPI_"))}
    env["JAX_PLATFORMS"] = "cpu"
    env["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={n_devices} {XLA_EXTRA}"
    env["PYTHONPATH"] = os.pathsep.join([TESTS, ROOT, env.get("PYTHONPATH", "")])
    env.update(extra)
    return env


def _launch(worker: str, out: str, env: dict) -> subprocess.Popen:
    """Start ``worker(out)`` in a fresh interpreter; its output goes to ``out + ".log"`` (no pipe to fill)."""
    code = f"import test_parallel as t; t.{worker}({out!r})"
    with open(out + ".log", "wb") as log:
        return subprocess.Popen([sys.executable, "-c", code], env=env, stdout=log, stderr=subprocess.STDOUT)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def workers(tmp_path_factory):
    """Run the workers together (1 device; 4 devices; two processes x 2 devices) and load their results."""
    tmp = tmp_path_factory.mktemp("parallel")
    port = _free_port()
    procs = {
        "single": _launch("_worker_single", str(tmp / "single.json"), _env(1)),
        "devices": _launch("_worker_devices", str(tmp / "devices.json"), _env(4)),
    }
    for pid in range(2):
        env = _env(
            2, AETK_COORDINATOR=f"127.0.0.1:{port}", AETK_NUM_PROCESSES="2", AETK_PROCESS_ID=str(pid),
            CKPT_DIR=str(tmp / "ckpt"),
        )
        procs[f"process{pid}"] = _launch("_worker_process", str(tmp / f"process{pid}.json"), env)
    results = {}
    try:
        for label, proc in procs.items():
            proc.wait(timeout=900)
            log = (tmp / f"{label}.json.log").read_text(errors="replace")
            assert proc.returncode == 0, f"worker {label} failed:\n{log[-4000:]}"
            with open(tmp / f"{label}.json") as f:
                results[label] = json.load(f)
    finally:
        for proc in procs.values():
            if proc.poll() is None:
                proc.kill()
    results["ckpt_files"] = sorted(os.listdir(tmp / "ckpt"))
    return results


# ---------------------------------------------------------------------------
# tests
#
# Tolerances (float32): the multi-device programs add the per-device partial
# sums in another order than one device. Measured worst cases (2-core CPU,
# jax 0.10.2): one SGD step (lr 0.1, parameters move by up to 0.3),
# |Δloss|/loss ≤ 2.4e-7 and max |Δparam| ≤ 1.2e-7 over VAE/HVAE/RHVAE and
# pmap; fit (16 Adam steps), train losses equal to 3.4e-7 relative and
# max |Δparam| ≤ 6e-8 (4 devices and two processes alike); shard_map_step with
# the AE (4 devices, the (2, 2) mesh, two phases) max |Δparam| ≤ 3e-8 against
# 1 device, and identical to pmap_step. Thresholds: losses
# rtol 1e-5 (30x), parameters |Δ| ≤ atol + rtol·|p| ≈ 1e-6 + 1e-5·|p| (≥ 30x).
STEP_RTOL, STEP_ATOL = 1e-5, 1e-6
FIT_RTOL, FIT_ATOL = 1e-5, 1e-6


@pytest.mark.slow
def test_sharded_draws_equal_unsharded(workers):
    """The mechanism the sharded path relies on: a draw for a global array is the same however it is sharded."""
    res = workers["devices"]
    assert res["threefry_partitionable"] is True
    assert res["draw_shards"] == 4
    np.testing.assert_array_equal(res["draw"], workers["single"]["draw"])


@pytest.mark.parametrize("name", MODELS)
def test_one_step_4_devices_equals_1_device(workers, name):
    """One SGD step with the batch split over 4 devices == the same step on 1 device."""
    dev, one = workers["devices"], workers["single"]
    assert dev[f"{name}/param_devices"] == 4
    np.testing.assert_allclose(dev[f"{name}/sharded_loss"], one[f"{name}/loss"], rtol=1e-5)
    np.testing.assert_allclose(dev[f"{name}/sharded_params"], one[f"{name}/params"], rtol=STEP_RTOL, atol=STEP_ATOL)
    # the step moved the parameters by far more than the tolerance
    assert np.max(np.abs(np.subtract(one[f"{name}/params"], one[f"{name}/init_params"]))) > 1e-3


@pytest.mark.parametrize("name", MODELS)
def test_pmap_equals_sharded(workers, name):
    """pmap with pmean-ed gradients == the step of the same per-shard loss (shard s, key fold_in(key, s))
    on 1 device, and, for the VAE, == that loss through the sharded 4-device path; replicas stay equal."""
    dev, one = workers["devices"], workers["single"]
    pmap_params = np.asarray(dev[f"{name}/pmap_params"])
    for replica in pmap_params[1:]:
        np.testing.assert_array_equal(replica, pmap_params[0])
    np.testing.assert_allclose(dev[f"{name}/pmap_loss"], [one[f"{name}/shardwise_loss"]] * 4, rtol=1e-5)
    np.testing.assert_allclose(pmap_params[0], one[f"{name}/shardwise_params"], rtol=STEP_RTOL, atol=STEP_ATOL)
    if name == "vae":
        np.testing.assert_allclose(dev["vae/sharded_shardwise_loss"], dev["vae/pmap_loss"][0], rtol=1e-5)
        np.testing.assert_allclose(pmap_params[0], dev["vae/sharded_shardwise_params"], rtol=STEP_RTOL, atol=STEP_ATOL)
    # per-shard keys are not the global key: the pmap loss is not the global-batch loss
    # (measured difference ≈ 0.8–1.0 nats)
    assert abs(dev[f"{name}/pmap_loss"][0] - dev[f"{name}/sharded_loss"]) > 1e-2


@pytest.mark.parametrize("name", MODELS)
def test_shard_map_equals_pmap(workers, name):
    """shard_map_step runs pmap_step's per-device step: the same update and loss for the same key, bit for bit
    (measured: identical on jax 0.10.2, both programs add the same per-device gradients in one all-reduce),
    and the per-shard-loss reference on 1 device to float32 rounding; the state comes back replicated."""
    dev, one = workers["devices"], workers["single"]
    assert dev[f"{name}/shard_map_param_devices"] == 4
    np.testing.assert_array_equal(dev[f"{name}/shard_map_params"], dev[f"{name}/pmap_params"][0])
    assert dev[f"{name}/shard_map_loss"] == dev[f"{name}/pmap_loss"][0]
    np.testing.assert_allclose(dev[f"{name}/shard_map_loss"], one[f"{name}/shardwise_loss"], rtol=1e-5)
    np.testing.assert_allclose(dev[f"{name}/shard_map_params"], one[f"{name}/shardwise_params"],
                               rtol=STEP_RTOL, atol=STEP_ATOL)


@pytest.mark.parametrize("label", ["ae/shard_map", "ae/shard_map_2x2"])
def test_shard_map_deterministic_loss_equals_1_device(workers, label):
    """A deterministic loss (the AE): shard_map_step over 4 devices, and over the second axis of a (2, 2)
    mesh, == make_step on the global batch on 1 device (the mean of equal shards' means is the global mean)."""
    dev, one = workers["devices"], workers["single"]
    np.testing.assert_allclose(dev[f"{label}_loss"], one["ae/loss"], rtol=1e-5)
    np.testing.assert_allclose(dev[f"{label}_params"], one["ae/params"], rtol=STEP_RTOL, atol=STEP_ATOL)
    assert np.max(np.abs(np.subtract(one["ae/params"], one["ae/init_params"]))) > 1e-3


def test_shard_map_phases(workers):
    """A two-phase step through shard_map_step == make_step(phases=) on 1 device (float32 rounding) and
    == pmap_step(phases=) bit for bit; both phases' losses are reported."""
    dev, one = workers["devices"], workers["single"]
    ref, got = one["ae_phases/metrics"], dev["ae_phases/shard_map_metrics"]
    assert set(got) == set(ref) and {"loss", "decoder_loss", "decoder_grad_norm"} <= set(got)
    for k in ("loss", "decoder_loss", "grad_norm", "decoder_grad_norm"):
        np.testing.assert_allclose(got[k], ref[k], rtol=1e-5)
    np.testing.assert_allclose(dev["ae_phases/shard_map_params"], one["ae_phases/params"],
                               rtol=STEP_RTOL, atol=STEP_ATOL)
    np.testing.assert_array_equal(dev["ae_phases/shard_map_params"], dev["ae_phases/pmap_params"])
    assert got == dev["ae_phases/pmap_metrics"]
    # the decoder phase ran at the encoder's updated parameters: its loss is below the first phase's
    assert got["decoder_loss"] < got["loss"]
    assert np.max(np.abs(np.subtract(one["ae_phases/params"], one["ae/init_params"]))) > 1e-3


def test_fit_mesh_4_devices_equals_1_device(workers):
    """fit over a 4-device mesh for 2 epochs == fit on 1 device."""
    dev, one = workers["devices"], workers["single"]
    assert dev["fit_param_devices"] == [4] * FIT_EPOCHS
    np.testing.assert_allclose(dev["fit_history"]["train"]["loss"], one["fit_history"]["train"]["loss"], rtol=1e-5)
    np.testing.assert_allclose(dev["fit_params"], one["fit_params"], rtol=FIT_RTOL, atol=FIT_ATOL)
    assert np.max(np.abs(np.subtract(one["fit_params"], one["vae/init_params"]))) > 1e-2


def test_two_processes_equal_single_process(workers):
    """Two processes x 2 devices on loopback, each with half of the rows == one process with one device."""
    one, p0, p1 = workers["single"], workers["process0"], workers["process1"]
    assert p0["info"] == [0, 2, 2, 4] and p1["info"] == [1, 2, 2, 4]
    assert p0["shard_rows"] == p1["shard_rows"] == FIT_N // 2
    np.testing.assert_array_equal(p0["fit_params"], p1["fit_params"])  # replicated on both processes
    for split in ("train", "val"):
        np.testing.assert_allclose(p0["fit_history"][split]["loss"], one["fit_history"][split]["loss"], rtol=1e-5)
    np.testing.assert_allclose(p0["fit_params"], one["fit_params"], rtol=FIT_RTOL, atol=FIT_ATOL)
    # shard_batch: process p's rows land at [4p, 4p + 4) of the global batch
    x = digits()
    assert p0["batch_shape"] == [8, 64]
    np.testing.assert_array_equal(p0["batch"], np.concatenate([x[:4], x[FIT_N // 2 : FIT_N // 2 + 4]]))
    # only process 0 wrote checkpoints: one per epoch
    assert workers["ckpt_files"] == [f"ckpt_{e:06d}" for e in range(FIT_EPOCHS)]  # orbax folders, nothing else


def test_batch_not_divisible_raises(workers):
    errors = workers["devices"]["errors"]
    for label in ("fit_mesh", "fit_default_mesh"):
        assert errors[label] is not None and "`batch_size` (30)" in errors[label] and "4 devices" in errors[label]
    assert errors["make_step"] is not None and "`batch` (6)" in errors["make_step"]
    assert errors["shard_map_step"] is not None and "`batch` (6)" in errors["shard_map_step"]
    assert "4 devices of the mesh axis 'batch'" in errors["shard_map_step"]
    # on the (2, 2) mesh the batch is split over the named axis only: its size, 2, is the divisor
    msg = errors["shard_map_step_2x2"]
    assert msg is not None and "`batch` (5)" in msg and "2 devices of the mesh axis 'data'" in msg


def _epoch_ae_loss():
    """The AE's loss times (1 + epoch): a loss with an ``epoch`` parameter."""
    model, ae_loss = build("ae")

    def loss(variables, x, key, epoch=0):
        return ae_loss(variables, x, key) * (1.0 + epoch)

    return model, ae_loss, loss


def test_shard_map_step_one_device_is_make_step():
    """On a 1-device mesh (this process) shard_map_step is make_step for a deterministic loss, and the epoch
    reaches a loss that takes one."""
    model, ae_loss, loss = _epoch_ae_loss()
    x = digits()[:BATCH]
    state = aet.train.init_state(model.init(jax.random.key(1), x), optax.sgd(STEP_LR))
    mesh, key = aet.parallel.data_mesh(), jax.random.key(0)
    step = aet.parallel.shard_map_step(loss, optax.sgd(STEP_LR), mesh)
    ref_new, ref = aet.train.make_step(loss, optax.sgd(STEP_LR))(state, x, key, 2)
    new, metrics = step(state, x, key, 2)
    np.testing.assert_allclose(float(metrics["loss"]), float(ref["loss"]), rtol=1e-6)
    np.testing.assert_allclose(flat(new.params), flat(ref_new.params), rtol=1e-6, atol=1e-7)
    mse = float(ae_loss(state.variables, x, key))
    np.testing.assert_allclose(float(metrics["loss"]), 3.0 * mse, rtol=1e-6)  # epoch 2 reached the loss
    _, metrics = step(state, x, key)  # no epoch: the loss's default
    np.testing.assert_allclose(float(metrics["loss"]), mse, rtol=1e-6)


def test_shard_map_step_bad_arguments():
    loss_fn, state, x = init_state("ae")
    opt, mesh = optax.sgd(STEP_LR), aet.parallel.data_mesh()
    with pytest.raises(TypeError, match="`mesh`"):
        aet.parallel.shard_map_step(loss_fn, opt, "batch")
    with pytest.raises(ValueError, match=r"`axis_name` 'model' is not an axis of `mesh`.*\('batch',\)"):
        aet.parallel.shard_map_step(loss_fn, opt, mesh, "model")
    with pytest.raises(TypeError, match="`axis_name`"):
        aet.parallel.shard_map_step(loss_fn, opt, mesh, 0)
    with pytest.raises(ValueError, match="`phases`"):
        aet.parallel.shard_map_step(loss_fn, opt, mesh, phases=ae_phases()[0])
    for make in (lambda: aet.parallel.shard_map_step(loss_fn, mesh=mesh), lambda: aet.parallel.pmap_step(loss_fn)):
        with pytest.raises(TypeError, match="`loss_fn` and `optimizer` are required"):
            make()
    step = aet.parallel.shard_map_step(loss_fn, opt, mesh)
    with pytest.raises(ValueError, match="`batch` must be an array"):
        step(state, x[0, 0], jax.random.key(0))
    with pytest.raises(ValueError, match=r"`batch` must have the same leading.*\[8, 16\]"):
        step(state, (x, x[:8]), jax.random.key(0))


def test_process_shard_and_initialize_single_process(monkeypatch):
    for var in [*os.environ]:
        if var.startswith(("AETK_", "SLURM_", "OMPI_")):
            monkeypatch.delenv(var)
    x = np.arange(22.0).reshape(11, 2)
    blocks = [aet.parallel.process_shard(x, process_id=i, num_processes=3) for i in range(3)]
    np.testing.assert_array_equal(np.concatenate(blocks), x[:9])
    strided = [aet.parallel.process_shard(x, process_id=i, num_processes=3, mode="strided") for i in range(3)]
    np.testing.assert_array_equal(strided[1], x[[1, 4, 7]])
    ds = aet.data.Dataset(x, np.arange(11))
    part = aet.parallel.process_shard(ds, process_id=2, num_processes=3)
    np.testing.assert_array_equal(part.y, [6, 7, 8])
    with pytest.raises(ValueError, match="process_id"):
        aet.parallel.process_shard(x, process_id=3, num_processes=3)
    with pytest.raises(ValueError, match="mode"):
        aet.parallel.process_shard(x, process_id=0, num_processes=3, mode="blocks")
    # nothing configured: a single-process run, nothing initialised
    assert tuple(aet.parallel.initialize()) == (0, 1, 1, 1)
    with pytest.raises(ValueError, match="AETK_PROCESS_ID"):
        aet.parallel.initialize("127.0.0.1:1234", 2)
    with pytest.raises(ValueError, match="coordinator_address"):
        aet.parallel.initialize("no-port", 2, 0)
