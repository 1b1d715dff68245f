"""InfoVAE / MMD-VAE (Zhao, Song & Ermon 2018).

The InfoVAE objective, written as a loss to minimise and averaged over the batch,

    loss = −(1/B) Σ_b log p(x_b | z_b) + (1 − α) · (1/B) Σ_b KL(q(z|x_b) ‖ N(0, I))
           + (λ + α − 1) · MMD²(q(z), p(z)),

with z_b = μ_b + σ_b ⊙ ε_b the batch's reparameterised codes (samples of the
aggregate posterior q(z)) and p(z) = N(0, I) represented by ``n_latent_samples``
fresh draws. MMD² is estimated with a positive-definite kernel k:

    MMD²(q, p) = E k(z, z') + E k(z̃, z̃') − 2 E k(z, z̃),  z, z' ~ q;  z̃, z̃' ~ p.

Two estimators are offered (``unbiased`` keyword): the U-statistic (default; it
averages k over distinct pairs only, so its expectation is exactly MMD² and it can
be slightly negative) and the V-statistic the Julia package uses (averages over
all pairs, diagonals included; always ≥ 0 but biased upwards by O(1/n + 1/m)).

Hyper-parameter rule (checked, ``ValueError`` otherwise): α ≤ 1 so the KL weight
1 − α is ≥ 0, and λ + α − 1 ≥ 0 so the MMD weight is ≥ 0 (hence λ ≥ 0). With the
defaults λ = 1, α = 0 the MMD weight is 0 and the loss is the plain VAE loss —
as in AutoEncoderToolkit.jl; pass e.g. ``lam=10.0`` to switch the MMD term on.
"""
from __future__ import annotations

import functools
import math
from typing import Any, Callable

import jax
import jax.numpy as jnp

from .base import AutoEncoderModel, Variables, batch_size, check_inputs, elbo_terms, finish, sample_prior
from .priors import is_standard_normal
from .utils import sq_dists
from .validation import check_int, check_scalar, is_concrete

Kernel = Callable[[jax.Array, jax.Array], jax.Array]

# folded into the loss key to draw the prior samples, independently of the
# posterior draw (which uses the key itself, exactly as ``aet.vae.loss`` does)
_PRIOR_STREAM = 0x4D4D44


class MMDVAE(AutoEncoderModel):
    """InfoVAE with an MMD penalty: ``MMDVAE(encoder, decoder)`` (Gaussian encoder, any decoder)."""


def gaussian_kernel(x: jax.Array, y: jax.Array, rho: float = 1.0) -> jax.Array:
    """Gaussian (RBF) kernel Gram matrix, ``(n, m)``.

        K[i, j] = exp(−‖x_i − y_j‖² / (ρ² · d)),

    with ``x`` ``(n, d)``, ``y`` ``(m, d)`` and d the latent dimension (the
    bandwidth scales with d, as in AutoEncoderToolkit.jl). Squared distances are
    expanded, ‖x_i‖² − 2x_i·y_j + ‖y_j‖² floored at 0 (:func:`aet.utils.sq_dists`:
    one matrix product; the sum of (x_i − y_j)² over the small latent axis ran ~4×
    slower in the training step on CPU), so the diagonal of K(x, x) is 1 up to
    float rounding ε·‖x_i‖² (the estimators below drop it). Memory O(n · m).
    ``rho`` must be > 0.
    """
    check_scalar(rho, "rho", positive=True)
    _check_samples(x, "x", minimum=1)
    _check_samples(y, "y", minimum=1)
    if x.shape[-1] != y.shape[-1]:
        raise ValueError(f"`x` and `y` must have the same dimension, got {x.shape[-1]} and {y.shape[-1]}")
    d = x.shape[-1]
    return jnp.exp(-sq_dists(x, y) / (rho**2 * d))


#: the IMQ kernel's default scales (those of Tolstikhin et al.'s code and of pythae's WAE)
IMQ_SCALES = (0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0)


def imq_kernel(x: jax.Array, y: jax.Array, scales: Any = IMQ_SCALES, bandwidth: float = 1.0) -> jax.Array:
    """Multi-scale inverse multiquadric kernel Gram matrix, ``(n, m)``.

        K[i, j] = Σ_s C_s / (C_s + ‖x_i − y_j‖²),   C_s = 2 · d · bandwidth² · s,

    with ``x`` ``(n, d)``, ``y`` ``(m, d)`` and d the latent dimension (the WAE's
    kernel, Tolstikhin et al. 2018). ``scales`` is a non-empty sequence of
    positive numbers; ``bandwidth`` must be > 0. Squared distances as in
    :func:`gaussian_kernel` (expanded). Memory O(n · m · #scales).
    """
    check_scalar(bandwidth, "bandwidth", positive=True)
    scales = check_scales(scales)
    _check_samples(x, "x", minimum=1)
    _check_samples(y, "y", minimum=1)
    if x.shape[-1] != y.shape[-1]:
        raise ValueError(f"`x` and `y` must have the same dimension, got {x.shape[-1]} and {y.shape[-1]}")
    sq = sq_dists(x, y)
    c = 2.0 * x.shape[-1] * bandwidth**2 * jnp.asarray(scales, sq.dtype)
    return jnp.sum(c / (c + sq[..., None]), axis=-1)


