"""The ``aet`` command line's behaviour at the edges (issue 15).

* Data outside the decoder's support (standardised data for the Bernoulli
  decoder, integer counts) are refused in one line, by ``train`` and
  ``evaluate``, naming the fix.
* Ctrl-C on a real ``aet train`` process: exit 130, one line saying how to
  resume, no traceback, ``history.json`` written; ``--resume`` then ends with
  the uninterrupted run's checkpoint, byte for byte.
* ``--resume`` on a folder with no run, and ``evaluate`` on a run that did not
  finish.
* Posterior collapse is warned about; the β-VAE's defaults do not collapse.
* ``aet --help`` / ``--version`` import neither JAX nor flax, and every public
  name of the API resolves through the lazy package import.
"""
from __future__ import annotations

import json
import math
import os
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from aetk_jax import checkpoint as ckpt
from checkpoint_faults import same_contents
from aetk_jax import cli

TINY = ["--hidden", "16", "--lr", "0.01", "--no-progress", "--no-plots"]
ENV = {**os.environ, "JAX_PLATFORMS": "cpu"}


def run_main(capsys, argv):
    """``(status, stdout, stderr lines)`` of ``cli.main(argv)``."""
    capsys.readouterr()
    status = cli.main(argv)
    out, err = capsys.readouterr()
    return status, out, [line for line in err.splitlines() if line.strip()]


def _json(path):
    with open(path) as f:
        return json.load(f)


@pytest.fixture(scope="module")
def digits_x():
    from aetk_jax import data

    train, val = data.load_digits()
    return np.concatenate([train.x, val.x])


# ------------------------------------------------------------------ data outside the support


@pytest.mark.parametrize("kind", ["standardised", "counts"])
def test_train_refuses_data_outside_the_bernoulli_support(tmp_path, capsys, digits_x, kind):
    x = (digits_x - digits_x.mean()) / digits_x.std() if kind == "standardised" else np.round(digits_x * 16)
    path = tmp_path / "x.npy"
    np.save(path, x.astype(np.float32))
    out = tmp_path / "run"
    status, stdout, err = run_main(capsys, ["train", "--data", str(path), "--epochs", "1", "--out", str(out), *TINY])
    assert status == 2 and stdout == ""
    assert len(err) == 1, err
    line = err[0]
    # the decoder, the range it needs, the data's own range and the fix
    assert line.startswith("aet train: error: --data ") and "BernoulliDecoder" in line and "[0, 1]" in line
    lo, hi = float(x.min()), float(x.max())
    assert f"{lo:.4g}" in line and f"{hi:.4g}" in line
    assert "--decoder gaussian" in line and "scale the data to [0, 1]" in line
    assert not out.exists()  # refused before anything was written
    if kind == "standardised":  # the Gaussian decoder accepts the same file
        status, _, err = run_main(capsys, ["train", "--data", str(path), "--decoder", "gaussian", "--epochs", "1",
                                           "--out", str(out), "--batch-size", "128", *TINY])
        assert status == 0, err
        assert math.isfinite(_json(out / "results.json")["val_elbo"])


def test_evaluate_refuses_data_outside_the_support(tmp_path, capsys, digits_x):
    """A run folder whose data no longer fit its decoder (e.g. written before the check existed)."""
    path = tmp_path / "counts.npy"
    np.save(path, np.round(digits_x * 16).astype(np.float32))
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.json").write_text(json.dumps({"model": "vae", "data": str(path), "decoder": "bernoulli",
                                                 "latent_dim": 2, "hidden": [16], "seed": 0}))
    status, stdout, err = run_main(capsys, ["evaluate", str(run)])
    assert status == 2 and stdout == "" and len(err) == 1, err
    assert err[0].startswith("aet evaluate: error: ") and "BernoulliDecoder" in err[0] and "16" in err[0]
    assert "--decoder gaussian" in err[0]


# ------------------------------------------------------------------ Ctrl-C


def _wait_for(path, proc, timeout=240.0):
    deadline = time.monotonic() + timeout
    while not os.path.exists(path):
        assert proc.poll() is None, f"the child exited early with status {proc.returncode}: {proc.stderr.read()}"
        assert time.monotonic() < deadline, "the child wrote no checkpoint in time"
        time.sleep(0.01)


