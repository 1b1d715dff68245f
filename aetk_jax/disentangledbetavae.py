"""Disentangled β-VAE with capacity annealing (Burgess et al. 2018, "Understanding disentangling in β-VAE").

The KL term is pulled towards a target capacity C(e) that grows with the epoch e:

    loss = (1/B) Σ_b [ −log p(x_b | z_b) + β · |KL(q(z|x_b) ‖ p(z)) − C(e)| ],
    C(e) = C · min(e / W, 1)            (W = ``warmup_epochs``; C(e) = C when W = 0),

with one reparameterised code z_b ~ q(z|x_b) per example (drawn as ``aet.vae.loss``
draws it) and the KL in closed form for the standard normal prior (Monte Carlo for
a learned prior, ``aet.base.kl_term``). The absolute value is taken per example,
as in the paper's per-datum objective. Shapes: ``x`` ``(B, *data_shape)``; the
loss is a scalar.

The epoch: ``aet.train.fit`` calls a loss that has an ``epoch`` parameter with
the index of the epoch it is training (0, 1, …; a traced ``int32``, so the epoch
is compiled once for the whole run). Called without it (``epoch=None``) the loss
uses the full capacity C, the value after the warm-up. ``capacity(epoch, ...)``
is the schedule.

Departures from pythae (``pythae.models.DisentangledBetaVAE``):

- pythae counts epochs from 1 and uses C · min(e_pythae / (W + 1), 1), so its first
  epoch already targets C/(W + 1) (1.92 nats with the defaults) and C is reached
  at e_pythae = W + 1, which is epoch index W here too. Here C(0) = 0, as in the
  paper ("C increased linearly from zero"); the two schedules differ by
  C·(W − e)/(W(W + 1)) ≤ C/(W + 1) before the end of the warm-up and agree after it;
- the reconstruction term is the decoder's own log-likelihood (pythae: summed MSE
  or BCE; BCE is the Bernoulli log-likelihood, MSE a Gaussian one up to scale).
"""
from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from .base import AutoEncoderModel, Variables, check_inputs, elbo_terms, finish
from .validation import check_int, check_scalar
from .vae import elbo  # the VAE's ELBO scores a trained model (the training objective differs)


class DisentangledBetaVAE(AutoEncoderModel):
    """``DisentangledBetaVAE(encoder, decoder)``: a stochastic encoder and any decoder (the VAE's layout)."""


def capacity(epoch: Any, C: float = 50.0, warmup_epochs: int = 25) -> jax.Array:
    """The target KL C(e) = C · min(e / W, 1) at epoch ``epoch`` (a float32 scalar).

    Args:
        epoch: the epoch index e ≥ 0 (an int or a traced integer), or ``None`` for
            the end of the warm-up (C).
        C: the final capacity in nats, ≥ 0.
        warmup_epochs: W ≥ 0, the epochs over which C(e) grows from 0 to C (W = 0: C at once).

    Returns:
        C(e), a float32 scalar.
    """
    check_scalar(C, "C", nonnegative=True)
    check_int(warmup_epochs, "warmup_epochs", minimum=0)
    if epoch is not None:
        check_scalar(epoch, "epoch", nonnegative=True)  # skipped when traced
    if epoch is None or warmup_epochs == 0:
        return jnp.asarray(C, jnp.float32)
    fraction = jnp.minimum(jnp.asarray(epoch, jnp.float32) / float(warmup_epochs), 1.0)
    return jnp.float32(C) * fraction


def loss(
    model: AutoEncoderModel,
    variables: Variables,
    x: jax.Array,
    key: jax.Array,
    *,
    beta: float = 10.0,
    C: float = 50.0,
    warmup_epochs: int = 25,
    epoch: Any = None,
    aux: bool = False,
) -> Any:
    """The capacity-annealed β-VAE loss averaged over the batch; a scalar.

    Args:
        model: a ``DisentangledBetaVAE`` (any model with a stochastic encoder).
        variables: its variables.
        x: a batch ``(B, *data_shape)``.
        key: PRNG key (one reparameterised code per example, as ``aet.vae.loss``).
        beta: β ≥ 0, the weight of |KL − C(e)|.
        C: the final capacity in nats, ≥ 0.
        warmup_epochs: W ≥ 0 (see :func:`capacity`).
        epoch: the current epoch (``fit`` passes it; ``None``: the full capacity C).
        aux: also return the metrics.

    Returns:
        The loss, or ``(loss, {"loss", "loglikelihood", "kl", "capacity", "elbo"})``.
    """
    check_inputs(model, x, key)
    check_scalar(beta, "beta", nonnegative=True)
    c = capacity(epoch, C, warmup_epochs)
    t = elbo_terms(model, variables, x, key, 1)
    loglik, kl = jnp.mean(t.loglik), jnp.mean(t.kl)
    value = -loglik + beta * jnp.mean(jnp.abs(t.kl - c.astype(t.kl.dtype)))
    return finish(value, {"loglikelihood": loglik, "kl": kl, "capacity": c, "elbo": loglik - kl}, aux)


__all__ = ["DisentangledBetaVAE", "capacity", "elbo", "loss"]
