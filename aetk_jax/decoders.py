"""Decoders and the dispatched log-likelihood ``decoder_loglikelihood``.

A decoder maps codes ``z`` ``(batch, d)`` to the parameters of p(x|z) over data
of shape ``(batch, *output_shape)``. ``decoder_loglikelihood`` dispatches on the
decoder's type; adding a likelihood means writing one module and registering
one function (see the Poisson example in the README), and every model accepts it.
``decoder_support`` (registered the same way) says whether data lie in the
likelihood's support; ``check_support`` raises a one-line ``ValueError`` if not.

Bernoulli: log p(x|l) = Σ x log σ(l) + (1 − x) log σ(−l) = Σ x·l − softplus(l).
Gaussian: ``aet.distributions.gaussian_logdensity`` (finite in float32); the
softplus heads give σ = softplus(·) + tiny, never 0.
"""
from __future__ import annotations

import functools
import math
from typing import Any, Optional, Sequence, Union

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from .dispatch import dispatched
from .distributions import (
    BernoulliParams,
    CategoricalParams,
    GaussianLogParams,
    GaussianParams,
    gaussian_logdensity,
    softplus_scale,
)

Shape = Union[int, Sequence[int]]


def _shape(output_shape: Shape) -> tuple[int, ...]:
    return (int(output_shape),) if isinstance(output_shape, int) else tuple(int(s) for s in output_shape)


class _ShapeMixin:
    """Stores ``output_shape`` as a tuple so the module stays hashable."""

    def __post_init__(self) -> None:
        object.__setattr__(self, "output_shape", _shape(self.output_shape))  # type: ignore[attr-defined]
        super().__post_init__()  # type: ignore[misc]


def _head(h: jax.Array, output_shape: Shape, name: str) -> jax.Array:
    """The dense head mapping the body's output to ``(batch, *output_shape)``.

    A body returning features ``(batch, n_features)`` gets one dense layer to
    ``prod(output_shape)`` values. A body returning feature maps ``(batch, H, W,
    n_features)`` (a convolutional body, ``aet.layers.ConvDecoderBody``) gets a
    per-location dense layer (a 1×1 convolution) to ``prod(output_shape) / (H·W)``
    values per pixel, flattened in (H, W, channel) order.
    """
    shape = _shape(output_shape)
    if h.ndim <= 2:
        out = nn.Dense(math.prod(shape), name=name)(h)
        return out.reshape(out.shape[:-1] + shape)
    pixels = math.prod(h.shape[1:-1])
    per_pixel, rest = divmod(math.prod(shape), pixels)
    if rest or per_pixel == 0:
        raise ValueError(
            f"decoder: the body's feature maps {tuple(h.shape[1:-1])} do not tile `output_shape` {shape}"
        )
    out = nn.Dense(per_pixel, name=name)(h)
    return out.reshape((h.shape[0],) + shape)


class Decoder(_ShapeMixin, nn.Module):
    """Deterministic decoder returning the reconstruction ``(batch, *output_shape)``."""

    body: nn.Module
    output_shape: Shape

    @nn.compact
    def __call__(self, z: jax.Array) -> jax.Array:
        return _head(self.body(z), self.output_shape, "out")


class BernoulliDecoder(_ShapeMixin, nn.Module):
    """p(x|z) = Πᵢ Bernoulli(xᵢ; sigmoid(logitᵢ)); returns ``BernoulliParams(logits)``."""

    body: nn.Module
    output_shape: Shape

    @nn.compact
    def __call__(self, z: jax.Array) -> BernoulliParams:
        return BernoulliParams(_head(self.body(z), self.output_shape, "logits"))


class CategoricalDecoder(_ShapeMixin, nn.Module):
    """p(x|z) = Πᵢ Categorical(xᵢ; softmax(logitsᵢ)); logits ``(batch, *output_shape, n_categories)``."""

    body: nn.Module
    output_shape: Shape
    n_categories: int

    @nn.compact
    def __call__(self, z: jax.Array) -> CategoricalParams:
        shape = _shape(self.output_shape) + (int(self.n_categories),)
        return CategoricalParams(_head(self.body(z), shape, "logits"))


