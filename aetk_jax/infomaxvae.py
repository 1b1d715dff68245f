"""InfoMax-VAE (Rezaabad & Vishwanath 2020).

A VAE whose encoder also maximises a variational lower bound on the mutual
information I(x; z) between data and codes, estimated by a critic network
T(x, z) (the f-divergence / NWJ bound):

    Î(x; z) = (1/B) Σ_b T(x_b, z_b) − (1/B) Σ_b exp(T(x_b, z_π(b)) − 1),

with z_b ~ q(z|x_b) reparameterised and π a random derangement of the batch
(``shuffle_latent``: a permutation with π(b) ≠ b for every b, and P(π(b) = c) =
1/(B − 1) for every c ≠ b), so (x_b, z_π(b)) are draws from the product of
marginals. A plain random permutation would keep about one pair in place per
batch (half the pairs at B = 2), biasing the second term towards the joint;
AutoEncoderToolkit.jl uses a plain permutation.

- encoder/decoder loss (``loss``): −mean log p(x|z) + β·mean KL − α·Î, the
  critic's parameters held fixed (``stop_gradient``);
- critic loss (``mi_loss``): −Î with the codes held fixed (``stop_gradient``).

The gradient of Î reaches the encoder through both the paired and the shuffled
codes (the paper's objective: q(z) is the encoder's aggregate posterior);
AutoEncoderToolkit.jl marks the shuffle as non-differentiable instead.

A conditional InfoMax-VAE (``n_conditions``/``condition_dim``) takes pairs
``x = (x, c)``: the encoder sees (x, c), the decoder (z, c), and the critic
T(x, z) the data alone, so Î estimates I(x; z) as above.

``aet.train.fit`` trains both parameter groups in one jitted step, each with its
own optax optimizer (``optimizer`` = one transformation for both, or
``{"vae": opt, "mi": opt}``): first the encoder/decoder update, then the critic
update on codes from the updated encoder (the Julia package's order). The two
updates are phases of ``aet.train.make_step``, declared in the training layer
(``aet.train.infomax_phases``, ``aetk_jax/training/hooks.py``); this module does
not import it.
"""
from __future__ import annotations

from typing import Any, Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp

from .base import (
    AutoEncoderModel, Variables, batch_size, check_inputs, elbo_terms, encode, finish, sample_posterior, split_condition,
)
from .encoders import encoder_mean
from .validation import check_int, check_key, check_scalar

#: the name of the critic's parameter group in ``variables["params"]``
MI_GROUP = "mi_network"


class MutualInfoNetwork(nn.Module):
    """The default critic T(x, z): ``body`` on [flatten(x), z], then a scalar head.

    ``x``: ``(batch, *data_shape)``, ``z``: ``(batch, d)``; returns ``(batch,)``.
    ``body`` is any flax module mapping ``(batch, n_x + d)`` to features, e.g.
    ``aet.MLP([64, 64], final_activation=nn.relu)``.
    """

    body: nn.Module

    @nn.compact
    def __call__(self, x: jax.Array, z: jax.Array) -> jax.Array:
        h = jnp.concatenate([x.reshape(x.shape[0], -1), z.reshape(z.shape[0], -1)], axis=-1)
        return nn.Dense(1, name="head")(self.body(h))[..., 0]


class InfoMaxVAE(AutoEncoderModel):
    """``InfoMaxVAE(encoder, decoder, mi_network)``.

    ``mi_network`` is a flax module T(x, z) -> ``(batch,)`` (e.g.
    ``MutualInfoNetwork(body)``). ``model.init(key, x)`` creates the
    ``encoder``, ``decoder`` and ``mi_network`` parameter groups.
    """

    mi_network: nn.Module

    def critic(self, x: jax.Array, z: jax.Array) -> jax.Array:
        return self.mi_network(x, z)

    def __call__(self, x: Any) -> Any:
        x, c = split_condition(self, x)
        z = encoder_mean(self.encoder, self.encode(x, c))
        self.mi_network(x, z)
        self.init_prior(z)
        return self.decode(z, c)


def derangement(key: jax.Array, n: int) -> jax.Array:
    """A random permutation of ``0..n−1`` without fixed points, ``(n,)`` int32.

    π = σ ∘ s ∘ σ⁻¹ for a uniform random permutation σ and a cyclic shift s by a
    uniform k ∈ {1, …, n − 1}: π(σ(i)) = σ(i + k mod n). No index maps to itself,
    and by the symmetry of σ each target c ≠ b is equally likely, P(π(b) = c) =
    1/(n − 1) (π is not uniform over all derangements; the MI bound needs only
    these marginals). Pure, keyed and jit-able (``n`` is static).

    Args:
        key: a ``jax.random`` key.
        n: the number of items, an int ≥ 2 (``ValueError`` otherwise: one item has no derangement).

    Returns:
        ``pi`` with ``pi[b] ≠ b`` for every ``b``.
    """
    check_key(key)
    check_int(n, "n", minimum=1)
    if n < 2:
        raise ValueError(f"a derangement needs n >= 2 items (one item cannot be moved), got n = {n}")
    k_perm, k_shift = jax.random.split(key)
    sigma = jax.random.permutation(k_perm, n)
    shift = jax.random.randint(k_shift, (), 1, n)
    return jnp.zeros(n, sigma.dtype).at[sigma].set(jnp.roll(sigma, -shift))


