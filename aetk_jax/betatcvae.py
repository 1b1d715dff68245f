"""β-TC-VAE (Chen, Li, Grosse & Duvenaud 2018): the KL term split into three parts.

With n the data index (uniform over a data set of N points), q(z|n) the encoder,
q(z) = (1/N) Σ_n q(z|n) the aggregate posterior and q(z_k) its marginals,

    E_n KL(q(z|n) ‖ p(z)) = I_q(z; n)                      (index-code MI)
                          + KL(q(z) ‖ Π_k q(z_k))           (total correlation)
                          + Σ_k KL(q(z_k) ‖ p(z_k))         (dimension-wise KL),

and the loss, averaged over the batch of B examples with one code z_i ~ q(z|x_i) each, is

    loss = −(1/B) Σ_i [log p(x_i|z_i) − α·MI_i − β·TC_i − γ·DKL_i],
    MI_i  = log q(z_i|x_i) − log q̂(z_i),
    TC_i  = log q̂(z_i) − Σ_k log q̂(z_ik),
    DKL_i = Σ_k log q̂(z_ik) − log p(z_i).

The densities of the aggregate posterior are estimated on the batch from the
B × B (× d) matrix L[i, j] = log q(z_i | x_j):

- ``estimator="weighted"`` (minibatch-weighted sampling, MWS, the paper's eq. (S7)
  and pythae's default): log q̂(z_i) = logsumexp_j L[i, j] − log(B·N), and the same
  per dimension k for log q̂(z_ik). The importance weights 1/(B·N) sum to 1/N, so
  log q̂ estimates log q(z) − log N (a constant: it moves MI by +log N, TC by
  +(d − 1) log N and DKL by −d log N, and leaves every gradient unchanged).
- ``estimator="stratified"`` (minibatch-stratified sampling, MSS): with M = B − 1,
  log q̂(z_i) = logsumexp_j (L[i, j] + log W[i, j]), W[i, i] = 1/N (z_i's own
  example), W[i, (i+1) mod B] = (N − M)/(N·M), W[i, j] = 1/M otherwise. Each row
  sums to 1, and q̂(z_i) is unbiased for q(z_i) when the batch is a uniformly
  random subset of the data (tested).

With α = β = γ = 1 the three terms telescope to log q(z|x) − log p(z) whatever
the estimator, and the loss is the single-sample negative ELBO (KL estimated by
Monte Carlo instead of in closed form).

Shapes: ``x`` ``(B, *data_shape)``, codes ``(B, d)``; the encoder must be Gaussian
(``JointGaussianLogEncoder`` or ``JointGaussianEncoder``). Memory O(B² d).

Departures from pythae (``pythae.models.BetaTCVAE``):

- the reconstruction term is the decoder's own log-likelihood (pythae: summed MSE
  or BCE; BCE is the Bernoulli log-likelihood, MSE a Gaussian one up to scale);
- MSS: pythae (following the original authors' code) builds W by flat strides of
  length B, which puts the weight 1/N in column 0 of every row rather than on the
  diagonal; here the 1/N sits on each code's own example, as in the paper's
  derivation. On the fixed codes of ``tests/test_betatcvae.py`` the two differ by
  up to 2.1 nats in log q̂(z_i) (B = 7, N = 50);
- ``dataset_size`` is required (pythae silently falls back to the batch size).
"""
from __future__ import annotations

import math
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from jax.scipy.special import logsumexp

from .base import (
    AutoEncoderModel, Variables, batch_size, check_inputs, encode, finish, log_prior, loglikelihood, sample_posterior,
)
from .encoders import gaussian_mu_logsigma
from .distributions import gaussian_logdensity
from .validation import check_scalar
from .vae import elbo as _vae_elbo

ESTIMATORS = ("weighted", "stratified")


class BetaTCVAE(AutoEncoderModel):
    """β-TC-VAE: ``BetaTCVAE(encoder, decoder)``, a Gaussian encoder and any decoder (the VAE's layout)."""