@pytest.mark.slow  # a real process, then two more runs in-process: about 25 s on 2 free cores
def test_ctrl_c_exits_130_with_one_line_and_resume_is_bit_exact(tmp_path, capsys):
    epochs = "12"
    argv = ["train", "--model", "vae", "--epochs", epochs, "--batch-size", "32", "--seed", "3", *TINY]
    run = str(tmp_path / "run")
    proc = subprocess.Popen([sys.executable, "-m", "aetk_jax.cli", *argv, "--out", run], env=ENV,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        _wait_for(ckpt.path_for(os.path.join(run, "checkpoints"), 0), proc)
        proc.send_signal(signal.SIGINT)
        stdout, stderr = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 130, stderr
    err = [line for line in stderr.splitlines() if line.strip()]
    assert len(err) == 1, stderr
    assert "Traceback" not in stderr and "KeyboardInterrupt" not in stderr and stdout == ""
    assert err[0].startswith("aet train: interrupted: stopped after epoch ")
    assert err[0].endswith(f"continue with: aet train --resume {run}")
    hist = _json(os.path.join(run, "history.json"))
    done = len(hist["epoch"])
    assert 1 <= done < int(epochs), "the child was not interrupted mid-run"
    assert hist["epoch"] == list(range(done)) and f"after epoch {done} of {epochs}" in err[0]
    res = _json(os.path.join(run, "results.json"))
    assert res["finished"] is False and res["interrupted"] is True and res["epochs_done"] == done
    names = [os.path.basename(p) for p in ckpt.list_checkpoints(os.path.join(run, "checkpoints"))]
    assert names[-1] == os.path.basename(ckpt.path_for("", done - 1))  # the interrupted epoch finished and was checkpointed
    # evaluating the unfinished run prints its numbers with a warning and status 1
    status, out, lines = run_main(capsys, ["evaluate", run, "--n-importance", "8"])
    assert status == 1 and len(lines) == 1 and "did not finish" in lines[0] and "interrupted" in lines[0]
    assert math.isfinite(json.loads(out)["val_elbo"])

    # resumed, the run ends exactly where an uninterrupted one does
    status, _, lines = run_main(capsys, ["train", "--resume", run, "--no-progress", "--no-plots"])
    assert status == 0, lines
    ref = str(tmp_path / "ref")
    status, _, lines = run_main(capsys, [*argv, "--out", ref])
    assert status == 0, lines
    last = int(epochs) - 1  # the same payload, every array bit for bit
    assert same_contents(ckpt.path_for(os.path.join(run, "checkpoints"), last),
                         ckpt.path_for(os.path.join(ref, "checkpoints"), last))
    assert _json(os.path.join(run, "history.json")) == _json(os.path.join(ref, "history.json"))
    assert _json(os.path.join(run, "results.json"))["finished"] is True


# ------------------------------------------------------------------ --resume on a folder with no run


def test_resume_without_a_run_is_refused(tmp_path, capsys, monkeypatch):
    empty = tmp_path / "empty"
    empty.mkdir()
    monkeypatch.chdir(tmp_path)
    for argv in (["train", "--resume", "--out", str(empty)], ["train", "--resume", str(empty)], ["train", "--resume"]):
        status, _, err = run_main(capsys, [*argv, "--no-progress"])
        assert status == 2 and len(err) == 1, (argv, err)
        assert "not a training run (no config.json)" in err[0] and "leave out --resume" in err[0]
    assert os.listdir(empty) == [] and not (tmp_path / "runs").exists()  # nothing was trained
    # a run folder whose first epoch never finished: no checkpoint to resume from
    (empty / "config.json").write_text(json.dumps({"model": "vae", "data": "digits", "decoder": "bernoulli",
                                                   "latent_dim": 2, "hidden": [16], "seed": 0, "epochs": 2}))
    status, _, err = run_main(capsys, ["train", "--resume", str(empty), "--no-progress"])
    assert status == 2 and len(err) == 1 and "no checkpoint to resume from" in err[0]
    assert sorted(os.listdir(empty)) == ["config.json"]
    # only a corrupt checkpoint: refused too, rather than silently starting afresh
    (empty / "checkpoints").mkdir()
    (empty / "checkpoints" / "ckpt_000000.msgpack").write_bytes(ckpt.MAGIC + b"\0" * 40)
    status, _, err = run_main(capsys, ["train", "--resume", str(empty), "--no-progress"])
    assert status == 2 and len(err) == 1 and "none of its 1 checkpoint(s) reads back intact" in err[0]
    assert os.listdir(empty / "checkpoints") == ["ckpt_000000.msgpack"]


# ------------------------------------------------------------------ evaluate on unfinished runs


@pytest.fixture(scope="module")
def vae_run(tmp_path_factory):
    out = str(tmp_path_factory.mktemp("cli") / "vae")
    status = cli.main(["train", "--model", "vae", "--epochs", "2", "--out", out, *TINY])
    assert status == 0
    return out


def test_posterior_collapse_is_warned_about(tmp_path, capsys, monkeypatch):
    from aetk_jax import builders

    default = builders.default_hyper
    monkeypatch.setattr(builders, "default_hyper", lambda name: {"beta": 200.0} if name == "betavae" else default(name))
    status, _, err = run_main(capsys, ["train", "--model", "betavae", "--epochs", "2", "--out", str(tmp_path / "b"),
                                       *TINY])
    assert status == 0
    kl = _json(tmp_path / "b" / "history.json")["val"]["kl"][-1]
    assert kl / 2 < cli.COLLAPSE_KL
    assert len(err) == 1, err
    assert err[0].startswith("aet train: warning: posterior collapse: the mean KL per latent dimension")
    assert f"{kl / 2:.3g} nats" in err[0] and "lower beta (now 200)" in err[0]


@pytest.mark.slow
@pytest.mark.parametrize("model, min_kl", [("vae", 0.5), ("betavae", 0.1)])
def test_default_runs_learn_a_code(tmp_path, capsys, model, min_kl):
    """The CLI's defaults (30 epochs, MLP 128-128, latent 2): no collapse warning, and a mean KL per
    latent dimension well above the collapse threshold (measured: VAE 1.05; β-VAE 0.37 with β = 2, 0.0009 with
    the former β = 4)."""
    status, _, err = run_main(capsys, ["train", "--model", model, "--out", str(tmp_path / model), "--no-progress",
                                       "--no-plots"])
    assert status == 0 and err == []
    kl = _json(tmp_path / model / "history.json")["val"]["kl"][-1]
    assert kl / 2 > min_kl


@pytest.mark.parametrize("damage", ["no_results", "interrupted", "diverged", "nonfinite_history"])
def test_evaluate_warns_and_exits_1_on_an_unfinished_run(vae_run, tmp_path, capsys, damage):
    run = tmp_path / "run"
    shutil.copytree(vae_run, run)
    if damage == "no_results":
        os.unlink(run / "results.json")
        needle = "never finished (no results.json)"
    elif damage == "interrupted":
        (run / "results.json").write_text(json.dumps({"finished": False, "epochs_done": 1, "epochs": 2}))
        needle = "did not finish after 1 of 2 epochs (it was interrupted)"
    elif damage == "diverged":  # what `aet train` writes on a non-finite loss (next test)
        (run / "results.json").write_text(json.dumps({"finished": False, "epochs_done": 1, "epochs": 2,
                                                      "error": "non-finite or diverged loss at epoch 1"}))
        needle = "did not finish after 1 of 2 epochs (non-finite or diverged loss at epoch 1)"
    else:
        hist = _json(run / "history.json")
        hist["train"]["loss"][-1] = float("nan")
        (run / "history.json").write_text(json.dumps(hist))
        needle = "non-finite values (the run diverged)"
    status, out, err = run_main(capsys, ["evaluate", str(run), "--n-importance", "8"])
    assert status == 1
    res = json.loads(out)  # the numbers are still printed
    assert math.isfinite(res["val_elbo"]) and math.isfinite(res["val_loglikelihood"])
    assert len(err) == 1 and err[0].startswith("aet evaluate: warning: ") and needle in err[0]
    assert "newest checkpoint" in err[0]


def test_diverged_run_writes_an_unfinished_results_json(tmp_path, capsys):
    run = str(tmp_path / "div")
    status, _, err = run_main(capsys, ["train", "--model", "vae", "--epochs", "3", "--lr", "1e4", "--hidden", "16",
                                       "--out", run, "--no-progress", "--no-plots"])
    assert status == 2 and len(err) == 1 and "non-finite or diverged" in err[0]
    res = _json(os.path.join(run, "results.json"))
    assert res["finished"] is False and "non-finite or diverged" in res["error"]
    assert res["epochs_done"] == len(_json(os.path.join(run, "history.json"))["epoch"])


# ------------------------------------------------------------------ fast --help, --version, lazy import

# the public names of /work/shared/API.md (first wave, and the second wave's that exist)
API_NAMES = """
MLP Flatten Reshape layers.MLP layers.Flatten layers.Reshape
Encoder JointGaussianLogEncoder JointGaussianEncoder encoders.Encoder
encoder_logposterior encoder_kl spherical_logprior
Decoder BernoulliDecoder CategoricalDecoder SimpleGaussianDecoder JointGaussianLogDecoder JointGaussianDecoder
SplitGaussianLogDecoder SplitGaussianDecoder decoders.BernoulliDecoder decoder_loglikelihood
GaussianLogParams GaussianParams BernoulliParams CategoricalParams
AE VAE MMDVAE InfoMaxVAE HVAE RHVAE
ae.loss vae.loss mmdvae.loss mmdvae.gaussian_kernel infomaxvae.loss infomaxvae.mi_loss
hvae.loss hvae.leapfrog hvae.quadratic_tempering hvae.null_tempering hvae.potential_energy hvae.elbo
rhvae.loss rhvae.MetricNetwork rhvae.G_inv rhvae.metric_tensor rhvae.hamiltonian rhvae.general_leapfrog
rhvae.elbo rhvae.update_metric rhvae.metric_fn
utils.centroids_kmeans utils.centroids_kmedoids utils.vec_to_ltri utils.slogdet utils.sample_mvnormal_canon
utils.locality_sampler utils.cycle_anneal
train.make_step train.fit train.TrainState train.init_state train.make_trainer train.NonFiniteError
train.TrainingInterrupted evaluate.marginal_loglikelihood evaluate.elbo sample
geometry.pullback_metric geometry.NeuralGeodesic geometry.curve_velocity geometry.curve_length
geometry.curve_energy geometry.geodesic_loss geometry.fit_geodesic
builders.build data.load_digits check_support decoder_support
IWAE MIWAE PIWAE CIWAE iwae.elbo iwae.loss miwae.loss piwae.loss ciwae.loss
""".split()

LAZY_SCRIPT = """
import json, sys, time
t0 = time.perf_counter()
import aetk_jax as aet
import aetk_jax.cli as cli
try:
    cli.main(sys.argv[1:])
except SystemExit as e:
    code = e.code
heavy = sorted(m for m in ("jax", "flax", "optax", "numpy", "matplotlib") if m in sys.modules)
print(json.dumps({"code": code, "heavy": heavy, "seconds": time.perf_counter() - t0}))
"""


@pytest.mark.parametrize("argv", [["--help"], ["--version"], ["train", "--help"], ["evaluate", "--help"]])
def test_help_and_version_import_no_jax(argv):
    proc = subprocess.run([sys.executable, "-c", LAZY_SCRIPT, *argv], capture_output=True, text=True, env=ENV,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr
    *text, last = proc.stdout.strip().splitlines()
    info = json.loads(last)
    assert info["code"] == 0 and info["heavy"] == []
    if argv == ["--version"]:
        import aetk_jax

        assert text == [f"aet (aetk_jax) {aetk_jax.__version__}"]
    else:
        assert "usage: aet" in text[0]


def test_every_public_name_resolves_lazily():
    script = """
import json, sys
import aetk_jax as aet
before = "jax" in sys.modules
missing = []
for name in sys.argv[1:]:
    obj = aet
    try:
        for part in name.split("."):
            obj = getattr(obj, part)
    except AttributeError as err:
        missing.append(f"{name}: {err}")
from aetk_jax import VAE, BernoulliDecoder, train
ns = {}
exec("from aetk_jax import *", ns)
print(json.dumps({"before": before, "missing": missing, "vae": VAE is aet.VAE, "train": train.fit is aet.train.fit,
                  "star": sorted(set(aet.__all__) - set(ns)), "dir": sorted(set(aet.__all__) - set(dir(aet)))}))
"""
    proc = subprocess.run([sys.executable, "-c", script, *API_NAMES], capture_output=True, text=True, env=ENV,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr
    info = json.loads(proc.stdout.strip().splitlines()[-1])
    assert info["before"] is False  # `import aetk_jax` alone loads no JAX
    assert info["missing"] == []
    assert info["vae"] and info["train"] and info["star"] == [] and info["dir"] == []
    import aetk_jax as aet

    with pytest.raises(AttributeError, match="has no attribute 'NoSuchThing'"):
        aet.NoSuchThing  # noqa: B018


@pytest.mark.parametrize("abandoned_first", [True, False])
def test_interrupt_without_a_checkpoint_says_start_again(tmp_path, capsys, monkeypatch, abandoned_first):
    """Ctrl-C before any epoch finished (two Ctrl-C in epoch 0), or outside ``fit`` (a plain
    KeyboardInterrupt): exit 130, one line, and no --resume hint that would be refused."""
    from aetk_jax import train as tr

    def interrupted_fit(*args, **kwargs):
        if abandoned_first:
            raise tr.TrainingInterrupted("abandoned", variables=None, history={"epoch": [], "train": {}, "val": {}},
                                         epoch=-1, checkpoint=None, abandoned=True)
        raise KeyboardInterrupt

    monkeypatch.setattr(tr, "fit", interrupted_fit)
    out = tmp_path / "run"
    status, stdout, err = run_main(capsys, ["train", "--epochs", "3", "--out", str(out), *TINY])
    assert status == 130 and stdout == "" and len(err) == 1, err
    if abandoned_first:
        assert err[0] == ("aet train: interrupted: stopped before the first epoch ended (no checkpoint); "
                          "start the run again without --resume")
        assert _json(out / "results.json")["finished"] is False and _json(out / "history.json")["epoch"] == []
    else:
        assert err[0] == "aet train: interrupted (Ctrl-C)"
