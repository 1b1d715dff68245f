"""Utilities: triangular factors, log-determinants, Gaussian draws in canonical form,
β annealing, and centroid selection for the RHVAE."""
from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np

from .validation import check_int, check_scalar


def vec_to_ltri(v: jax.Array, d: int) -> jax.Array:
    """Lower-triangular ``(..., d, d)`` from ``v`` ``(..., d(d+1)/2)``.

    The first ``d`` entries are the diagonal; the remaining ``d(d−1)/2`` fill the
    strictly lower triangle row by row (L[1,0], L[2,0], L[2,1], …), as the
    Julia package lays them out.
    """
    n = d * (d + 1) // 2
    if v.shape[-1] != n:
        raise ValueError(f"`v` must have {n} entries on its last axis for d={d}, got {v.shape[-1]}")
    rows, cols = np.tril_indices(d, -1)  # row-major order of the strict lower triangle
    L = jnp.zeros(v.shape[:-1] + (d, d), v.dtype)
    L = L.at[..., np.arange(d), np.arange(d)].set(v[..., :d])
    return L.at[..., rows, cols].set(v[..., d:])


def slogdet(A: jax.Array) -> jax.Array:
    """log det A for symmetric positive-definite ``A`` ``(..., d, d)`` via Cholesky:
    2 Σᵢ log Lᵢᵢ with A = L Lᵀ."""
    L = jnp.linalg.cholesky(A)
    return 2.0 * jnp.sum(jnp.log(jnp.diagonal(L, axis1=-2, axis2=-1)), axis=-1)


def sample_mvnormal_canon(key: jax.Array, mu: jax.Array, precision: jax.Array) -> jax.Array:
    """Draw from N(μ, Λ⁻¹) given the precision Λ ``(..., d, d)`` without forming Λ⁻¹:
    with Λ = L Lᵀ, x = μ + L⁻ᵀ ε, ε ~ N(0, I) (a triangular solve)."""
    L = jnp.linalg.cholesky(precision)
    eps = jax.random.normal(key, mu.shape, mu.dtype)
    y = jax.scipy.linalg.solve_triangular(jnp.swapaxes(L, -1, -2), eps[..., None], lower=False)[..., 0]
    return mu + y


def cycle_anneal(
    epoch: int, n_epoch: int, n_cycles: int, *, frac: float = 0.5, beta_max: float = 1.0, beta_min: float = 0.0
) -> float:
    """Cyclical β schedule (Fu et al. 2019), as the Julia package defines it (1-based ``epoch``):

    τ = ((epoch − 1) mod ⌈n_epoch / n_cycles⌉) / (n_epoch / n_cycles);
    β = β_min + (β_max − β_min)·τ/frac if τ ≤ frac, else β_max.
    """
    check_int(epoch, "epoch", minimum=1)
    check_int(n_epoch, "n_epoch", minimum=1)
    check_int(n_cycles, "n_cycles", minimum=1)
    check_scalar(frac, "frac", low=0.0, high=1.0)
    period = n_epoch / n_cycles
    tau = ((epoch - 1) % math.ceil(period)) / period
    if tau <= frac:
        return beta_min + (beta_max - beta_min) * (tau / frac if frac > 0 else 1.0)
    return beta_max


# ---------------------------------------------------------------------------
# Centroid selection (k-means / k-medoids), pure JAX and jit-able with static
# ``k`` and ``n_iter``. Used to pick the RHVAE's centroid data.
# ---------------------------------------------------------------------------


def _flat(x: jax.Array) -> jax.Array:
    return jnp.reshape(x, (x.shape[0], -1))


def sq_dists(a: jax.Array, b: jax.Array) -> jax.Array:
    """Squared Euclidean distances ``(..., m)`` from the rows of ``a`` ``(..., D)`` to those of ``b`` ``(m, D)``.

    Expanded, ‖a‖² − 2a·b + ‖b‖² floored at 0: one matrix product (a sum of (a − b)² over a
    small D is a reduction that XLA:CPU runs far slower inside loops); float32 rounding is
    ε_mach·(‖a‖² + ‖b‖²).

    Args:
        a: ``(..., D)`` (e.g. ``(n, D)`` or one point ``(D,)``).
        b: ``(m, D)``.

    Returns:
        ``(..., m)``.
    """
    d2 = jnp.sum(a**2, -1)[..., None] - 2.0 * a @ b.T + jnp.sum(b**2, -1)
    return jnp.maximum(d2, 0.0)


