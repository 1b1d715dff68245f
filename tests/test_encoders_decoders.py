"""Output shapes, types and parameter shapes of every layer, encoder and decoder module."""
from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import aetk_jax as aet

B, LATENT, H = 4, 3, 6


def _init_apply(module, inp, seed=0):
    variables = module.init(jax.random.key(seed), inp)
    return variables, module.apply(variables, inp)


def _z():
    return jnp.asarray(np.random.default_rng(0).normal(size=(B, LATENT)), jnp.float32)


def _kernel_shapes(variables):
    flat = jax.tree_util.tree_flatten_with_path(variables["params"])[0]
    return {jax.tree_util.keystr(p): tuple(v.shape) for p, v in flat}


# -------------------------------------------------------------------------------- layers


def test_mlp_shapes_and_activations():
    x = jnp.asarray(np.random.default_rng(1).normal(size=(B, 5)), jnp.float32)
    mlp = aet.MLP([7, 3])
    variables, y = _init_apply(mlp, x)
    assert y.shape == (B, 3)
    assert _kernel_shapes(variables) == {
        "['dense_0']['kernel']": (5, 7), "['dense_0']['bias']": (7,),
        "['dense_1']['kernel']": (7, 3), "['dense_1']['bias']": (3,),
    }
    # a NumPy re-implementation: relu between layers, none after the last
    p = jax.tree_util.tree_map(np.asarray, variables["params"])
    h = np.maximum(np.asarray(x) @ p["dense_0"]["kernel"] + p["dense_0"]["bias"], 0)
    want = h @ p["dense_1"]["kernel"] + p["dense_1"]["bias"]
    np.testing.assert_allclose(np.asarray(y), want, rtol=1e-5, atol=1e-6)
    assert np.any(want < 0)  # no final activation
    y2 = aet.MLP([7, 3], final_activation=nn.sigmoid).apply(variables, x)
    np.testing.assert_allclose(np.asarray(y2), 1 / (1 + np.exp(-want)), rtol=1e-5)


def test_mlp_without_layers_raises():
    with pytest.raises(ValueError, match="features"):
        aet.MLP([]).init(jax.random.key(0), jnp.ones((1, 2)))


def test_flatten_and_reshape_round_trip():
    x = jnp.arange(B * 2 * 3 * 4, dtype=jnp.float32).reshape(B, 2, 3, 4)
    flat = aet.Flatten().apply({}, x)
    assert flat.shape == (B, 24)
    back = aet.Reshape((2, 3, 4)).apply({}, flat)
    assert back.shape == (B, 2, 3, 4)
    np.testing.assert_array_equal(np.asarray(back), np.asarray(x))


# ------------------------------------------------------------------------------ encoders


def test_deterministic_encoder_output():
    x = jnp.ones((B, 5))
    variables, z = _init_apply(aet.Encoder(aet.MLP([H]), LATENT), x)
    assert isinstance(z, jax.Array) and z.shape == (B, LATENT) and z.dtype == jnp.float32
    assert _kernel_shapes(variables)["['z']['kernel']"] == (H, LATENT)


@pytest.mark.parametrize(
    "cls, params_cls, second",
    [
        (aet.JointGaussianLogEncoder, aet.GaussianLogParams, "logsigma"),
        (aet.JointGaussianEncoder, aet.GaussianParams, "sigma"),
    ],
)
def test_gaussian_encoder_outputs(cls, params_cls, second):
    x = jnp.asarray(np.random.default_rng(2).normal(size=(B, 2, 5)) * 10, jnp.float32)
    enc = cls(nn.Sequential([aet.Flatten(), aet.MLP([H])]), LATENT)
    variables, out = _init_apply(enc, x)
    assert type(out) is params_cls
    assert out.mu.shape == getattr(out, second).shape == (B, LATENT)
    shapes = _kernel_shapes(variables)
    assert shapes[f"['{second}']['kernel']"] == (H, LATENT)
    assert shapes["['mu']['kernel']"] == (H, LATENT)
    if second == "sigma":
        assert float(jnp.min(out.sigma)) > 0.0
        # σ = softplus(head): invert and compare with the head's affine output
        p = variables["params"]
        h = enc.body.apply({"params": p["body"]}, x)
        pre = np.asarray(h) @ np.asarray(p["sigma"]["kernel"]) + np.asarray(p["sigma"]["bias"])
        np.testing.assert_allclose(np.asarray(out.sigma), np.logaddexp(0, pre), rtol=1e-5)


# ------------------------------------------------------------------------------ decoders


SHAPE = (2, 4)


