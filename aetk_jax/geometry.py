"""Latent-space geometry: pullback metrics, neural geodesics, curve length and energy.

A *metric function* maps one latent point ``z`` ``(d,)`` to a symmetric
positive-definite matrix ``G(z)`` ``(d, d)``. Every function here accepts any
such function: the pullback metric of a decoder (:func:`pullback_metric`,
:func:`expected_pullback_metric`, :func:`decoder_metric_fn`), the RHVAE's
learned metric (``aet.rhvae.metric_fn(model, variables)``), or a closed form
(e.g. the Poincaré half-plane ``lambda z: jnp.eye(2) / z[1] ** 2``). Batches of
points are handled with ``jax.vmap`` (:func:`batch_metric`).

Curves
------
A latent curve is ``curve_fn(params, t)`` mapping times ``t`` ``(n_t,)`` to
points ``(n_t, d)``, *pointwise* in ``t`` (row ``i`` depends on ``t[i]`` only),
e.g. ``NeuralGeodesic(...).apply``. Its velocity is exact (one ``jax.jvp``),
and lengths and energies are integrated over the given time grid with the
**trapezoid rule**: with speeds ``s_i² = γ̇(t_i)ᵀ G(γ(t_i)) γ̇(t_i)`` and weights
``w_0 = Δt_0/2``, ``w_i = (Δt_{i−1} + Δt_i)/2``, ``w_{n−1} = Δt_{n−2}/2``
(``Δt_i = t_{i+1} − t_i``; on the uniform grid of [0, 1], ``Δt = 1/(n_t − 1)``)::

    L = Σ_i w_i s_i            ≈ ∫ √(γ̇ᵀ G γ̇) dt
    E = ½ Σ_i w_i s_i²          ≈ ½ ∫ γ̇ᵀ G γ̇ dt

Because ``Σ_i w_i = t_{n−1} − t_0 =: T`` (the duration), Cauchy–Schwarz gives
``E ≥ L² / (2 T)`` exactly for the discrete sums too, with equality if and only
if the speed is the same at every grid point. Minimising the energy therefore
yields a constant-speed geodesic. (AutoEncoderToolkit.jl uses the plain means
``(1/n_t) Σ s_i`` and ``(1/(2 n_t)) Σ s_i²``, a first-order rule that weighs
both end points fully; the trapezoid rule is second order and accepts
non-uniform grids.)

Neural geodesics (Chen et al. 2018)
-----------------------------------
:class:`NeuralGeodesic` is ``z(t) = (1 − t) z₀ + t z₁ + t (1 − t) g(t)`` with
``g`` a tanh MLP, so both end points are exact for any parameters. (The Julia
package instead rescales each coordinate of the MLP output affinely so that it
hits the ends; that divides by ``g(0) − g(1)`` and blows up when the two come
close.) The output layer of ``g`` starts near zero, so an untrained curve is the
straight segment up to ~1e-3. :func:`fit_geodesic` minimises the energy (or the
length) in one jitted ``lax.scan``, on fresh stratified times at every step;
``jax.vmap`` over end points fits many at once.

Plots: ``metric_volume_grid`` and ``plot_latent_metric`` live in
``aetk_jax.geometry_plots`` (matplotlib is imported only when plotting) and are
reachable from here as ``aet.geometry.metric_volume_grid`` etc.
"""
from __future__ import annotations

import functools
from typing import Any, Callable, NamedTuple, Optional, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.flatten_util import ravel_pytree

from .base import decode
from .decoders import decoder_mean
from .distributions import GaussianLogParams, GaussianParams
from .validation import check_int, check_key, is_concrete

MetricFn = Callable[[jax.Array], jax.Array]
CurveFn = Callable[[Any, jax.Array], jax.Array]

_HI = jax.lax.Precision.HIGHEST
# Glorot-uniform hidden layers: as good as flax's truncated normal here, and
# much cheaper for XLA to compile inside ``fit_geodesic``
_KERNEL_INIT = nn.initializers.variance_scaling(1.0, "fan_avg", "uniform")
# a tiny random output layer: the untrained curve is the straight segment up to
# ~1e-3, enough to leave it when it is a saddle of the energy (symmetric metrics)
_OUT_INIT = nn.initializers.variance_scaling(1e-6, "fan_in", "uniform")