class SimpleGaussianDecoder(_ShapeMixin, nn.Module):
    """p(x|z) = N(x; μ(z), I): returns ``GaussianParams(mu, sigma=1)``."""

    body: nn.Module
    output_shape: Shape

    @nn.compact
    def __call__(self, z: jax.Array) -> GaussianParams:
        mu = _head(self.body(z), self.output_shape, "mu")
        return GaussianParams(mu, jnp.ones_like(mu))


class JointGaussianLogDecoder(_ShapeMixin, nn.Module):
    """Diagonal Gaussian with heads μ and log σ on a shared body."""

    body: nn.Module
    output_shape: Shape

    @nn.compact
    def __call__(self, z: jax.Array) -> GaussianLogParams:
        h = self.body(z)
        return GaussianLogParams(_head(h, self.output_shape, "mu"), _head(h, self.output_shape, "logsigma"))


class JointGaussianDecoder(_ShapeMixin, nn.Module):
    """Diagonal Gaussian with heads μ and σ = softplus(·) + tiny (never 0) on a shared body."""

    body: nn.Module
    output_shape: Shape

    @nn.compact
    def __call__(self, z: jax.Array) -> GaussianParams:
        h = self.body(z)
        return GaussianParams(
            _head(h, self.output_shape, "mu"), softplus_scale(_head(h, self.output_shape, "sigma"))
        )


class SplitGaussianLogDecoder(_ShapeMixin, nn.Module):
    """Diagonal Gaussian whose μ and log σ come from two separate bodies."""

    mu_body: nn.Module
    logsigma_body: nn.Module
    output_shape: Shape

    @nn.compact
    def __call__(self, z: jax.Array) -> GaussianLogParams:
        return GaussianLogParams(
            _head(self.mu_body(z), self.output_shape, "mu"),
            _head(self.logsigma_body(z), self.output_shape, "logsigma"),
        )


class SplitGaussianDecoder(_ShapeMixin, nn.Module):
    """Diagonal Gaussian whose μ and σ = softplus(·) + tiny come from two separate bodies."""

    mu_body: nn.Module
    sigma_body: nn.Module
    output_shape: Shape

    @nn.compact
    def __call__(self, z: jax.Array) -> GaussianParams:
        return GaussianParams(
            _head(self.mu_body(z), self.output_shape, "mu"),
            softplus_scale(_head(self.sigma_body(z), self.output_shape, "sigma")),
        )


GaussianDecoder = Union[
    SimpleGaussianDecoder,
    JointGaussianLogDecoder,
    JointGaussianDecoder,
    SplitGaussianLogDecoder,
    SplitGaussianDecoder,
]


def _sum_data_axes(v: jax.Array, x: jax.Array) -> jax.Array:
    """Sum ``v`` over the trailing ``x.ndim - 1`` (data) axes, keeping batch and sample axes."""
    n = x.ndim - 1
    return jnp.sum(v, axis=tuple(range(v.ndim - n, v.ndim))) if n > 0 else v


@dispatched("decoder_loglikelihood")
def decoder_loglikelihood(decoder: nn.Module, x: jax.Array, dec_out: Any) -> jax.Array:
    """log p(x|z) summed over every data dimension; ``x`` ``(batch, *data_shape)`` → ``(batch,)``.

    ``dec_out`` is the decoder's output for the codes z. Leading sample axes in
    ``dec_out`` broadcast against ``x``.
    """


@dispatched("decoder_mean")
def decoder_mean(decoder: nn.Module, dec_out: Any) -> jax.Array:
    """The mean of p(x|z) (probabilities for Bernoulli/Categorical), ``(batch, *data_shape[, k])``."""


def gaussian_loglikelihood(x: jax.Array, mu: jax.Array, logsigma: jax.Array) -> jax.Array:
    """Σ log N(x; μ, σ²) over the data axes: −½Σ(x−μ)²/σ² − Σ log σ − (D/2) log 2π.

    Finite in float32 for any finite inputs (``aet.distributions.gaussian_logdensity``).
    """
    return _sum_data_axes(gaussian_logdensity(x, mu, logsigma), x)