def shuffle_latent(z: jax.Array, key: jax.Array) -> jax.Array:
    """Rows of ``z`` ``(batch, d)`` deranged: ``z[π]`` with π(b) ≠ b for every row (``derangement``).

    Args:
        z: codes ``(batch, ...)`` with batch ≥ 2 (``ValueError`` otherwise).
        key: a ``jax.random`` key.

    Returns:
        An array like ``z`` whose row b is row π(b) of ``z``.
    """
    check_key(key)
    if not hasattr(z, "ndim") or z.ndim < 1:
        raise ValueError("`z` must be an array with a batch axis")
    if z.shape[0] < 2:
        raise ValueError(f"`z` needs a batch of >= 2 codes to shuffle into other rows, got {z.shape[0]}")
    return z[derangement(key, z.shape[0])]


def critic(model: InfoMaxVAE, variables: Variables, x: jax.Array, z: jax.Array) -> jax.Array:
    """T(x, z) per example, ``(batch,)``; a conditional model's critic sees the data of ``x = (x, c)``, not c."""
    return model.apply(variables, split_condition(model, x)[0], z, method="critic")


def variational_mutual_info(
    model: InfoMaxVAE, variables: Variables, x: jax.Array, z: jax.Array, z_shuffled: jax.Array
) -> jax.Array:
    """Î(x; z) = mean_b T(x_b, z_b) − mean_b exp(T(x_b, z̃_b) − 1), a scalar (NWJ lower bound).

    ``x``: ``(batch, *data_shape)``; ``z``, ``z_shuffled``: ``(batch, d)`` with
    ``z_shuffled`` a permutation of ``z`` across the batch (``shuffle_latent``).
    """
    if z.shape != z_shuffled.shape:
        raise ValueError(
            f"`z` {tuple(z.shape)} and `z_shuffled` {tuple(z_shuffled.shape)} must have the same shape"
        )
    t_joint = critic(model, variables, x, z)
    t_marg = critic(model, variables, x, z_shuffled)
    return jnp.mean(t_joint) - jnp.mean(jnp.exp(t_marg - 1.0))


def split_params(params: Mapping[str, Any]) -> tuple[dict[str, Any], Any]:
    """``params`` -> (encoder/decoder group, critic group)."""
    if MI_GROUP not in params:
        raise ValueError(f"`variables['params']` has no '{MI_GROUP}' group: was it made by InfoMaxVAE.init?")
    return {k: v for k, v in params.items() if k != MI_GROUP}, params[MI_GROUP]


def merge_params(vae_params: Mapping[str, Any], mi_params: Any) -> dict[str, Any]:
    """Inverse of ``split_params``."""
    return {**vae_params, MI_GROUP: mi_params}


def _with_params(variables: Variables, params: Mapping[str, Any]) -> dict[str, Any]:
    return {**variables, "params": params}


def _check_batch(x: Any) -> None:
    if batch_size(x) < 2:
        raise ValueError("`x` needs a batch of >= 2 examples: the MI bound shuffles codes across the batch")


def loss(
    model: InfoMaxVAE,
    variables: Variables,
    x: jax.Array,
    key: jax.Array,
    *,
    alpha: float = 1.0,
    beta: float = 1.0,
    aux: bool = False,
) -> Any:
    """Encoder/decoder loss, a scalar:

        loss = −mean_b log p(x_b|z_b) + β·mean_b KL_b − α·Î(x; z).

    One reparameterised code per example, drawn with ``key`` exactly as
    ``aet.vae.loss`` does (so α = 0 gives ``aet.vae.loss(..., beta=beta)``); the
    shuffle uses ``jax.random.fold_in(key, 1)``. The critic's parameters are
    ``stop_gradient``-ed: this loss never trains the critic (the gradient of Î
    still reaches the encoder, through both the paired and the shuffled codes).
    α, β ≥ 0 (``ValueError`` otherwise); the batch needs ≥ 2 examples.

    With ``aux=True`` returns ``(loss, {"loss", "loglikelihood", "kl", "mi", "elbo"})``.
    """
    check_inputs(model, x, key)
    check_scalar(alpha, "alpha", nonnegative=True)
    check_scalar(beta, "beta", nonnegative=True)
    _check_batch(x)
    vae_p, mi_p = split_params(variables["params"])
    frozen = _with_params(variables, merge_params(vae_p, jax.lax.stop_gradient(mi_p)))
    t = elbo_terms(model, frozen, x, key, 1)
    z = t.z[0]
    z_shuf = shuffle_latent(z, jax.random.fold_in(key, 1))
    mi = variational_mutual_info(model, frozen, x, z, z_shuf)
    loglik, kl = jnp.mean(t.loglik), jnp.mean(t.kl)
    value = -loglik + beta * kl - alpha * mi
    return finish(value, {"loglikelihood": loglik, "kl": kl, "mi": mi, "elbo": loglik - kl}, aux)


def mi_loss(model: InfoMaxVAE, variables: Variables, x: jax.Array, key: jax.Array, *, aux: bool = False) -> Any:
    """Critic loss −Î(x; z), a scalar.

    Codes z ~ q(z|x) (one per example) and their shuffle are drawn exactly as in
    ``loss`` with the same ``key``, and ``stop_gradient``-ed, so only the critic
    receives gradient (the decoder is not evaluated). With ``aux=True`` returns
    ``(loss, {"loss", "mi"})``.
    """
    check_inputs(model, x, key)
    _check_batch(x)
    enc_out = encode(model, variables, x)
    z = jax.lax.stop_gradient(sample_posterior(model, enc_out, key, 1)[0])
    z_shuf = shuffle_latent(z, jax.random.fold_in(key, 1))
    mi = variational_mutual_info(model, variables, x, z, z_shuf)
    return finish(-mi, {"mi": mi}, aux)


__all__ = [
    "InfoMaxVAE",
    "MutualInfoNetwork",
    "shuffle_latent",
    "derangement",
    "critic",
    "variational_mutual_info",
    "loss",
    "mi_loss",
    "split_params",
    "merge_params",
]