__all__ = [
    "MetricFn",
    "CurveFn",
    "pullback_metric",
    "expected_pullback_metric",
    "decoder_metric_fn",
    "batch_metric",
    "log_volume",
    "NeuralGeodesic",
    "curve_velocity",
    "curve_speed_sq",
    "curve_length",
    "curve_energy",
    "geodesic_loss",
    "default_geodesic_optimizer",
    "fit_geodesic",
    "GeodesicFit",
]  # plus, imported lazily from geometry_plots: metric_volume_grid, plot_latent_metric


# --------------------------------------------------------------------------- checks


def _check_point(z: Any, name: str) -> jax.Array:
    """One latent point: a floating 1-D array ``(d,)`` with d ≥ 1 (a list or tuple is converted)."""
    if isinstance(z, (list, tuple)):
        z = jnp.asarray(z)
    if not hasattr(z, "shape") or not hasattr(z, "dtype"):
        raise TypeError(f"`{name}` must be an array of shape (d,), got {type(z).__name__}")
    if not jnp.issubdtype(jnp.dtype(z.dtype), jnp.floating):
        raise TypeError(f"`{name}` must have a floating dtype, got {z.dtype}")
    if z.ndim != 1 or z.shape[0] < 1:
        raise ValueError(
            f"`{name}` must be one latent point of shape (d,), got shape {tuple(z.shape)}; "
            "use jax.vmap for batches"
        )
    if is_concrete(z) and not bool(np.all(np.isfinite(np.asarray(z)))):
        raise ValueError(f"`{name}` contains NaN or inf values")
    return jnp.asarray(z)


def _check_times(t: Any, name: str = "t") -> jax.Array:
    """A time grid ``(n_t,)`` with n_t ≥ 2, non-decreasing when concrete."""
    if not hasattr(t, "shape") or not hasattr(t, "dtype"):
        raise TypeError(f"`{name}` must be an array of shape (n_t,), got {type(t).__name__}")
    if not jnp.issubdtype(jnp.dtype(t.dtype), jnp.floating):
        raise TypeError(f"`{name}` must have a floating dtype, got {t.dtype}")
    if t.ndim != 1 or t.shape[0] < 2:
        raise ValueError(f"`{name}` must be a time grid of shape (n_t,) with n_t >= 2, got shape {tuple(t.shape)}")
    if is_concrete(t):
        tn = np.asarray(t)
        if not np.all(np.isfinite(tn)):
            raise ValueError(f"`{name}` contains NaN or inf values")
        if np.any(np.diff(tn) < 0):
            raise ValueError(f"`{name}` must be non-decreasing")
    return jnp.asarray(t)


def _check_metric_fn(metric_fn: Any, d: int, dtype: Any, name: str = "metric_fn") -> None:
    """``metric_fn`` must map ``(d,)`` to ``(d, d)`` (checked by ``jax.eval_shape``)."""
    if not callable(metric_fn):
        raise TypeError(f"`{name}` must be a function (d,) -> (d, d), got {type(metric_fn).__name__}")
    try:
        out = jax.eval_shape(metric_fn, jax.ShapeDtypeStruct((d,), dtype))
    except Exception as err:  # noqa: BLE001 - re-raised with the argument's name
        raise TypeError(f"`{name}` failed on a latent point of shape ({d},): {err}") from err
    if not hasattr(out, "shape") or tuple(out.shape) != (d, d):
        got = tuple(out.shape) if hasattr(out, "shape") else type(out).__name__
        raise ValueError(f"`{name}` must map a point of shape ({d},) to a ({d}, {d}) matrix, got {got}")


def _check_objective(objective: str) -> None:
    if objective not in ("energy", "length"):
        raise ValueError(f"`objective` must be 'energy' or 'length', got {objective!r}")


def _check_features(features: Any) -> tuple[int, ...]:
    if isinstance(features, (int, np.integer)) or not isinstance(features, Sequence):
        raise TypeError(f"`features` must be a sequence of hidden-layer widths, got {features!r}")
    out = []
    for f in features:
        if isinstance(f, bool) or not isinstance(f, (int, np.integer)) or f < 1:
            raise ValueError(f"`features` must hold positive ints, got {features!r}")
        out.append(int(f))
    return tuple(out)


# --------------------------------------------------------------------------- metrics