@decoder_loglikelihood.register(BernoulliDecoder)
def _bernoulli_loglik(decoder: BernoulliDecoder, x: jax.Array, dec_out: BernoulliParams) -> jax.Array:
    # x log σ(l) + (1 − x) log σ(−l) = x·l − softplus(l): one softplus, finite for any logit l
    l = dec_out.logits
    return _sum_data_axes(x * l - jax.nn.softplus(l), x)


@decoder_loglikelihood.register(CategoricalDecoder)
def _categorical_loglik(decoder: CategoricalDecoder, x: jax.Array, dec_out: CategoricalParams) -> jax.Array:
    logp = jax.nn.log_softmax(dec_out.logits, axis=-1)
    if jnp.issubdtype(x.dtype, jnp.integer):  # integer class labels (batch, *output_shape)
        picked = jnp.take_along_axis(logp, x[..., None], axis=-1)[..., 0]
        return _sum_data_axes(picked, x)
    return _sum_data_axes(jnp.sum(x * logp, axis=-1), x[..., 0])  # one-hot (batch, *shape, k)


@decoder_loglikelihood.register(JointGaussianLogDecoder)
@decoder_loglikelihood.register(SplitGaussianLogDecoder)
def _gaussian_log_loglik(decoder: nn.Module, x: jax.Array, dec_out: GaussianLogParams) -> jax.Array:
    return gaussian_loglikelihood(x, dec_out.mu, dec_out.logsigma)


@decoder_loglikelihood.register(SimpleGaussianDecoder)
@decoder_loglikelihood.register(JointGaussianDecoder)
@decoder_loglikelihood.register(SplitGaussianDecoder)
def _gaussian_loglik(decoder: nn.Module, x: jax.Array, dec_out: GaussianParams) -> jax.Array:
    return gaussian_loglikelihood(x, dec_out.mu, jnp.log(dec_out.sigma))


@decoder_loglikelihood.register(Decoder)
def _deterministic_loglik(decoder: Decoder, x: jax.Array, dec_out: jax.Array) -> jax.Array:
    # a deterministic decoder read as N(x; x̂, I) (the AE itself uses the MSE)
    return gaussian_loglikelihood(x, dec_out, jnp.zeros_like(dec_out))


@decoder_mean.register(BernoulliDecoder)
def _bernoulli_mean(decoder: BernoulliDecoder, dec_out: BernoulliParams) -> jax.Array:
    return jax.nn.sigmoid(dec_out.logits)


@decoder_mean.register(CategoricalDecoder)
def _categorical_mean(decoder: CategoricalDecoder, dec_out: CategoricalParams) -> jax.Array:
    return jax.nn.softmax(dec_out.logits, axis=-1)


@decoder_mean.register(SimpleGaussianDecoder)
@decoder_mean.register(JointGaussianLogDecoder)
@decoder_mean.register(JointGaussianDecoder)
@decoder_mean.register(SplitGaussianLogDecoder)
@decoder_mean.register(SplitGaussianDecoder)
def _gaussian_mean(decoder: nn.Module, dec_out: Any) -> jax.Array:
    return dec_out.mu


@decoder_mean.register(Decoder)
def _deterministic_mean(decoder: Decoder, dec_out: jax.Array) -> jax.Array:
    return dec_out


# ---------------------------------------------------------------------------
# Support of p(x|z): which data a likelihood can score at all
# ---------------------------------------------------------------------------


@functools.singledispatch
def decoder_support(decoder: nn.Module, x: np.ndarray) -> Optional[str]:
    """Check that data ``x`` lie in the support of the decoder's likelihood.

    Registered like ``decoder_loglikelihood``::

        @aet.decoder_support.register(PoissonDecoder)
        def _(decoder, x):
            ok = np.all(x >= 0) and np.all(x == np.round(x))
            return None if ok else "needs non-negative integer counts"

    Args:
        decoder: the model's decoder module (dispatch is on its type).
        x: host data ``(n, *data_shape)``.

    Returns:
        ``None`` when every value is in the support, otherwise one sentence that
        says what the likelihood needs, what the data hold and how to fix it.
        Decoders with no registered check are not checked (``None``).
    """
    return None


