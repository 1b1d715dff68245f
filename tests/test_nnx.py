"""Flax NNX bodies (issue 23): ``aet.layers.NNX`` wraps an NNX module class as a linen body.

* The wrapped body computes exactly what the NNX module does with the same parameters, and a
  VAE with an NNX encoder body has the same loss as the same VAE with the equivalent linen body
  (parameters mapped across): the parameters live in the one ``variables`` pytree.
* An NNX body trains in a VAE, an HVAE and an RHVAE (encoder body; the RHVAE's metric network
  too): the training loss falls and the held-out loss beats the initial one.
* Its variables checkpoint and resume bit-exactly.
* Modules with state other than parameters (Dropout's random state, BatchNorm's statistics)
  and instances instead of classes are refused.
"""
from __future__ import annotations

import functools
import os
import shutil

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

import aetk_jax as aet
from aetk_jax import hvae, rhvae

HIDDEN = 16


class Body(nnx.Module):
    """One dense layer and a ReLU: the NNX twin of ``aet.MLP([dout], final_activation=nn.relu)``."""

    def __init__(self, din: int, dout: int, *, rngs: nnx.Rngs):
        self.dense = nnx.Linear(din, dout, rngs=rngs)

    def __call__(self, x):
        return nnx.relu(self.dense(x))


class WithDropout(nnx.Module):
    def __init__(self, din: int, *, rngs: nnx.Rngs):
        self.dense = nnx.Linear(din, din, rngs=rngs)
        self.drop = nnx.Dropout(0.5, rngs=rngs)

    def __call__(self, x):
        return self.drop(self.dense(x))


class WithBatchNorm(nnx.Module):
    def __init__(self, din: int, *, rngs: nnx.Rngs):
        self.norm = nnx.BatchNorm(din, rngs=rngs)

    def __call__(self, x):
        return self.norm(x)


def _leaves_equal(a, b) -> bool:
    la, lb = jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)
    return len(la) == len(lb) and all(np.array_equal(np.asarray(u), np.asarray(v)) for u, v in zip(la, lb))


def _vae(body):
    return aet.VAE(aet.JointGaussianLogEncoder(body, 2),
                   aet.BernoulliDecoder(aet.MLP([HIDDEN], final_activation=nn.relu), 64))


def test_nnx_body_is_the_nnx_module_and_shares_the_variables_pytree(digits):
    x = jnp.asarray(digits[1].x[:8])
    body = aet.layers.NNX(Body, 64, HIDDEN)
    v = body.init(jax.random.key(0), x)
    assert jax.tree_util.tree_map(jnp.shape, v) == {"params": {"dense": {"kernel": (64, HIDDEN), "bias": (HIDDEN,)}}}
    # the NNX module itself, given the same parameters
    module = Body(64, HIDDEN, rngs=nnx.Rngs(123))
    nnx.update(module, nnx.State({"dense": {"kernel": v["params"]["dense"]["kernel"],
                                            "bias": v["params"]["dense"]["bias"]}}))
    np.testing.assert_array_equal(body.apply(v, x), module(x))
    # a VAE with the NNX body == the same VAE with the linen body, parameters mapped across
    nnx_vae, linen_vae = _vae(body), _vae(aet.MLP([HIDDEN], final_activation=nn.relu))
    vn = nnx_vae.init(jax.random.key(1), x[:1])
    vl = jax.tree_util.tree_map(lambda a: a, linen_vae.init(jax.random.key(2), x[:1]))
    vl["params"]["encoder"]["body"] = {"dense_0": vn["params"]["encoder"]["body"]["dense"]}
    vl["params"]["encoder"]["mu"] = vn["params"]["encoder"]["mu"]
    vl["params"]["encoder"]["logsigma"] = vn["params"]["encoder"]["logsigma"]
    vl["params"]["decoder"] = vn["params"]["decoder"]
    key = jax.random.key(3)
    ln, ll = aet.vae.loss(nnx_vae, vn, x, key), aet.vae.loss(linen_vae, vl, x, key)
    assert float(ln) == float(ll)


def _rhvae():
    enc = aet.JointGaussianLogEncoder(aet.layers.NNX(Body, 64, HIDDEN), 2)
    dec = aet.BernoulliDecoder(aet.MLP([HIDDEN], final_activation=nn.relu), 64)
    return aet.RHVAE(enc, dec, rhvae.MetricNetwork(aet.layers.NNX(Body, 64, HIDDEN), 2), 16, 0.8, 1e-2)


