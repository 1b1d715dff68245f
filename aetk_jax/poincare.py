"""The Poincaré ball 𝔹_c^d = {x ∈ ℝ^d : c‖x‖² < 1} of constant curvature −c (c > 0).

Its metric is conformal to the Euclidean one, g_x = λ_x² I with λ_x = 2/(1 − c‖x‖²),
and every map below is in closed form (Ganea, Bécigneul & Hofmann 2018; Mathieu et al. 2019):

* Möbius addition  x ⊕ y = ((1 + 2c⟨x,y⟩ + c‖y‖²) x + (1 − c‖x‖²) y) / (1 + 2c⟨x,y⟩ + c²‖x‖²‖y‖²);
* distance         d_c(x, y) = (2/√c) artanh(√c ‖(−x) ⊕ y‖)
                             = (1/√c) arccosh(1 + 2c‖x − y‖² / ((1 − c‖x‖²)(1 − c‖y‖²)));
* exponential map  exp_x(u) = x ⊕ (tanh(√c λ_x ‖u‖/2) u / (√c‖u‖)),  exp_0(u) = tanh(√c‖u‖) u/(√c‖u‖);
* logarithmic map  log_x(y) = (2/(√c λ_x)) artanh(√c‖w‖) w/‖w‖, w = (−x) ⊕ y;
  log_0(y) = artanh(√c‖y‖) y/(√c‖y‖);
* gyration         gyr[u, v]w = ⊖(u ⊕ v) ⊕ (u ⊕ (v ⊕ w)) (in closed form below);
* parallel transport P_{x→y}(v) = (λ_x/λ_y) gyr[y, −x] v; from and to the origin it is the
  rescaling P_{0→y}(v) = (λ_0/λ_y) v and P_{x→0}(v) = (λ_x/λ_0) v.

Points are ``(..., d)`` arrays (batch-first like every code in aetk_jax); ``c`` is a
Python or array scalar. Norms are floored at the dtype's smallest normal number
(so the maps and their gradients are finite at 0) and artanh's argument is capped
at 1 − ``ball_eps(dtype)``.
"""
from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp


def ball_eps(dtype: Any) -> float:
    """The margin kept from the boundary: 1e-5 in float32, 1e-10 in float64 (in units of 1/√c)."""
    return 1e-10 if jnp.dtype(dtype) == jnp.float64 else 1e-5


def _norm(x: jax.Array) -> jax.Array:
    sq = jnp.sum(x**2, axis=-1, keepdims=True)
    return jnp.sqrt(jnp.maximum(sq, jnp.finfo(x.dtype).tiny))


def _artanh(x: jax.Array) -> jax.Array:
    return jnp.arctanh(jnp.clip(x, 0.0, 1.0 - ball_eps(x.dtype)))


def _dot(x: jax.Array, y: jax.Array) -> jax.Array:
    return jnp.sum(x * y, axis=-1, keepdims=True)


def conformal_factor(x: jax.Array, c: float) -> jax.Array:
    """λ_x = 2 / (1 − c‖x‖²), ``(..., 1)``.

    Args:
        x: points ``(..., d)``.
        c: the curvature magnitude c > 0.

    Returns:
        λ_x with a trailing axis of length 1.
    """
    return 2.0 / jnp.maximum(1.0 - c * _dot(x, x), jnp.finfo(x.dtype).tiny)


def project(x: jax.Array, c: float) -> jax.Array:
    """Pull points with ‖x‖ > (1 − ε)/√c radially back to that radius (ε = ``ball_eps``).

    Args:
        x: points ``(..., d)``.
        c: the curvature magnitude c > 0.

    Returns:
        Points strictly inside the ball, ``(..., d)``.
    """
    n = _norm(x)
    max_norm = (1.0 - ball_eps(x.dtype)) / jnp.sqrt(c)
    return jnp.where(n > max_norm, x / n * max_norm, x)


def mobius_add(x: jax.Array, y: jax.Array, c: float) -> jax.Array:
    """x ⊕ y (broadcasting), ``(..., d)``.

    Args:
        x: points ``(..., d)``.
        y: points ``(..., d)``.
        c: the curvature magnitude c > 0.

    Returns:
        The Möbius sum.
    """
    xy, x2, y2 = _dot(x, y), _dot(x, x), _dot(y, y)
    num = (1.0 + 2.0 * c * xy + c * y2) * x + (1.0 - c * x2) * y
    return num / jnp.maximum(1.0 + 2.0 * c * xy + c**2 * x2 * y2, jnp.finfo(num.dtype).tiny)


def distance(x: jax.Array, y: jax.Array, c: float) -> jax.Array:
    """d_c(x, y) = (2/√c) artanh(√c‖(−x) ⊕ y‖), ``(...)``.

    Args:
        x: points ``(..., d)``.
        y: points ``(..., d)``.
        c: the curvature magnitude c > 0.

    Returns:
        Geodesic distances (no trailing axis).
    """
    sc = jnp.sqrt(c)
    return (2.0 / sc * _artanh(sc * _norm(mobius_add(-x, y, c))))[..., 0]


