"""``fit(metric_update_every=k)``: the RHVAE's end-of-epoch metric update on a schedule.

References: the run with k = 1 (the update after every epoch). With the default
``metric_source="batch"`` the loss never reads the stored metric, so the trained
parameters and the final metric must be bit-identical for any k; between updates
the stored metric is the last update's; with ``metric_source="stored"`` the
schedule changes training (the loss reads the stored metric).
"""
from __future__ import annotations

import functools

import jax
import numpy as np
import optax
import pytest

import aetk_jax as aet
from aetk_jax import rhvae


def _model():
    enc = aet.JointGaussianLogEncoder(aet.MLP([8]), 2)
    dec = aet.BernoulliDecoder(aet.MLP([8]), 6)
    return aet.RHVAE(enc, dec, rhvae.MetricNetwork(aet.MLP([4]), 2), 4)


X = (np.random.default_rng(0).uniform(size=(48, 6)) > 0.5).astype(np.float32)


def _fit(k, source="batch", epochs=4):
    model = _model()
    seen = []
    loss = functools.partial(rhvae.loss, model, K=1, eps=1e-3, metric_source=source)
    variables, _ = aet.train.fit(
        model, loss, X, key=jax.random.key(1), epochs=epochs, batch_size=16, optimizer=optax.adam(3e-3),
        progress=False, metric_update_every=k,
        callbacks=[lambda e, v, h: seen.append(np.asarray(v["metric"]["centroids"])) and None])
    return variables, seen


def test_the_schedule_updates_every_kth_and_the_last_epoch_and_keeps_the_training_identical():
    v1, seen1 = _fit(1)
    v3, seen3 = _fit(3)
    # k = 3 over 4 epochs: updates after epochs 2 and 3 only
    init = np.zeros_like(seen3[0])
    np.testing.assert_array_equal(seen3[0], init)
    np.testing.assert_array_equal(seen3[1], init)
    np.testing.assert_array_equal(seen3[2], seen1[2])
    assert not np.array_equal(seen1[0], init) and not np.array_equal(seen1[0], seen1[1])
    # metric_source="batch": the parameters and the final stored metric are bit-identical
    for a, b in zip(jax.tree_util.tree_leaves(v1), jax.tree_util.tree_leaves(v3)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_with_the_stored_metric_the_schedule_changes_training():
    v1, _ = _fit(1, "stored", epochs=3)
    v2, _ = _fit(2, "stored", epochs=3)
    diffs = [float(np.max(np.abs(np.asarray(a) - np.asarray(b))))
             for a, b in zip(jax.tree_util.tree_leaves(v1["params"]), jax.tree_util.tree_leaves(v2["params"]))]
    assert max(diffs) > 0.0


@pytest.mark.parametrize("bad", [0, -2, 1.5])
def test_bad_metric_update_every_names_the_argument(bad):
    model = _model()
    with pytest.raises((ValueError, TypeError), match="metric_update_every"):
        aet.train.fit(model, functools.partial(rhvae.loss, model), X, key=jax.random.key(0), epochs=1,
                      batch_size=16, progress=False, metric_update_every=bad)