def check_scales(scales: Any) -> tuple[float, ...]:
    """A kernel's ``scales``: a non-empty sequence of finite numbers > 0, returned as a tuple."""
    try:
        values = tuple(float(s) for s in scales)
    except (TypeError, ValueError):
        raise ValueError(f"`scales` must be a sequence of positive numbers, got {scales!r}") from None
    if not values or not all(math.isfinite(s) and s > 0 for s in values):
        raise ValueError(f"`scales` must be a non-empty sequence of positive numbers, got {scales!r}")
    return values


def _check_samples(a: Any, name: str, *, minimum: int) -> None:
    if not hasattr(a, "shape") or not hasattr(a, "dtype"):
        raise TypeError(f"`{name}` must be an array of samples (n, d), got {type(a).__name__}")
    if a.ndim != 2:
        raise ValueError(f"`{name}` must have shape (n, d), got {tuple(a.shape)}")
    if a.shape[0] < minimum:
        raise ValueError(f"`{name}` needs at least {minimum} samples, got {a.shape[0]}")


def _offdiag_mean(k: jax.Array) -> jax.Array:
    n = k.shape[0]
    return (jnp.sum(k) - jnp.sum(jnp.diagonal(k))) / (n * (n - 1))


def mmd_div(
    x: jax.Array, y: jax.Array, kernel: Kernel = gaussian_kernel, *, unbiased: bool = True
) -> jax.Array:
    """Squared maximum mean discrepancy between samples ``x`` ``(n, d)`` and ``y`` ``(m, d)``.

    ``kernel(a, b)`` returns the Gram matrix ``(len(a), len(b))`` (bind its
    options with ``functools.partial``, e.g. ``partial(gaussian_kernel, rho=2.0)``).

    - ``unbiased=True`` (default), the U-statistic:
      Σ_{i≠i'} k(x_i, x_i') / (n(n−1)) + Σ_{j≠j'} k(y_j, y_j') / (m(m−1)) − 2 mean k(x_i, y_j);
      unbiased for MMD², may be negative; needs n, m ≥ 2.
    - ``unbiased=False``, the V-statistic (AutoEncoderToolkit.jl's ``mmd_div``):
      mean K(x, x) + mean K(y, y) − 2 mean K(x, y), diagonals included; ≥ 0.

    Fully vectorised (three Gram matrices, no Python loops). Returns a scalar.
    """
    if not isinstance(unbiased, bool):
        raise TypeError(f"`unbiased` must be a bool, got {unbiased!r}")
    minimum = 2 if unbiased else 1
    _check_samples(x, "x", minimum=minimum)
    _check_samples(y, "y", minimum=minimum)
    if x.shape[-1] != y.shape[-1]:
        raise ValueError(f"`x` and `y` must have the same dimension, got {x.shape[-1]} and {y.shape[-1]}")
    kxx, kyy, kxy = kernel(x, x), kernel(y, y), kernel(x, y)
    if unbiased:
        return _offdiag_mean(kxx) + _offdiag_mean(kyy) - 2.0 * jnp.mean(kxy)
    return jnp.mean(kxx) + jnp.mean(kyy) - 2.0 * jnp.mean(kxy)


def check_weights(lam: Any, alpha: Any) -> None:
    """The InfoVAE weight rule: λ ≥ 0, α ≤ 1 (KL weight 1 − α ≥ 0), λ + α − 1 ≥ 0 (MMD weight ≥ 0)."""
    check_scalar(lam, "lam", nonnegative=True)
    check_scalar(alpha, "alpha", high=1.0)
    if is_concrete((lam, alpha)) and float(lam) + float(alpha) - 1.0 < -1e-12:
        raise ValueError(
            f"the MMD weight `lam + alpha - 1` must be >= 0, got lam={lam!r}, alpha={alpha!r} "
            f"(weight {float(lam) + float(alpha) - 1.0:.6g})"
        )


def _check_kernel(kernel: Any) -> None:
    """Up-front checks of ``kernel``: callable; a bound ``rho`` of ``gaussian_kernel`` > 0."""
    if not callable(kernel):
        raise TypeError(f"`kernel` must be a callable kernel(x, y) -> Gram matrix, got {type(kernel).__name__}")
    if isinstance(kernel, functools.partial) and kernel.func is gaussian_kernel and "rho" in kernel.keywords:
        check_scalar(kernel.keywords["rho"], "rho", positive=True)


def prior_samples(key: jax.Array, n: int, d: int, dtype: Any = None) -> jax.Array:
    """``n`` draws from p(z) = N(0, I_d), ``(n, d)``, from the loss key's prior stream."""
    return jax.random.normal(jax.random.fold_in(key, _PRIOR_STREAM), (n, d), dtype or jnp.result_type(float))