def _sym(a: jax.Array) -> jax.Array:
    return 0.5 * (a + jnp.swapaxes(a, -1, -2))


def pullback_metric(decoder_mean_fn: Callable[[jax.Array], Any], z: jax.Array, *, mode: str = "auto") -> jax.Array:
    """Pullback metric ``G(z) = J(z)ᵀ J(z)`` of a map at one latent point.

    ``decoder_mean_fn`` maps ``z`` ``(d,)`` to any array (or pytree of arrays)
    with ``m`` entries in all; ``J`` ``(m, d)`` is its Jacobian at ``z``.
    ``mode="auto"`` uses ``jax.jacfwd`` (``d`` forward passes) when ``m ≥ d`` and
    ``jax.jacrev`` (``m`` backward passes) otherwise; ``"fwd"``/``"rev"`` force
    one. Returns ``(d, d)``. For a batch ``z`` ``(batch, d)`` use
    ``jax.vmap(lambda z: pullback_metric(f, z))(z)`` or :func:`batch_metric`.
    """
    z = _check_point(z, "z")
    if not callable(decoder_mean_fn):
        raise TypeError(f"`decoder_mean_fn` must be a function, got {type(decoder_mean_fn).__name__}")
    if mode not in ("auto", "fwd", "rev"):
        raise ValueError(f"`mode` must be 'auto', 'fwd' or 'rev', got {mode!r}")

    def flat(zz: jax.Array) -> jax.Array:
        return ravel_pytree(decoder_mean_fn(zz))[0]

    m = jax.eval_shape(flat, z).shape[0]
    if m == 0:
        raise ValueError("`decoder_mean_fn` returned no entries")
    if mode == "auto":
        mode = "fwd" if m >= z.shape[0] else "rev"
    J = (jax.jacfwd if mode == "fwd" else jax.jacrev)(flat)(z)  # (m, d)
    return _sym(jnp.matmul(J.T, J, precision=_HI))


def expected_pullback_metric(
    mean_fn: Callable[[jax.Array], Any],
    sigma_fn: Callable[[jax.Array], Any],
    z: jax.Array,
    *,
    mode: str = "auto",
) -> jax.Array:
    """Expected metric of a Gaussian decoder (Arvanitidis et al. 2018) at one point.

    ``G(z) = J_μ(z)ᵀ J_μ(z) + J_σ(z)ᵀ J_σ(z)`` with ``J_μ``, ``J_σ`` the Jacobians
    of the mean ``mean_fn`` and the standard deviation ``sigma_fn`` (each
    ``(d,) -> array``). For a log-σ decoder pass ``sigma_fn = lambda z:
    jnp.exp(logsigma_fn(z))``, whose Jacobian is ``σ ⊙ J_{log σ}``.
    Returns ``(d, d)``; it is the pullback of the stacked map ``z ↦ (μ, σ)``.
    """
    if not callable(mean_fn):
        raise TypeError(f"`mean_fn` must be a function, got {type(mean_fn).__name__}")
    if not callable(sigma_fn):
        raise TypeError(f"`sigma_fn` must be a function, got {type(sigma_fn).__name__}")
    return pullback_metric(lambda zz: (mean_fn(zz), sigma_fn(zz)), z, mode=mode)