def _check_centroid_args(x: jax.Array, k: int, n_iter: int, key: jax.Array) -> None:
    from .validation import check_array, check_key

    check_array(x, "x", min_ndim=2)
    check_int(k, "k", minimum=1)
    check_int(n_iter, "n_iter", minimum=0)
    check_key(key)
    if k > x.shape[0]:
        raise ValueError(f"`k` ({k}) is larger than the number of data points ({x.shape[0]})")


def _plusplus_index(key: jax.Array, d2_to: jax.Array, n: int, k: int) -> jax.Array:
    """k-means++ seeding on indices: ``d2_to(i)`` gives squared distances ``(n,)`` of every point
    to point ``i``; returns ``k`` indices, each drawn with probability ∝ D(x)² to the chosen ones."""
    k0, key = jax.random.split(key)
    first = jax.random.randint(k0, (), 0, n)
    idx = jnp.zeros((k,), jnp.int32).at[0].set(first)
    dmin = d2_to(first)

    def body(i, carry):
        idx, dmin, key = carry
        key, sub = jax.random.split(key)
        # inverse-CDF draw with P(j) = D(x_j)²/Σ D²: one uniform, not one Gumbel per point
        cdf = jnp.cumsum(dmin)
        total = cdf[-1]
        u = jax.random.uniform(sub, (), dmin.dtype)
        # all remaining points coincide with chosen ones (Σ D² = 0): fall back to uniform
        cdf = jnp.where(total > 0, cdf / jnp.where(total > 0, total, 1.0), jnp.arange(1, n + 1, dtype=dmin.dtype) / n)
        nxt = jnp.minimum(jnp.sum(cdf <= u), n - 1).astype(jnp.int32)
        return idx.at[i].set(nxt), jnp.minimum(dmin, d2_to(nxt)), key

    idx, _, _ = jax.lax.fori_loop(1, k, body, (idx, dmin, key))
    return idx


def centroids_kmeans(x: jax.Array, k: int, key: jax.Array, *, n_iter: int = 20) -> jax.Array:
    """k-means cluster centres of ``x`` ``(n, *data_shape)`` → ``(k, *data_shape)``.

    k-means++ seeding (each new seed drawn with probability ∝ squared distance to
    the nearest seed, Arthur & Vassilvitskii 2007) from ``key``, then ``n_iter``
    Lloyd iterations cᵢ ← mean{x : argminⱼ ‖x − cⱼ‖ = i} (a centre that loses all
    its points stays put). Pure JAX; jit-able with ``k`` and ``n_iter`` static.
    """
    _check_centroid_args(x, k, n_iter, key)
    return _kmeans_jit(x, k, key, n_iter)


@functools.partial(jax.jit, static_argnums=(1, 3))
def _kmeans_jit(x: jax.Array, k: int, key: jax.Array, n_iter: int) -> jax.Array:
    xf = _flat(x)
    n = xf.shape[0]
    idx = _plusplus_index(key, lambda i: sq_dists(xf[i], xf), n, k)
    centres = xf[idx]

    def lloyd(_, c):
        assign = jnp.argmin(sq_dists(xf, c), axis=1)
        onehot = jax.nn.one_hot(assign, k, dtype=xf.dtype)  # (n, k)
        counts = jnp.sum(onehot, 0)
        sums = onehot.T @ xf
        return jnp.where(counts[:, None] > 0, sums / jnp.maximum(counts, 1)[:, None], c)

    centres = jax.lax.fori_loop(0, n_iter, lloyd, centres)
    return centres.reshape((k,) + x.shape[1:])