class Decomposition(NamedTuple):
    """Per-example terms of the KL decomposition, each ``(B,)``: ``mi``, ``tc``, ``dimkl``."""

    mi: jax.Array
    tc: jax.Array
    dimkl: jax.Array


def check_dataset_size(dataset_size: Any, batch_size: int) -> None:
    """``dataset_size`` must be a Python int N ≥ the batch size (``ValueError`` naming it otherwise)."""
    if dataset_size is None:
        raise ValueError("`dataset_size` (the number N of training examples) is required by the β-TC-VAE estimators")
    if isinstance(dataset_size, bool) or not isinstance(dataset_size, int):
        raise ValueError(f"`dataset_size` must be an int, got {dataset_size!r}")
    if dataset_size < batch_size:
        raise ValueError(f"`dataset_size` must be >= the batch size {batch_size}, got {dataset_size}")


def log_importance_weights(batch_size: int, dataset_size: int, estimator: str = "weighted") -> jax.Array:
    """log W ``(B, B)``: the weight of log q(z_i|x_j) in the estimate of log q(z_i).

    Args:
        batch_size: B (≥ 2 for ``"stratified"``).
        dataset_size: N ≥ B.
        estimator: ``"weighted"`` (every entry 1/(B·N)) or ``"stratified"``
            (1/N on the diagonal, (N − M)/(N·M) at (i, (i + 1) mod B), 1/M elsewhere, M = B − 1).

    Returns:
        The log weights as a float array.
    """
    check_estimator(estimator)
    b, n = batch_size, dataset_size
    if estimator == "weighted":
        return jnp.full((b, b), -math.log(b * n))
    m = b - 1
    if m < 1:
        raise ValueError("the stratified estimator needs a batch of >= 2 examples (`x`)")
    eye = jnp.eye(b, dtype=bool)
    nxt = jnp.roll(eye, 1, axis=1)  # (i, (i + 1) mod B)
    w = jnp.where(eye, 1.0 / n, jnp.where(nxt, (n - m) / (n * m), 1.0 / m))
    return jnp.log(w)


def check_estimator(estimator: Any) -> None:
    if estimator not in ESTIMATORS:
        raise ValueError(f"`estimator` must be one of {ESTIMATORS}, got {estimator!r}")


def aggregate_log_densities(
    z: jax.Array, mu: jax.Array, logsigma: jax.Array, dataset_size: int, estimator: str = "weighted"
) -> tuple[jax.Array, jax.Array]:
    """Batch estimates of log q(z_i) and Σ_k log q(z_ik) for codes ``z`` ``(B, d)``.

    Args:
        z: codes, z_i drawn from q(z|x_i).
        mu: posterior means ``(B, d)``.
        logsigma: posterior log standard deviations ``(B, d)``.
        dataset_size: N.
        estimator: ``"weighted"`` (MWS) or ``"stratified"`` (MSS), see the module docstring.

    Returns:
        ``(log_qz, log_prod_qz)``, each ``(B,)``.
    """
    logw = log_importance_weights(z.shape[0], dataset_size, estimator).astype(z.dtype)
    per_dim = gaussian_logdensity(z[:, None, :], mu[None, :, :], logsigma[None, :, :])  # (B, B, d)
    log_qz = logsumexp(jnp.sum(per_dim, axis=-1) + logw, axis=1)
    log_prod_qz = jnp.sum(logsumexp(per_dim + logw[:, :, None], axis=1), axis=-1)
    return log_qz, log_prod_qz


def decomposition(
    z: jax.Array, mu: jax.Array, logsigma: jax.Array, log_pz: jax.Array, dataset_size: int,
    estimator: str = "weighted",
) -> Decomposition:
    """MI, TC and dimension-wise KL per example from codes ``z`` ``(B, d)`` and log p(z) ``(B,)``.

    Args:
        z: codes ``(B, d)``, as in ``aggregate_log_densities``.
        mu: the posterior means ``(B, d)``.
        logsigma: the posterior log standard deviations ``(B, d)``.
        log_pz: the prior's log density at each code.
        dataset_size: N.
        estimator: ``"weighted"`` or ``"stratified"``.

    Returns:
        ``Decomposition(mi, tc, dimkl)``, each ``(B,)``; they sum to log q(z|x) − log p(z).
    """
    log_qzx = jnp.sum(gaussian_logdensity(z, mu, logsigma), axis=-1)
    log_qz, log_prod_qz = aggregate_log_densities(z, mu, logsigma, dataset_size, estimator)
    return Decomposition(log_qzx - log_qz, log_qz - log_prod_qz, log_prod_qz - log_pz)