def decoder_metric_fn(model: nn.Module, variables: Any, *, mode: str = "auto") -> MetricFn:
    """Metric function ``(d,) -> (d, d)`` of a trained model's decoder.

    ``model`` is an autoencoder model (anything with a ``decoder`` decoded by
    ``model.apply(variables, z, method="decode")``) or a bare decoder module
    applied with ``variables``. The decoder output for ``z`` picks the metric:

    - ``GaussianParams(mu, sigma)``: ``J_μᵀJ_μ + J_σᵀJ_σ`` (a constant σ, as in
      ``SimpleGaussianDecoder``, adds nothing);
    - ``GaussianLogParams(mu, logsigma)``: the same with ``σ = exp(log σ)``, i.e.
      ``J_σ = σ ⊙ J_{log σ}``;
    - anything else: ``JᵀJ`` of the dispatched mean ``aet.decoder_mean``
      (probabilities for Bernoulli and categorical decoders, the output of a
      deterministic ``Decoder``).
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"`model` must be a flax module, got {type(model).__name__}")
    if mode not in ("auto", "fwd", "rev"):
        raise ValueError(f"`mode` must be 'auto', 'fwd' or 'rev', got {mode!r}")
    is_model = hasattr(model, "decoder") and hasattr(model, "decode")
    decoder = model.decoder if is_model else model

    def outputs(z: jax.Array) -> Any:
        zb = z[None]
        out = decode(model, variables, zb) if is_model else model.apply(variables, zb)
        mean = decoder_mean(decoder, out)[0]
        if isinstance(out, GaussianLogParams):
            return mean, jnp.exp(out.logsigma[0])
        if isinstance(out, GaussianParams):
            return mean, out.sigma[0]
        return mean

    def metric(z: jax.Array) -> jax.Array:
        return pullback_metric(outputs, z, mode=mode)

    return metric


def batch_metric(metric_fn: MetricFn, z: jax.Array) -> jax.Array:
    """``G`` at each row of ``z`` ``(batch, d)`` → ``(batch, d, d)`` (``jax.vmap``)."""
    if not hasattr(z, "ndim") or z.ndim != 2:
        raise ValueError(f"`z` must have shape (batch, d), got {getattr(z, 'shape', type(z).__name__)}")
    _check_metric_fn(metric_fn, z.shape[1], z.dtype)
    return jax.vmap(metric_fn)(z)


def log_volume(metric_fn: MetricFn, z: jax.Array) -> jax.Array:
    """Log volume element ``log √det G(z)`` at each row of ``z`` ``(batch, d)`` → ``(batch,)``.

    ``−inf`` where ``G`` is singular (e.g. a pullback of a decoder of rank < d).
    """
    _, logdet = jnp.linalg.slogdet(batch_metric(metric_fn, z))
    return 0.5 * logdet


# --------------------------------------------------------------------------- curves


class NeuralGeodesic(nn.Module):
    """A latent curve with exactly fixed ends (Chen et al. 2018, stable form).

    ``z(t) = (1 − t)·z_init + t·z_end + t(1 − t)·g(t)``, ``g`` an MLP with
    ``features`` tanh hidden layers and a linear output of width ``d`` fed with
    ``2t − 1``. The output layer starts at ~1e-3 of unit scale (the initial
    curve is the straight segment up to that, and can leave it when it is a
    saddle of the energy); parameters take the dtype of ``z_init``. ``key``
    and ``t`` of ``init`` only fix the parameter shapes.

    Input ``t`` ``(n_t,)`` (or a scalar), nominally in ``[0, 1]``; output
    ``(n_t, d)`` (or ``(d,)``). ``z(0) = z_init`` and ``z(1) = z_end`` hold for
    every parameter value, up to one rounding of ``(1 − t)·z₀ + t·z₁``.
    """

    features: Sequence[int]
    z_init: jax.Array
    z_end: jax.Array

    def __post_init__(self) -> None:
        object.__setattr__(self, "features", _check_features(self.features))
        super().__post_init__()

    @nn.compact
    def __call__(self, t: jax.Array) -> jax.Array:
        z0 = _check_point(self.z_init, "z_init")
        z1 = _check_point(self.z_end, "z_end")
        if z0.shape != z1.shape:
            raise ValueError(f"`z_init` and `z_end` must have the same shape, got {z0.shape} and {z1.shape}")
        dtype = jnp.result_type(z0, z1)
        t = jnp.asarray(t)
        if t.ndim > 1:
            raise ValueError(f"`t` must be a scalar or a grid of shape (n_t,), got shape {t.shape}")
        scalar = t.ndim == 0
        tt = jnp.atleast_1d(t).astype(dtype)[:, None]  # (n_t, 1)
        h = 2.0 * tt - 1.0
        for i, width in enumerate(self.features):
            h = nn.tanh(nn.Dense(width, param_dtype=dtype, kernel_init=_KERNEL_INIT, name=f"dense_{i}")(h))
        g = nn.Dense(
            z0.shape[0],
            param_dtype=dtype,
            kernel_init=_OUT_INIT,
            bias_init=nn.initializers.zeros,
            name="out",
        )(h)
        z = (1.0 - tt) * z0 + tt * z1 + tt * (1.0 - tt) * g
        return z[0] if scalar else z


def _position_velocity(curve_fn: CurveFn, params: Any, t: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Points and exact velocities ``(n_t, d)`` from one ``jax.jvp`` with tangent 1."""
    return jax.jvp(lambda s: curve_fn(params, s), (t,), (jnp.ones_like(t),))