@pytest.mark.parametrize(
    "make, params_cls, fields",
    [
        (lambda: aet.Decoder(aet.MLP([H]), SHAPE), None, ()),
        (lambda: aet.BernoulliDecoder(aet.MLP([H]), SHAPE), aet.BernoulliParams, ("logits",)),
        (lambda: aet.SimpleGaussianDecoder(aet.MLP([H]), SHAPE), aet.GaussianParams, ("mu", "sigma")),
        (lambda: aet.JointGaussianLogDecoder(aet.MLP([H]), SHAPE), aet.GaussianLogParams, ("mu", "logsigma")),
        (lambda: aet.JointGaussianDecoder(aet.MLP([H]), SHAPE), aet.GaussianParams, ("mu", "sigma")),
        (
            lambda: aet.SplitGaussianLogDecoder(aet.MLP([H]), aet.MLP([H + 1]), SHAPE),
            aet.GaussianLogParams,
            ("mu", "logsigma"),
        ),
        (
            lambda: aet.SplitGaussianDecoder(aet.MLP([H]), aet.MLP([H + 1]), SHAPE),
            aet.GaussianParams,
            ("mu", "sigma"),
        ),
    ],
)
def test_decoder_outputs(make, params_cls, fields):
    dec = make()
    variables, out = _init_apply(dec, _z())
    if params_cls is None:
        assert isinstance(out, jax.Array) and out.shape == (B, *SHAPE)
    else:
        assert type(out) is params_cls
        for f in fields:
            assert getattr(out, f).shape == (B, *SHAPE), f
            assert getattr(out, f).dtype == jnp.float32
        if "sigma" in fields:
            assert float(jnp.min(out.sigma)) > 0
    assert dec.output_shape == SHAPE  # stored as a tuple: the module stays hashable
    hash(dec)
    # every head maps the body's features to prod(SHAPE) = 8 outputs
    heads = {k: v for k, v in _kernel_shapes(variables).items() if "body" not in k and "kernel" in k}
    assert heads and all(v[1] == 8 for v in heads.values())


def test_split_decoders_use_separate_bodies():
    dec = aet.SplitGaussianDecoder(aet.MLP([H]), aet.MLP([H + 1]), SHAPE)
    variables, _ = _init_apply(dec, _z())
    shapes = _kernel_shapes(variables)
    assert shapes["['mu_body']['dense_0']['kernel']"] == (LATENT, H)
    assert shapes["['sigma_body']['dense_0']['kernel']"] == (LATENT, H + 1)
    assert shapes["['mu']['kernel']"] == (H, 8)
    assert shapes["['sigma']['kernel']"] == (H + 1, 8)


@pytest.mark.parametrize("shape", [5, (5,), (3, 2)])
def test_categorical_decoder_logits_shape(shape):
    k = 4
    dec = aet.CategoricalDecoder(aet.MLP([H]), shape, k)
    _, out = _init_apply(dec, _z())
    tshape = (shape,) if isinstance(shape, int) else shape
    assert isinstance(out, aet.CategoricalParams)
    assert out.logits.shape == (B, *tshape, k)
    probs = aet.decoder_mean(dec, out)
    np.testing.assert_allclose(np.asarray(probs.sum(-1)), 1.0, rtol=1e-6)


def test_int_output_shape_is_a_vector():
    dec = aet.BernoulliDecoder(aet.MLP([H]), 64)
    _, out = _init_apply(dec, _z())
    assert dec.output_shape == (64,)
    assert out.logits.shape == (B, 64)
    p = aet.decoder_mean(dec, out)
    np.testing.assert_allclose(np.asarray(p), 1 / (1 + np.exp(-np.asarray(out.logits))), rtol=1e-5)


def test_model_latent_dim_and_forward_shapes():
    enc = aet.JointGaussianLogEncoder(aet.MLP([H]), LATENT)
    dec = aet.BernoulliDecoder(aet.MLP([H]), 10)
    model = aet.VAE(enc, dec)
    x = jnp.zeros((B, 10))
    variables = model.init(jax.random.key(0), x)
    assert model.latent_dim == LATENT
    assert set(variables["params"]) == {"encoder", "decoder"}
    out = model.apply(variables, x)
    assert isinstance(out, aet.BernoulliParams) and out.logits.shape == (B, 10)
    # __call__ decodes the posterior mean
    mu = aet.base.encode(model, variables, x).mu
    np.testing.assert_allclose(np.asarray(out.logits), np.asarray(aet.base.decode(model, variables, mu).logits), rtol=1e-6)
    hash(model)