def _check_hyper(x: jax.Array, alpha: Any, beta: Any, gamma: Any, dataset_size: Any, estimator: Any) -> None:
    for value, name in ((alpha, "alpha"), (beta, "beta"), (gamma, "gamma")):
        check_scalar(value, name, nonnegative=True)
    check_estimator(estimator)
    check_dataset_size(dataset_size, batch_size(x))
    if estimator == "stratified" and batch_size(x) < 2:
        raise ValueError("the stratified estimator needs a batch of >= 2 examples (`x`)")


def loss(
    model: AutoEncoderModel,
    variables: Variables,
    x: jax.Array,
    key: jax.Array,
    *,
    alpha: float = 1.0,
    beta: float = 1.0,
    gamma: float = 1.0,
    dataset_size: int | None = None,
    estimator: str = "weighted",
    aux: bool = False,
) -> Any:
    """The β-TC-VAE loss averaged over the batch; a scalar.

    Args:
        model: a ``BetaTCVAE`` (any model with a Gaussian encoder).
        variables: its variables.
        x: a batch ``(B, *data_shape)``; its codes form the sample of q(z).
        key: PRNG key (one reparameterised code per example, drawn as ``aet.vae.loss`` does).
        alpha: weight of the index-code mutual information, ≥ 0.
        beta: weight of the total correlation, ≥ 0.
        gamma: weight of the dimension-wise KL, ≥ 0.
        dataset_size: N, the number of training examples (a Python int ≥ B; required).
        estimator: ``"weighted"`` (MWS, default) or ``"stratified"`` (MSS, B ≥ 2).
        aux: also return the metrics.

    Returns:
        The loss, or ``(loss, {"loss", "loglikelihood", "mi", "tc", "dimkl", "kl", "elbo"})``
        with ``kl`` = MI + TC + DKL (the Monte-Carlo KL) and ``elbo`` = loglikelihood − kl.
    """
    check_inputs(model, x, key)
    _check_hyper(x, alpha, beta, gamma, dataset_size, estimator)
    enc_out = encode(model, variables, x)
    mu, logsigma = gaussian_mu_logsigma(enc_out)
    z = sample_posterior(model, enc_out, key, 1)[0]
    loglik = loglikelihood(model, variables, x, z)
    d = decomposition(z, mu, logsigma, log_prior(model, variables, z), dataset_size, estimator)
    mi, tc, dimkl = jnp.mean(d.mi), jnp.mean(d.tc), jnp.mean(d.dimkl)
    ll = jnp.mean(loglik)
    value = -ll + alpha * mi + beta * tc + gamma * dimkl
    kl = mi + tc + dimkl
    return finish(value, {"loglikelihood": ll, "mi": mi, "tc": tc, "dimkl": dimkl, "kl": kl, "elbo": ll - kl}, aux)


def elbo(
    model: AutoEncoderModel, variables: Variables, x: jax.Array, key: jax.Array, *, n_samples: int = 1
) -> jax.Array:
    """Per-example ELBO log p(x|z) − KL(q(z|x) ‖ p(z)), ``(B,)`` — the VAE's (``aet.vae.elbo``).

    The decomposition reweights the KL only; the model's evidence bound is the VAE's.
    """
    return _vae_elbo(model, variables, x, key, n_samples=n_samples)


__all__ = [
    "BetaTCVAE", "Decomposition", "aggregate_log_densities", "decomposition", "elbo", "log_importance_weights", "loss",
]