def curve_velocity(curve_fn: CurveFn, params: Any, t: jax.Array) -> jax.Array:
    """Exact velocity ``dγ/dt`` ``(n_t, d)`` of ``curve_fn(params, t)`` at ``t`` ``(n_t,)``.

    One forward-mode ``jax.jvp`` with the tangent ``1`` on every time; this is
    the derivative at each ``t_i`` because ``curve_fn`` is pointwise in ``t``.
    """
    t = _check_times(t)
    return _position_velocity(curve_fn, params, t)[1]


def _trapezoid_weights(t: jax.Array) -> jax.Array:
    dt = jnp.diff(t)
    zero = jnp.zeros((1,), t.dtype)
    return 0.5 * (jnp.concatenate([dt, zero]) + jnp.concatenate([zero, dt]))


def _speed_sq(metric_fn: MetricFn, z: jax.Array, v: jax.Array) -> jax.Array:
    G = jax.vmap(metric_fn)(z)  # (n_t, d, d)
    q = jnp.einsum("ni,nij,nj->n", v, G, v, precision=_HI)
    return jnp.maximum(q, 0.0)


def _safe_sqrt(q: jax.Array) -> jax.Array:
    # finite gradient at zero speed (a constant curve)
    pos = q > 0
    return jnp.where(pos, jnp.sqrt(jnp.where(pos, q, 1.0)), 0.0)


def _check_curve_args(metric_fn: MetricFn, curve_fn: CurveFn, params: Any, t: jax.Array) -> jax.Array:
    t = _check_times(t)
    if not callable(curve_fn):
        raise TypeError(f"`curve_fn` must be a function (params, t) -> (n_t, d), got {type(curve_fn).__name__}")
    out = jax.eval_shape(curve_fn, params, t)
    if not hasattr(out, "shape") or out.ndim != 2 or out.shape[0] != t.shape[0]:
        got = tuple(out.shape) if hasattr(out, "shape") else type(out).__name__
        raise ValueError(f"`curve_fn(params, t)` must return shape (n_t, d) = ({t.shape[0]}, d), got {got}")
    _check_metric_fn(metric_fn, out.shape[1], out.dtype)
    return t


def curve_speed_sq(metric_fn: MetricFn, curve_fn: CurveFn, params: Any, t: jax.Array) -> jax.Array:
    """Squared metric speed ``γ̇(t_i)ᵀ G(γ(t_i)) γ̇(t_i)`` at each time, ``(n_t,)``."""
    t = _check_curve_args(metric_fn, curve_fn, params, t)
    z, v = _position_velocity(curve_fn, params, t)
    return _speed_sq(metric_fn, z, v)


def curve_length(metric_fn: MetricFn, curve_fn: CurveFn, params: Any, t: jax.Array) -> jax.Array:
    """Riemannian length ``L = Σ_i w_i √(γ̇ᵢᵀ G(γᵢ) γ̇ᵢ)`` (trapezoid weights on ``t``), a scalar.

    Invariant under reparameterisation of the curve (up to discretisation).
    """
    t = _check_curve_args(metric_fn, curve_fn, params, t)
    z, v = _position_velocity(curve_fn, params, t)
    return jnp.sum(_trapezoid_weights(t) * _safe_sqrt(_speed_sq(metric_fn, z, v)))


def curve_energy(metric_fn: MetricFn, curve_fn: CurveFn, params: Any, t: jax.Array) -> jax.Array:
    """Riemannian energy ``E = ½ Σ_i w_i γ̇ᵢᵀ G(γᵢ) γ̇ᵢ`` (trapezoid weights on ``t``), a scalar.

    ``E ≥ L² / (2 (t_{n−1} − t_0))``, with equality iff the speed is constant.
    """
    t = _check_curve_args(metric_fn, curve_fn, params, t)
    z, v = _position_velocity(curve_fn, params, t)
    return 0.5 * jnp.sum(_trapezoid_weights(t) * _speed_sq(metric_fn, z, v))