def expmap0(u: jax.Array, c: float) -> jax.Array:
    """exp_0(u) = tanh(√c‖u‖) u / (√c‖u‖).

    Args:
        u: tangent vectors at the origin ``(..., d)``.
        c: the curvature magnitude c > 0.

    Returns:
        Points on the ball ``(..., d)``.
    """
    sc, n = jnp.sqrt(c), _norm(u)
    return jnp.tanh(sc * n) * u / (sc * n)


def logmap0(y: jax.Array, c: float) -> jax.Array:
    """log_0(y) = artanh(√c‖y‖) y / (√c‖y‖).

    Args:
        y: points on the ball ``(..., d)``.
        c: the curvature magnitude c > 0.

    Returns:
        Tangent vectors at the origin ``(..., d)``.
    """
    sc, n = jnp.sqrt(c), _norm(y)
    return _artanh(sc * n) * y / (sc * n)


def expmap(x: jax.Array, u: jax.Array, c: float) -> jax.Array:
    """exp_x(u) = x ⊕ (tanh(√c λ_x‖u‖/2) u/(√c‖u‖)).

    Args:
        x: base points ``(..., d)``.
        u: tangent vectors at ``x`` (Euclidean coordinates) ``(..., d)``.
        c: the curvature magnitude c > 0.

    Returns:
        Points on the ball ``(..., d)``.
    """
    sc, n = jnp.sqrt(c), _norm(u)
    second = jnp.tanh(sc * conformal_factor(x, c) * n / 2.0) * u / (sc * n)
    return project(mobius_add(x, second, c), c)


def logmap(x: jax.Array, y: jax.Array, c: float) -> jax.Array:
    """log_x(y) = (2/(√c λ_x)) artanh(√c‖w‖) w/‖w‖, w = (−x) ⊕ y.

    Args:
        x: base points ``(..., d)``.
        y: points on the ball ``(..., d)``.
        c: the curvature magnitude c > 0.

    Returns:
        Tangent vectors at ``x`` ``(..., d)``.
    """
    sc = jnp.sqrt(c)
    w = mobius_add(-x, y, c)
    n = _norm(w)
    return 2.0 / (sc * conformal_factor(x, c)) * _artanh(sc * n) * w / n


def gyration(u: jax.Array, v: jax.Array, w: jax.Array, c: float) -> jax.Array:
    """gyr[u, v] w = ⊖(u ⊕ v) ⊕ (u ⊕ (v ⊕ w)), in closed form.

    Args:
        u: points ``(..., d)``.
        v: points ``(..., d)``.
        w: vectors ``(..., d)``.
        c: the curvature magnitude c > 0.

    Returns:
        The gyrated vectors ``(..., d)``.
    """
    u2, v2, uv, uw, vw = _dot(u, u), _dot(v, v), _dot(u, v), _dot(u, w), _dot(v, w)
    a = -c**2 * uw * v2 + c * vw + 2.0 * c**2 * uv * vw
    b = -c**2 * vw * u2 - c * uw
    den = 1.0 + 2.0 * c * uv + c**2 * u2 * v2
    return w + 2.0 * (a * u + b * v) / jnp.maximum(den, jnp.finfo(den.dtype).tiny)


def transport(x: jax.Array, y: jax.Array, v: jax.Array, c: float) -> jax.Array:
    """Parallel transport P_{x→y}(v) = (λ_x/λ_y) gyr[y, −x] v along the geodesic from x to y.

    Args:
        x: start points ``(..., d)``.
        y: end points ``(..., d)``.
        v: tangent vectors at ``x`` ``(..., d)``.
        c: the curvature magnitude c > 0.

    Returns:
        Tangent vectors at ``y`` ``(..., d)``.
    """
    return gyration(y, -x, v, c) * conformal_factor(x, c) / conformal_factor(y, c)


def transport0(y: jax.Array, v: jax.Array, c: float) -> jax.Array:
    """P_{0→y}(v) = (λ_0/λ_y) v = (1 − c‖y‖²) v.

    Args:
        y: end points ``(..., d)``.
        v: tangent vectors at the origin ``(..., d)``.
        c: the curvature magnitude c > 0.

    Returns:
        Tangent vectors at ``y`` ``(..., d)``.
    """
    return v * 2.0 / conformal_factor(y, c)


def transport_to0(x: jax.Array, v: jax.Array, c: float) -> jax.Array:
    """P_{x→0}(v) = (λ_x/λ_0) v = v / (1 − c‖x‖²).

    Args:
        x: start points ``(..., d)``.
        v: tangent vectors at ``x`` ``(..., d)``.
        c: the curvature magnitude c > 0.

    Returns:
        Tangent vectors at the origin ``(..., d)``.
    """
    return v * conformal_factor(x, c) / 2.0


__all__ = [
    "ball_eps", "conformal_factor", "project", "mobius_add", "distance", "expmap0", "logmap0", "expmap", "logmap",
    "gyration", "transport", "transport0", "transport_to0",
]
