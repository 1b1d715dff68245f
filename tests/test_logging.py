"""Experiment logging (issue 23): TensorBoard and CSV callbacks, the CLI's --tensorboard, the
MLflow / W&B recipes of docs/logging.md.

The event files are read back with tensorboard's own event reader (EventAccumulator): one scalar
per epoch per metric, train and val, equal (as float32, the event format) to ``history``.
"""
from __future__ import annotations

import functools
import os
import re
import sys
import types

import jax
import numpy as np
import optax
import pytest

import aetk_jax as aet
from aetk_jax.training import loggers
from conftest import small_vae_parts

ROOT = os.path.join(os.path.dirname(__file__), "..")
EPOCHS = 3


def _events(logdir):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(logdir), size_guidance={"scalars": 0})
    acc.Reload()
    return {tag: acc.Scalars(tag) for tag in acc.Tags()["scalars"]}


@pytest.fixture(scope="module")
def logged_run(digits, tmp_path_factory):
    """A tiny VAE trained for EPOCHS epochs with both loggers (and validation data)."""
    tmp = tmp_path_factory.mktemp("logs")
    train, val = digits
    enc, dec = small_vae_parts(hidden=16)
    model = aet.VAE(enc, dec)
    tb, csv_path = aet.train.TensorBoard(tmp / "tb"), tmp / "sub" / "history.csv"
    _, history = aet.train.fit(model, functools.partial(aet.vae.loss, model), train.x[:256], key=jax.random.key(0),
                               optimizer=optax.adam(1e-2), epochs=EPOCHS, batch_size=64, val_data=val.x[:64],
                               callbacks=[tb, aet.train.CSVLogger(csv_path)], progress=False)
    tb.close()
    return history, tmp / "tb", csv_path


def test_tensorboard_one_scalar_per_epoch_per_metric(logged_run):
    history, logdir, _ = logged_run
    assert len([f for f in os.listdir(logdir) if f.startswith("events.out.tfevents")]) == 1
    events = _events(logdir)
    expected = {f"{split}/{m}": v for split in ("train", "val") for m, v in history[split].items()}
    assert {"train/loss", "val/loss", "train/kl", "val/kl"} <= set(expected)
    assert set(events) == set(expected)
    for tag, values in expected.items():
        assert [e.step for e in events[tag]] == history["epoch"] == list(range(EPOCHS)), tag
        np.testing.assert_array_equal([e.value for e in events[tag]], np.float32(values), err_msg=tag)


def test_csv_reads_back_as_the_history(logged_run):
    history, _, csv_path = logged_run
    table = loggers.read_csv(csv_path)
    assert table["epoch"] == history["epoch"]
    expected = {f"{split}/{m}": v for split in ("train", "val") for m, v in history[split].items()}
    assert set(table) == {"epoch", *expected}
    for tag, values in expected.items():
        assert table[tag] == values, tag  # exact: written with repr(float)
    assert not [f for f in os.listdir(csv_path.parent) if ".tmp" in f]


def test_loggers_log_each_epoch_once_and_resume_without_rewriting(tmp_path):
    """Driven by hand with a growing history: each call logs only the new epoch; a fresh logger
    (a resumed run) logs the current epoch, not the restored ones; a metric that appears late is
    right-aligned in the CSV."""
    hist = {"epoch": [], "train": {}, "val": {}}
    tb = aet.train.TensorBoard(tmp_path / "tb")
    for e, loss in enumerate([3.0, 2.0]):
        hist["epoch"].append(e)
        hist["train"].setdefault("loss", []).append(loss)
        tb(e, None, hist)
    tb.close()
    resumed = aet.train.TensorBoard(tmp_path / "tb")
    hist["epoch"].append(2)
    hist["train"]["loss"].append(1.5)
    hist["train"]["lr_scale"] = [0.5]
    resumed(2, None, hist)
    resumed.close()
    events = _events(tmp_path / "tb")
    assert [(e.step, e.value) for e in events["train/loss"]] == [(0, 3.0), (1, 2.0), (2, 1.5)]
    assert [(e.step, e.value) for e in events["train/lr_scale"]] == [(2, 0.5)]
    aet.train.CSVLogger(tmp_path / "h.csv")(2, None, hist)
    lines = (tmp_path / "h.csv").read_text().splitlines()
    assert lines == ["epoch,train/loss,train/lr_scale", "0,3.0,", "1,2.0,", "2,1.5,0.5"]


def test_tensorboard_absent_names_the_extra(monkeypatch):
    for name in [m for m in sys.modules if m == "tensorboard" or m.startswith("tensorboard.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "tensorboard", None)  # import tensorboard now raises ImportError
    with pytest.raises(ImportError, match=r"aetk_jax\[tensorboard\]"):
        aet.train.TensorBoard("unused")


class _Stop(Exception):
    pass


def test_cli_tensorboard_flag(tmp_path, monkeypatch):
    """``aet train --tensorboard DIR`` hands fit a TensorBoard(DIR) callback (what that callback
    writes is checked above with a real run); without the flag, no callback."""
    from aetk_jax import cli

    seen = []

    def fake_fit(*args, callbacks=(), **kwargs):
        seen.append(list(callbacks))
        raise _Stop

    monkeypatch.setattr(aet.train, "fit", fake_fit)
    for extra in (["--tensorboard", str(tmp_path / "tb")], []):
        with pytest.raises(_Stop):
            cli.main(["train", "--model", "vae", "--epochs", "1", "--out", str(tmp_path / "run"), "--hidden", "8",
                      "--no-progress", "--no-plots", *extra])
    assert len(seen) == 2 and seen[1] == []
    assert [type(cb) for cb in seen[0]] == [aet.train.TensorBoard] and seen[0][0].logdir == str(tmp_path / "tb")


class _Recorder(types.ModuleType):
    """A stand-in for ``mlflow`` / ``wandb`` recording the calls the recipes make."""

    def __init__(self, name):
        super().__init__(name)
        self.calls = []

    def log_metrics(self, metrics, step=None):  # mlflow.log_metrics
        self.calls.append((step, dict(metrics)))

    def log(self, data, step=None):  # wandb.log
        self.calls.append((step, dict(data)))


@pytest.mark.parametrize("package", ["mlflow", "wandb"])
def test_docs_recipes_log_every_metric(package, monkeypatch):
    """The MLflow and W&B callbacks of docs/logging.md, run against a recorder standing in for the
    package, log every split/metric of every epoch with the epoch as the step."""
    text = open(os.path.join(ROOT, "docs", "logging.md"), encoding="utf-8").read()
    blocks = [b for b in re.findall(r"```python\n(.*?)```", text, re.S) if f"import {package}" in b]
    assert len(blocks) == 1, package
    fake = _Recorder(package)
    monkeypatch.setitem(sys.modules, package, fake)
    namespace: dict = {}
    exec(compile(blocks[0], f"docs/logging.md[{package}]", "exec"), namespace)
    callback = namespace[f"{package}_callback"]
    hist = {"epoch": [], "train": {}, "val": {}}
    for e in range(2):
        hist["epoch"].append(e)
        for split, m in (("train", "loss"), ("train", "kl"), ("val", "loss")):
            hist[split].setdefault(m, []).append(10.0 * e + len(m))
        assert not callback(e, None, hist)
    assert fake.calls == [(e, {"train/loss": 10.0 * e + 4, "train/kl": 10.0 * e + 2, "val/loss": 10.0 * e + 4})
                          for e in range(2)]