def geodesic_loss(
    metric_fn: MetricFn, curve_fn: CurveFn, params: Any, t: jax.Array, *, objective: str = "energy"
) -> jax.Array:
    """The geodesic objective: :func:`curve_energy` (default) or :func:`curve_length`.

    The energy's minimisers are the constant-speed geodesics; the length is
    minimised by any parameterisation of them and has a flat direction, so the
    energy is the better-conditioned default (as in the Julia package).
    """
    _check_objective(objective)
    integral = curve_energy if objective == "energy" else curve_length
    return integral(metric_fn, curve_fn, params, t)


# --------------------------------------------------------------------------- fitting


class GeodesicFit(NamedTuple):
    """What :func:`fit_geodesic` returns: the curve's parameters and its points ``(n_t, d)``."""

    params: Any
    curve: jax.Array


@functools.lru_cache(maxsize=32)
def default_geodesic_optimizer(steps: int, learning_rate: float = 1e-2) -> optax.GradientTransformation:
    """Adam with a cosine decay of the step size from ``learning_rate`` to 1 % of it over ``steps``.

    Memoised, so repeated fits with the same metric function reuse one compiled loop.
    """
    return optax.adam(optax.cosine_decay_schedule(learning_rate, steps, alpha=0.01))


@functools.lru_cache(maxsize=32)
def _init_fn(features: tuple[int, ...], d: int, dtype: str) -> Callable[[jax.Array], Any]:
    """Jitted ``key -> params`` of a ``NeuralGeodesic`` (they depend on ``d`` only, not on the ends)."""
    zeros = jnp.zeros((d,), dtype)
    module = NeuralGeodesic(features, zeros, zeros)
    return jax.jit(lambda key: module.init(key, jnp.linspace(0.0, 1.0, 2, dtype=dtype)))


def _fit_impl(
    metric_fn: MetricFn,
    params: Any,
    u: Optional[jax.Array],
    z_init: jax.Array,
    z_end: jax.Array,
    *,
    n_t: int,
    steps: int,
    optimizer: optax.GradientTransformation,
    features: tuple[int, ...],
    objective: str,
) -> GeodesicFit:
    """The training loop; ``u`` ``(steps, n_t)`` are the uniform draws of the stratified
    times (``None``: the fixed trapezoid grid)."""
    module = NeuralGeodesic(features, z_init, z_end)
    dtype = z_init.dtype
    t_grid = jnp.linspace(0.0, 1.0, n_t, dtype=dtype)
    w_grid = _trapezoid_weights(t_grid)
    w_strat = jnp.full((n_t,), 1.0 / n_t, dtype)
    cells = jnp.arange(n_t, dtype=dtype)

    def loss(p: Any, t: jax.Array, w: jax.Array) -> jax.Array:
        z, v = _position_velocity(module.apply, p, t)
        q = _speed_sq(metric_fn, z, v)
        if objective == "energy":
            return 0.5 * jnp.sum(w * q)
        return jnp.sum(w * _safe_sqrt(q))

    def step(carry: tuple[Any, Any], u_k: Optional[jax.Array]) -> tuple[tuple[Any, Any], jax.Array]:
        p, s = carry
        # stratified times (i + u_i)/n_t with weights 1/n_t, or the fixed grid
        t, w = (t_grid, w_grid) if u_k is None else ((cells + u_k) / n_t, w_strat)
        value, grads = jax.value_and_grad(loss)(p, t, w)
        updates, s = optimizer.update(grads, s, p)
        return (optax.apply_updates(p, updates), s), value

    (params, _), _ = jax.lax.scan(step, (params, optimizer.init(params)), u, length=steps)
    return GeodesicFit(params, module.apply(params, t_grid))


_STATIC = ("metric_fn", "n_t", "steps", "optimizer", "features", "objective")
# XLA's CPU backend spends most of a fit's compile time in LLVM's heaviest
# passes; optimisation level 1 compiles ~40 % faster with the same run time
_CPU_OPTIONS = {"xla_backend_optimization_level": 1}
_fit_jit = jax.jit(_fit_impl, static_argnames=_STATIC)
_fit_jit_cpu = jax.jit(_fit_impl, static_argnames=_STATIC, compiler_options=_CPU_OPTIONS)


def _hashable(obj: Any) -> bool:
    try:
        hash(obj)
    except TypeError:
        return False
    return True


