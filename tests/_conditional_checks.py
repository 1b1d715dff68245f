"""The conditional-model checks of the zoo's test files (AAE, VAE-GAN, FactorVAE, Disentangled β-VAE).

The references are those of ``tests/test_conditional.py``, written here for any set of first layers
(the encoder's and decoder's bodies, and a discriminator that sees the condition):

- a one-hot label c₀ adds row ``n + c₀`` of a first layer's kernel (n inputs before the condition) to
  that layer's input, i.e. it is a bias: the loss of the conditional model at a constant label equals
  the unconditional model's loss at the parameters with that row moved into the bias (same key);
- zero kernel rows for the condition make the label irrelevant: the unconditional loss for any labelling;
- another labelling changes the loss, and the condition's kernel rows receive gradient.
"""
from __future__ import annotations

from typing import Any, Callable, Mapping

import jax
import jax.numpy as jnp
import numpy as np

N_IN, K, LATENT = 12, 3, 2
# the first layers of the encoder's and decoder's bodies, and how many inputs each has before the condition
BODIES = {("encoder", "body", "dense_0"): N_IN, ("decoder", "body", "dense_0"): LATENT}


def batch(n: int = 6, seed: int = 0) -> tuple[jax.Array, jax.Array]:
    """``n`` examples of ``N_IN`` features in [0, 1] and labels in 0..K−1."""
    rng = np.random.default_rng(seed)
    return jnp.asarray(rng.uniform(size=(n, N_IN)), jnp.float32), jnp.asarray(rng.integers(0, K, n), jnp.int32)


def _node(tree: Any, path: tuple) -> Any:
    for p in path:
        tree = tree[p]
    return tree


def _replaced(params: Any, layers: Mapping[tuple, int], new: Callable[[dict, int], dict]) -> Any:
    out = jax.tree_util.tree_map(lambda a: a, params)  # new containers, the same arrays
    for path, width in layers.items():
        _node(out, path[:-1])[path[-1]] = new(_node(out, path), width)
    return out


def absorb_label(params: Any, layers: Mapping[tuple, int], c0: int) -> Any:
    """Unconditional parameters equal to the conditional ones at the constant label ``c0``."""
    return _replaced(params, layers, lambda layer, n: {"kernel": layer["kernel"][:n],
                                                       "bias": layer["bias"] + layer["kernel"][n + c0]})


def pad_condition(params: Any, layers: Mapping[tuple, int]) -> Any:
    """Conditional parameters from unconditional ones: zero kernel rows for the K condition inputs."""
    def pad(layer, _n):
        zeros = jnp.zeros((K, layer["kernel"].shape[1]), layer["kernel"].dtype)
        return {**layer, "kernel": jnp.concatenate([layer["kernel"], zeros], axis=0)}

    return _replaced(params, layers, pad)


def check_conditional_loss(model: Any, variables: Any, loss: Callable, layers: Mapping[tuple, int],
                           trained: Mapping[tuple, int], *, c0: int = 2, seed: int = 4) -> None:
    """The three properties for ``loss(model, variables, x, key, aux=False)`` of the conditional ``model``
    (``n_conditions=K``) on :func:`batch`.

    Args:
        model: the conditional model; its unconditional twin is ``model.clone(n_conditions=0)``.
        variables: its variables, made on ``(x, c)``.
        loss: the loss, with the hyper-parameters bound.
        layers: every first layer that sees the condition, with its inputs before the condition.
        trained: those of ``layers`` whose condition rows this loss must train (a nonzero gradient).
        c0: the constant label.
        seed: the key of the loss.
    """
    plain = model.clone(n_conditions=0)
    x, c = batch()
    key = jax.random.key(seed)
    for path, width in layers.items():
        assert _node(variables["params"], path)["kernel"].shape[0] == width + K, path
    absorbed = {**variables, "params": absorb_label(variables["params"], layers, c0)}
    padded = {**variables, "params": pad_condition(absorbed["params"], layers)}
    assert jax.tree_util.tree_structure(padded) == jax.tree_util.tree_structure(variables)

    @jax.jit
    def run(variables, absorbed, padded):
        value, grads = jax.value_and_grad(lambda v: loss(model, v, (x, c), key))(variables)
        metrics = lambda m, v, data: loss(m, v, data, key, aux=True)[1]  # noqa: E731
        return value, grads, {
            "plain": metrics(plain, absorbed, x),
            "constant": metrics(model, variables, (x, jnp.full(x.shape[0], c0, jnp.int32))),
            "other": metrics(model, variables, (x, jnp.zeros(x.shape[0], jnp.int32))),
            "padded": metrics(model, padded, (x, c)),
        }

    value, grads, m = run(variables, absorbed, padded)
    assert np.isfinite(value)
    assert all(np.all(np.isfinite(g)) for g in jax.tree_util.tree_leaves(grads))
    for path, width in trained.items():  # the condition reaches this layer through this loss
        assert np.any(np.asarray(_node(grads["params"], path)["kernel"][width:]) != 0), path
    want = m["plain"]
    assert not np.allclose(m["other"]["loss"], want["loss"], rtol=1e-3)
    for k in want:
        np.testing.assert_allclose(m["constant"][k], want[k], rtol=2e-6, atol=1e-6, err_msg=f"constant {k}")
        np.testing.assert_allclose(m["padded"][k], want[k], rtol=2e-6, atol=1e-6, err_msg=f"padded {k}")