CASES = {
    "vae": (lambda: _vae(aet.layers.NNX(Body, 64, HIDDEN)), aet.vae.loss, {}),
    "hvae": (lambda: aet.HVAE(aet.JointGaussianLogEncoder(aet.layers.NNX(Body, 64, HIDDEN), 2),
                              aet.BernoulliDecoder(aet.MLP([HIDDEN], final_activation=nn.relu), 64)),
             hvae.loss, {"K": 1}),
    "rhvae": (_rhvae, rhvae.loss, {"K": 1, "n_fixed_point": 3, "flow_gradient": "detached"}),
}


def _fit(name, x, **kw):
    make, loss_fn, hyper = CASES[name]
    model = make()
    loss = functools.partial(loss_fn, model, **hyper)
    return model, loss, aet.train.fit(model, loss, x, key=jax.random.key(0), optimizer=optax.adam(1e-2), epochs=2,
                                      batch_size=32, progress=False, **kw)


@pytest.fixture(scope="module")
def vae_run(digits, tmp_path_factory):
    """The NNX-body VAE trained 2 epochs with checkpoints (tests copy the folder)."""
    d = str(tmp_path_factory.mktemp("nnx_vae") / "ckpt")
    return d, _fit("vae", digits[0].x[:256], checkpoint_dir=d)


@pytest.mark.slow
@pytest.mark.parametrize("name", list(CASES))
def test_nnx_encoder_body_trains(name, digits, vae_run):
    """The training loss falls, and on held-out digits the trained encoder/decoder's plain ELBO
    (one reparameterised draw, the same cheap metric for the three models) beats 64·log 2 − 4
    nats: a decoder answering 1/2 for every pixel scores 64·log 2 ≈ 44.4 (the initial networks
    score ≈ 49)."""
    train, val = digits
    x, xv = train.x[:256], jnp.asarray(val.x[:128])
    model, _, (variables, history) = vae_run[1] if name == "vae" else _fit(name, x)
    assert history["train"]["loss"][1] < history["train"]["loss"][0]
    v0 = model.init(jax.random.split(jax.random.key(0), 3)[0], jnp.asarray(x[:1]))  # fit's initial variables
    held_out0 = float(aet.vae.loss(model, v0, xv, jax.random.key(9)))
    held_out = float(aet.vae.loss(model, variables, xv, jax.random.key(9)))
    assert held_out0 > 64 * np.log(2) > held_out + 4.0, (held_out0, held_out)
    assert "dense" in variables["params"]["encoder"]["body"]
    if name == "rhvae":
        assert "dense" in variables["params"]["metric_network"]["body"]


def test_nnx_variables_checkpoint_and_resume_bit_exactly(digits, vae_run, tmp_path):
    src, (model, _, (v_full, h_full)) = vae_run
    d = shutil.copytree(src, str(tmp_path / "ckpt"))
    newest = aet.checkpoint.list_checkpoints(d)
    assert len(newest) == 2
    aet.checkpoint.remove(newest[-1])  # as if killed before the second epoch's checkpoint
    _, _, (v_res, h_res) = _fit("vae", digits[0].x[:256], checkpoint_dir=d, resume=True)
    assert _leaves_equal(v_res, v_full) and h_res == h_full
    v_half = aet.checkpoint.read_raw(aet.checkpoint.list_checkpoints(src)[0])["state"]["params"]
    assert not _leaves_equal(v_half, v_full["params"])
    loaded = aet.train.load_variables(model, d, digits[0].x[:1])
    assert _leaves_equal(loaded, v_full)


@pytest.mark.parametrize("bad, match", [
    (lambda: aet.layers.NNX(WithDropout, 4), r"module_cls: WithDropout .*drop/rngs"),
    (lambda: aet.layers.NNX(WithBatchNorm, 4), r"module_cls: WithBatchNorm .*norm/mean \(BatchStat\)"),
    (lambda: aet.layers.NNX(Body, 4, 4, rngs=nnx.Rngs(0)), r"rngs"),
])
def test_nnx_refuses_state_it_cannot_carry(bad, match):
    with pytest.raises(ValueError, match=match):
        bad()


def test_nnx_refuses_an_instance():
    with pytest.raises(TypeError, match="module_cls .*an instance of Body"):
        aet.layers.NNX(Body(4, 4, rngs=nnx.Rngs(0)))
    with pytest.raises(TypeError, match="module_cls"):
        aet.layers.NNX(nn.Dense)