def fit_geodesic(
    metric_fn: MetricFn,
    z_init: jax.Array,
    z_end: jax.Array,
    key: jax.Array,
    *,
    n_t: int = 50,
    steps: int = 3000,
    optimizer: Optional[optax.GradientTransformation] = None,
    features: Sequence[int] = (32, 32),
    objective: str = "energy",
    jitter: bool = True,
) -> GeodesicFit:
    """Fit a :class:`NeuralGeodesic` from ``z_init`` to ``z_end`` ``(d,)`` under ``metric_fn``.

    Minimises :func:`geodesic_loss` (the trapezoid-rule energy by default,
    ``objective="length"`` for the length) over ``n_t`` times with ``steps``
    steps of ``optimizer`` (default :func:`default_geodesic_optimizer`: Adam,
    step size 1e-2 decayed to 1e-4 by a cosine schedule) in one jitted
    ``lax.scan``. With ``jitter=True`` (default) every step draws fresh
    stratified times, one uniform time in each of ``n_t`` equal cells of
    [0, 1], and weighs each by ``1/n_t``: an unbiased estimate of the continuous
    integral, so the network cannot cheat the quadrature by speeding up between
    fixed grid points (with a fixed grid it does, after a few thousand steps).
    ``jitter=False`` minimises the trapezoid rule on ``linspace(0, 1, n_t)``
    exactly as :func:`geodesic_loss` defines it. ``key`` initialises the MLP
    (``features`` tanh hidden layers) and draws the times; the curve starts as
    the straight segment.

    Returns ``(params, curve)``: ``curve`` ``(n_t, d)`` is the fitted curve on
    ``linspace(0, 1, n_t)``, ``curve[0] = z_init``, ``curve[-1] = z_end``; the
    continuous curve is ``NeuralGeodesic(features, z_init, z_end).apply(params, t)``.
    The defaults converge on ordinary 2-D metrics in about 0.1 s once compiled.

    Batches: ``jax.vmap(lambda a, b, k: fit_geodesic(metric_fn, a, b, k))(Z0, Z1, keys)``
    fits one geodesic per row of ``Z0``, ``Z1`` ``(batch, d)``.
    """
    z_init = _check_point(z_init, "z_init")
    z_end = _check_point(z_end, "z_end")
    if z_init.shape != z_end.shape:
        raise ValueError(f"`z_init` and `z_end` must have the same shape, got {z_init.shape} and {z_end.shape}")
    dtype = jnp.result_type(z_init, z_end)
    z_init, z_end = z_init.astype(dtype), z_end.astype(dtype)
    check_key(key)
    check_int(n_t, "n_t", minimum=2)
    check_int(steps, "steps", minimum=1)
    features = _check_features(features)
    _check_objective(objective)
    if optimizer is None:
        optimizer = default_geodesic_optimizer(int(steps))
    elif not (hasattr(optimizer, "init") and hasattr(optimizer, "update")):
        raise TypeError(f"`optimizer` must be an optax GradientTransformation, got {type(optimizer).__name__}")
    _check_metric_fn(metric_fn, z_init.shape[0], dtype)
    if not isinstance(jitter, (bool, np.bool_)):
        raise TypeError(f"`jitter` must be a bool, got {jitter!r}")
    d = z_init.shape[0]
    init_key, grid_key = jax.random.split(key)
    params = _init_fn(features, d, jnp.dtype(dtype).name)(init_key)
    u = jax.random.uniform(grid_key, (int(steps), int(n_t)), dtype) if jitter else None
    kwargs = dict(n_t=int(n_t), steps=int(steps), optimizer=optimizer, features=features, objective=objective)
    on_cpu = jax.default_backend() == "cpu"
    if _hashable(metric_fn) and _hashable(optimizer):
        fit = _fit_jit_cpu if on_cpu else _fit_jit
        return fit(metric_fn, params, u, z_init, z_end, **kwargs)
    options = _CPU_OPTIONS if on_cpu else None
    return jax.jit(functools.partial(_fit_impl, metric_fn, **kwargs), compiler_options=options)(params, u, z_init, z_end)


# --------------------------------------------------------------------------- plots (lazy)


def __getattr__(name: str) -> Any:
    # the plotting helpers live in geometry_plots, imported only when asked for
    if name in ("metric_volume_grid", "plot_latent_metric"):
        from . import geometry_plots

        return getattr(geometry_plots, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