def model_prior_samples(model: AutoEncoderModel, variables: Variables, key: jax.Array, n: int, d: int,
                        dtype: Any = None) -> jax.Array:
    """``n`` draws ``(n, d)`` from the model's prior (``prior_samples`` for N(0, I)), reparameterised,
    so a learned prior (``aetk_jax.priors``) receives the MMD's gradient."""
    if is_standard_normal(getattr(model, "prior", None)):
        return prior_samples(key, n, d, dtype)
    z = sample_prior(model, variables, jax.random.fold_in(key, _PRIOR_STREAM), n)
    return z.astype(dtype) if dtype is not None else z


def loss(
    model: AutoEncoderModel,
    variables: Variables,
    x: jax.Array,
    key: jax.Array,
    *,
    lam: float = 1.0,
    alpha: float = 0.0,
    kernel: Kernel = gaussian_kernel,
    n_latent_samples: int = 50,
    unbiased: bool = True,
    n_samples: int = 1,
    aux: bool = False,
) -> Any:
    """InfoVAE loss averaged over the batch; a scalar.

        loss = −mean_b log p(x_b|z_b) + (1 − α)·mean_b KL_b + (λ + α − 1)·MMD²(q(z), p(z))

    ``x``: ``(batch, *data_shape)``. q(z) samples: the batch's reparameterised
    codes (all ``n_samples`` draws per example, ``(n_samples·batch, d)``); p(z)
    samples: ``n_latent_samples`` draws from N(0, I) (no gradient flows to them).
    The posterior draw uses ``key`` exactly as ``aet.vae.loss`` does, so with
    λ + α − 1 = 0 this equals ``aet.vae.loss(model, variables, x, key, beta=1 - α)``
    (the defaults: the plain VAE loss).
    ``unbiased`` picks the MMD estimator (see ``mmd_div``; the U-statistic by
    default, the Julia package uses the V-statistic). ``kernel(a, b)`` returns a
    Gram matrix (default ``gaussian_kernel`` with ρ = 1).

    Defaults λ = 1, α = 0 give an MMD weight of 0, i.e. a plain VAE — as in
    AutoEncoderToolkit.jl. Rule: α ≤ 1, λ + α − 1 ≥ 0 (``ValueError`` otherwise);
    ``n_latent_samples`` ≥ 2.

    With ``aux=True`` returns ``(loss, {"loss", "loglikelihood", "kl", "mmd", "elbo"})``
    (``elbo`` = loglikelihood − kl, unweighted).
    """
    check_inputs(model, x, key)
    check_weights(lam, alpha)
    check_int(n_latent_samples, "n_latent_samples", minimum=2)
    check_int(n_samples, "n_samples", minimum=1)
    _check_kernel(kernel)
    if unbiased and batch_size(x) * n_samples < 2:
        raise ValueError("the unbiased MMD needs at least 2 codes: use a batch of >= 2 examples (`x`)")
    t = elbo_terms(model, variables, x, key, n_samples)
    zq = t.z.reshape(-1, t.z.shape[-1])
    zp = model_prior_samples(model, variables, key, n_latent_samples, zq.shape[-1], zq.dtype)
    mmd = mmd_div(zq, zp, kernel, unbiased=unbiased)
    loglik, kl = jnp.mean(t.loglik), jnp.mean(t.kl)
    value = -loglik + (1.0 - alpha) * kl + (lam + alpha - 1.0) * mmd
    return finish(value, {"loglikelihood": loglik, "kl": kl, "mmd": mmd, "elbo": loglik - kl}, aux)


def logp_mmd_ratio(
    model: AutoEncoderModel,
    variables: Variables,
    x: jax.Array,
    key: jax.Array,
    *,
    kernel: Kernel = gaussian_kernel,
    n_latent_samples: int = 100,
    unbiased: bool = True,
) -> jax.Array:
    """|mean_b log p(x_b|z_b) / MMD²(q(z), p(z))|, a scalar: a guide for choosing λ.

    Same codes and prior draws as ``loss`` (one posterior sample per example,
    ``n_latent_samples`` = 100 prior draws by default, as in the Julia package).
    λ of the order of this ratio makes the MMD term comparable to the
    reconstruction term. Noisy when the MMD is near 0 (the U-statistic can then
    be ≈ 0 or negative; ``unbiased=False`` uses the always-positive V-statistic).
    """
    check_inputs(model, x, key)
    check_int(n_latent_samples, "n_latent_samples", minimum=2)
    _check_kernel(kernel)
    if unbiased and batch_size(x) < 2:
        raise ValueError("the unbiased MMD needs a batch of >= 2 examples (`x`)")
    t = elbo_terms(model, variables, x, key, 1)
    zq = t.z[0]
    zp = model_prior_samples(model, variables, key, n_latent_samples, zq.shape[-1], zq.dtype)
    return jnp.abs(jnp.mean(t.loglik) / mmd_div(zq, zp, kernel, unbiased=unbiased))


# the Julia package's spelling
logP_mmd_ratio = logp_mmd_ratio

__all__ = [
    "MMDVAE", "gaussian_kernel", "imq_kernel", "mmd_div", "loss", "logp_mmd_ratio", "prior_samples", "check_weights",
]