def check_support(decoder: nn.Module, x: Any, *, name: str = "data") -> None:
    """Raise ``ValueError`` (one line, naming ``name`` and the decoder) if ``x`` is outside the support."""
    problem = decoder_support(decoder, np.asarray(x))
    if problem is not None:
        raise ValueError(f"{name}: {type(decoder).__name__} {problem}")


def _value_range(x: np.ndarray) -> str:
    """``[min, max]`` of ``x`` (failure path only; NaN-free data)."""
    if x.size == 0:
        return "[] (no values)"
    x = x.astype(np.uint8) if x.dtype == np.bool_ else x
    return f"[{float(np.min(x)):.4g}, {float(np.max(x)):.4g}]"


def _nonfinite(x: np.ndarray) -> Optional[str]:
    """A sentence if ``x`` holds NaN or infinite values (failure path only), else ``None``."""
    if not np.issubdtype(x.dtype, np.floating):
        return None
    finite = np.isfinite(x)
    if finite.all():
        return None
    n_nan = int(np.count_nonzero(np.isnan(x)))
    n_inf = int(x.size - np.count_nonzero(finite)) - n_nan
    rest = f" (the finite values lie in {_value_range(x[finite])})" if finite.any() else ""
    return f"needs finite data, but the data contain {n_nan} NaN and {n_inf} infinite values{rest}: remove or impute them"


def _in_unit_interval(x: np.ndarray) -> bool:
    """All of ``x`` in [0, 1] (False on NaN), in one pass over the data.

    For IEEE floats the non-negative numbers are ordered like their bit patterns
    read as unsigned integers, and every negative number, NaN and +inf reads as
    larger than 1.0's pattern; so ``max(bits) <= bits(1.0)`` is the whole test
    (−0.0 reads as large: the exact comparison then decides).
    """
    if x.size == 0:
        return True
    if x.dtype in (np.float32, np.float64) and x.flags.c_contiguous:
        bits = x.view(np.uint32 if x.dtype == np.float32 else np.uint64)
        if np.max(bits) <= np.array(1.0, x.dtype).view(bits.dtype):
            return True
    if x.dtype == np.bool_:
        return True
    return bool(np.min(x) >= 0 and np.max(x) <= 1)  # NaN compares False


@decoder_support.register(BernoulliDecoder)
def _bernoulli_support(decoder: BernoulliDecoder, x: np.ndarray) -> Optional[str]:
    if _in_unit_interval(x):
        return None
    if (problem := _nonfinite(x)) is not None:
        return problem
    return (
        f"needs data in [0, 1] (a Bernoulli log-likelihood), but the values lie in {_value_range(x)}: "
        "scale the data to [0, 1] (e.g. divide by the maximum), or use a Gaussian decoder (--decoder gaussian)"
    )


@decoder_support.register(CategoricalDecoder)
def _categorical_support(decoder: CategoricalDecoder, x: np.ndarray) -> Optional[str]:
    k = int(decoder.n_categories)
    if np.issubdtype(x.dtype, np.integer):
        if x.size == 0 or (np.min(x) >= 0 and np.max(x) < k):
            return None
        return f"needs integer classes in 0..{k - 1}, but the values lie in {_value_range(x)}"
    # one-hot: each row along the last axis has exactly one non-zero entry, and the row sums to 1
    onehot = x.shape[-1:] == (k,) and bool(
        np.all(np.count_nonzero(x, axis=-1) == 1) and np.all(np.sum(x, axis=-1) == 1)
    )
    if onehot:
        return None
    if (problem := _nonfinite(x)) is not None:
        return problem
    return (
        f"needs one-hot data with a last axis of {k} categories (or integer classes 0..{k - 1}), "
        f"but got an array of shape {x.shape} with values in {_value_range(x)}"
    )