def centroids_kmedoids(
    x: jax.Array, k: int, key: jax.Array, *, n_iter: int = 20, return_index: bool = False
) -> jax.Array:
    """k-medoids of ``x`` ``(n, *data_shape)``: ``k`` actual data points ``(k, *data_shape)``
    (or their indices ``(k,)`` with ``return_index=True``).

    Euclidean distances, k-means++ seeding on data points from ``key``, then
    ``n_iter`` alternating ("Voronoi") iterations: assign each point to its
    nearest medoid, then make each cluster's medoid the member minimising the
    sum of distances to the other members. Builds the full ``(n, n)`` distance
    matrix (as the Julia package does), so it suits up to a few thousand points.
    Pure JAX; jit-able with ``k``, ``n_iter`` and ``return_index`` static.
    """
    _check_centroid_args(x, k, n_iter, key)
    med = _kmedoids_index_jit(x, k, key, n_iter)
    return med if return_index else x[med]


@functools.partial(jax.jit, static_argnums=(1, 3))
def _kmedoids_index_jit(x: jax.Array, k: int, key: jax.Array, n_iter: int) -> jax.Array:
    xf = _flat(x)
    n = xf.shape[0]
    D = jnp.sqrt(sq_dists(xf, xf))
    med = _plusplus_index(key, lambda i: D[i] ** 2, n, k)

    def step(_, med):
        assign = jnp.argmin(D[:, med], axis=1)  # (n,)
        onehot = jax.nn.one_hot(assign, k, dtype=D.dtype)  # (n, k)
        cost = D @ onehot  # cost[i, j] = Σ_{l ∈ cluster j} D[i, l]
        cost = jnp.where(onehot > 0, cost, jnp.inf)  # candidates: members of cluster j only
        best = jnp.argmin(cost, axis=0)
        return jnp.where(jnp.sum(onehot, 0) > 0, best, med).astype(med.dtype)

    med = jax.lax.fori_loop(0, n_iter, step, med)
    return med


def locality_sampler(
    x: jax.Array,
    key: jax.Array,
    n_primary: int,
    n_secondary: int,
    k_neighbors: int,
    *,
    index: bool = False,
) -> jax.Array:
    """A mini-batch of neighbourhoods (Skafte, Jørgensen & Hauberg 2019).

    Draws ``n_primary`` points of ``x`` ``(n, *data_shape)`` uniformly without
    replacement; for each, draws ``n_secondary`` of its ``k_neighbors`` nearest
    points (Euclidean, the point itself included, as a k-d tree query returns
    it) without replacement. Returns the primary points followed by the
    secondary ones, ``(n_primary·(1 + n_secondary), *data_shape)``, or their
    indices with ``index=True``. Brute-force distances from the primaries,
    ``(n_primary, n)``, replace the Julia package's k-d tree. Pure JAX; jit-able
    with the counts and ``index`` static.
    """
    from .validation import check_array, check_key

    check_array(x, "x", min_ndim=2)
    check_key(key)
    check_int(n_primary, "n_primary", minimum=1)
    check_int(n_secondary, "n_secondary", minimum=0)
    check_int(k_neighbors, "k_neighbors", minimum=1)
    n = x.shape[0]
    if n_primary > n:
        raise ValueError(f"`n_primary` ({n_primary}) is larger than the number of data points ({n})")
    if k_neighbors > n:
        raise ValueError(f"`k_neighbors` ({k_neighbors}) is larger than the number of data points ({n})")
    if n_secondary > k_neighbors:
        raise ValueError(f"`n_secondary` ({n_secondary}) must be <= `k_neighbors` ({k_neighbors})")
    idx = _locality_index(x, key, n_primary, n_secondary, k_neighbors)
    return idx if index else x[idx]


@functools.partial(jax.jit, static_argnums=(2, 3, 4))
def _locality_index(x: jax.Array, key: jax.Array, n_primary: int, n_secondary: int, k: int) -> jax.Array:
    xf = _flat(x)
    k_p, k_s = jax.random.split(key)
    primary = jax.random.choice(k_p, xf.shape[0], (n_primary,), replace=False)
    _, neigh = jax.lax.top_k(-sq_dists(xf[primary], xf), k)  # (n_primary, k) nearest first
    # n_secondary of the k neighbours without replacement: the first entries of a random permutation
    pick = jax.vmap(lambda kk: jax.random.permutation(kk, k)[:n_secondary])(jax.random.split(k_s, n_primary))
    secondary = jnp.take_along_axis(neigh, pick, axis=1).reshape(-1)
    return jnp.concatenate([primary, secondary]).astype(jnp.int32)
