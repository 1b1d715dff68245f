"""The RHVAE's learned Riemannian metric: its network, its centroids and their selection.

The metric is given through its inverse (Chadebec, Mantoux & Allassonnière 2020)

    G⁻¹(z) = Σᵢ₌₁ᴺ Mᵢ · exp(−‖z − cᵢ‖² / T²) + λ·I,    Mᵢ = L_ψ(xᵢ) L_ψ(xᵢ)ᵀ,

with cᵢ = μ_φ(xᵢ) the encoder means of N centroid data points xᵢ and L_ψ the
lower-triangular output (positive diagonal) of the metric network. The sum over
centroids is one contraction: the weights w = exp(−‖z − c‖²/T²) ``(batch, N)``
times the matrices reshaped to ``(N, d²)`` (a matmul), not a loop over centroids.

The stored metric lives in the non-trainable collection ``"metric"`` of the
variables: ``"centroids"`` (N, d), ``"M"`` (N, d, d), the centroid data ``"x"``
(N, *data_shape) and ``"seed"`` (an integer below 2²⁴ drawn from the init key, stored as float32: the k-means
of :func:`select_centroid_data` during ``fit`` uses
``fold_in(PRNGKey(seed), step)``, so the centroids follow the user's key and a
resumed run picks the same ones). The functions take the RHVAE model (any
module with ``encoder``, ``T``, ``lam``, ``n_centroids``, ``latent_dim`` and a
``metric_factor`` method); this module does not import ``aetk_jax.rhvae``.

Under a condition (``n_conditions`` or ``condition_dim`` > 0) the centroid data
are pairs (xᵢ, cᵢ): the centroids are the codes cᵢ = μ_φ(xᵢ, cᵢ) and the factors
L_ψ(xᵢ, cᵢ) (the metric network sees ``[flatten(xᵢ), e(cᵢ)]``, the encoder's input),
while G⁻¹(z) itself stays a function of z alone, one geometry of the latent space
that the unconditional prior p(z) lives on. The collection then also holds the
centroids' conditions ``"condition"`` ((N,) labels stored as floats, or (N, k)
covariates; :func:`centroid_data` returns the pair). Every function here that
takes data takes the pair ``(x, c)`` for a conditional model.
"""
from __future__ import annotations

from typing import Any, Callable, NamedTuple, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp

from .base import Variables, batch_size, check_inputs, encode, is_conditional, split_condition
from .encoders import encoder_mean
from .hamiltonian.metrics import gaussian_riemannian, logdet_inverse, riemannian_logprior  # noqa: F401
from .hamiltonian.metrics import Metric as MomentumMetric
from .utils import centroids_kmeans, sq_dists, vec_to_ltri
from .validation import check_array


def capped_exp(v: jax.Array, cap: float) -> jax.Array:
    """exp(v) for v ≤ ``cap`` and its tangent line exp(cap)·(1 + v − cap) above.

    Positive, continuously differentiable, equal to exp below the cap and finite
    wherever exp(cap)·v is (float32 exp overflows to inf at v ≈ 89).

    Args:
        v: pre-activations.
        cap: where the exponential turns linear.

    Returns:
        ``v``'s shape.
    """
    return jnp.exp(jnp.minimum(v, cap)) * (1.0 + jnp.maximum(v - cap, 0.0))


class MetricNetwork(nn.Module):
    """Default metric network: ``x`` → L_ψ(x), ``(batch, d, d)`` lower-triangular.

    ``body`` maps ``x`` to features; one dense head gives d(d+1)/2 numbers: the
    first d, through ``capped_exp`` (exp up to ``log_diag_cap``, default 10, i.e.
    a diagonal up to e¹⁰ ≈ 2.2·10⁴; linear beyond, so it never overflows), are the
    (positive) diagonal, the rest fill the strict lower triangle row by row
    (``aet.utils.vec_to_ltri``).

    Attributes:
        body: the feature network.
        latent_dim: d.
        log_diag_cap: where the diagonal's exponential turns linear.
    """

    body: nn.Module
    latent_dim: int
    log_diag_cap: float = 10.0

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        d = int(self.latent_dim)
        v = nn.Dense(d * (d + 1) // 2, name="ltri")(self.body(x))
        v = jnp.concatenate([capped_exp(v[..., :d], self.log_diag_cap), v[..., d:]], axis=-1)
        return vec_to_ltri(v, d)


class Metric(NamedTuple):
    """A metric's pieces.

    Attributes:
        centroids: cᵢ ``(N, d)``.
        M: Mᵢ ``(N, d, d)``.
        T: the temperature (length scale).
        lam: the regulariser λ.
    """

    centroids: jax.Array
    M: jax.Array
    T: Any
    lam: Any


def _weights(metric: Metric, z: jax.Array) -> jax.Array:
    """wᵢ(z) = exp(−‖z − cᵢ‖²/T²) ``(..., N)``, the squared distances expanded (``aet.utils.sq_dists``).

    The expanded square is one ``(…, d) @ (d, N)`` product: summing (z − c)² over
    the latent axis instead is a reduction over a tiny axis that XLA:CPU's YNNPACK
    fusions run ~10× slower inside the leapfrog's loops (measured: the RHVAE's
    digits epoch fell from 118 ms to 37 ms). float32 rounding of the expansion is
    ε_mach·(‖z‖² + ‖c‖²) in the exponent, far below T².
    """
    return jnp.exp(-sq_dists(z, metric.centroids) / metric.T**2)


def inverse_metric(metric: Metric, z: jax.Array) -> jax.Array:
    """G⁻¹(z) = Σᵢ Mᵢ exp(−‖z − cᵢ‖²/T²) + λI, the sum as one ``(…, N) @ (N, d²)`` matmul.

    Args:
        metric: the :class:`Metric`.
        z: codes ``(..., d)``.

    Returns:
        ``(..., d, d)``.
    """
    d = z.shape[-1]
    n = metric.centroids.shape[0]
    weighted = jnp.matmul(_weights(metric, z), metric.M.reshape(n, d * d)).reshape(z.shape[:-1] + (d, d))
    return weighted + metric.lam * jnp.eye(d, dtype=z.dtype)


def inverse_metric_jacobian(metric: Metric, z: jax.Array) -> tuple[jax.Array, jax.Array]:
    """G⁻¹(z) and its derivatives ∂G⁻¹(z)/∂z_k in closed form, from one matmul over the centroids.

    With wᵢ = exp(−‖z − cᵢ‖²/T²), ∂wᵢ/∂z_k = −2(z_k − c_ik)wᵢ/T², so

        ∂G⁻¹/∂z_k = −(2/T²)·(z_k Σᵢ wᵢMᵢ − Σᵢ wᵢ c_ik Mᵢ):

    the weights times ``[Mᵢ | c_i1·Mᵢ | … | c_id·Mᵢ]`` ``(N, d²(1 + d))`` give both sums.

    Args:
        metric: the :class:`Metric`.
        z: codes ``(..., d)``.

    Returns:
        ``(G⁻¹ (..., d, d), J (..., d, d, d))`` with ``J[..., i, j, k] = ∂G⁻¹_ij/∂z_k``.
    """
    d = z.shape[-1]
    c, n = metric.centroids, metric.centroids.shape[0]
    m = metric.M.reshape(n, 1, d * d)
    table = jnp.concatenate([m, c[:, :, None] * m], axis=1).reshape(n, (1 + d) * d * d)
    sums = jnp.matmul(_weights(metric, z), table).reshape(z.shape[:-1] + (1 + d, d, d))
    s, cs = sums[..., 0, :, :], sums[..., 1:, :, :]  # Σ wᵢMᵢ, Σ wᵢc_ikMᵢ (k first)
    jac = (-2.0 / metric.T**2) * (z[..., :, None, None] * s[..., None, :, :] - cs)
    return s + metric.lam * jnp.eye(d, dtype=z.dtype), jnp.moveaxis(jac, -3, -1)


def momentum_metric(metric: Metric) -> MomentumMetric:
    """The RHVAE's momentum distribution ρ | z ~ N(0, G(z)) as a Hamiltonian metric.

    Args:
        metric: the :class:`Metric`.

    Returns:
        ``aetk_jax.hamiltonian.metrics.gaussian_riemannian`` of G⁻¹ with the floor λ and
        the closed-form ∂G⁻¹/∂z (:func:`inverse_metric_jacobian`).
    """
    return gaussian_riemannian(lambda z: inverse_metric(metric, z), metric.lam,
                               inverse_metric_jacobian=lambda z: inverse_metric_jacobian(metric, z))


def _cholesky_solve_identity(ginv: jax.Array) -> jax.Array:
    chol = jnp.linalg.cholesky(ginv)
    eye = jnp.broadcast_to(jnp.eye(ginv.shape[-1], dtype=ginv.dtype), ginv.shape)
    return jax.scipy.linalg.cho_solve((chol, True), eye)


def stored_metric(model: nn.Module, variables: Variables) -> Metric:
    """The metric stored in ``variables["metric"]`` (set by :func:`update_metric`).

    Args:
        model: the RHVAE (its T and λ).
        variables: the whole variables (not only ``params``).

    Returns:
        :class:`Metric`.
    """
    if "metric" not in variables:
        raise ValueError(
            "`variables` has no 'metric' collection; pass the whole output of model.init / fit, "
            "not only variables['params']"
        )
    m = variables["metric"]
    return Metric(m["centroids"], m["M"], model.T, model.lam)


def metric_factors(model: nn.Module, variables: Variables, x: Any) -> jax.Array:
    """The metric network's factors L_ψ(x) (L_ψ(x, c) for the pair ``x = (x, c)``), ``(batch, d, d)``.

    Args:
        model: the RHVAE.
        variables: its variables.
        x: data ``(batch, *data_shape)``, or the pair ``(x, c)`` for a conditional model.

    Returns:
        ``(batch, d, d)`` lower-triangular factors.
    """
    data, c = split_condition(model, x)
    if c is None:
        return model.apply(variables, data, method="metric_factor")
    return model.apply(variables, data, c, method="metric_factor")


def metric_from_data(model: nn.Module, variables: Variables, x: Any, *, enc_out: Any = None) -> Metric:
    """The metric with centroid data ``x``: cᵢ = μ_φ(xᵢ), Mᵢ = L_ψ(xᵢ)L_ψ(xᵢ)ᵀ (differentiable).

    For a conditional model ``x`` is the pair ``(x, c)``: cᵢ = μ_φ(xᵢ, cᵢ), Mᵢ from L_ψ(xᵢ, cᵢ).

    Args:
        model: the RHVAE.
        variables: its variables.
        x: centroid data ``(N, *data_shape)`` (or the pair).
        enc_out: the encoder's output on ``x`` if already computed.

    Returns:
        :class:`Metric`.
    """
    enc_out = encode(model, variables, x) if enc_out is None else enc_out
    L = metric_factors(model, variables, x)
    return Metric(encoder_mean(model.encoder, enc_out), L @ jnp.swapaxes(L, -1, -2), model.T, model.lam)


def centroid_data(model: nn.Module, variables: Variables) -> Any:
    """The stored centroid data: ``variables["metric"]["x"]``, or for a conditional model the pair
    ``(x, c)`` with the stored ``"condition"`` (labels cast back to ``int32``).

    Args:
        model: the RHVAE.
        variables: its variables (with the ``"metric"`` collection).

    Returns:
        ``(N, *data_shape)`` or the pair.
    """
    stored_metric(model, variables)  # a ValueError without the collection
    m = variables["metric"]
    if not is_conditional(model):
        return m["x"]
    if "condition" not in m:
        raise ValueError("`variables` has no stored centroid conditions (variables['metric']['condition']): "
                         "they were not made by this conditional model's init")
    c = m["condition"]
    return m["x"], (jnp.round(c).astype(jnp.int32) if model.n_conditions else c)


def _check_z(model: nn.Module, z: Any) -> None:
    check_array(z, "z", min_ndim=1)
    if z.shape[-1] != model.latent_dim:
        raise ValueError(f"`z` must have latent dimension {model.latent_dim} on its last axis, got {z.shape}")


def G_inv(model: nn.Module, variables: Variables, z: jax.Array, *, metric: Optional[Metric] = None) -> jax.Array:
    """Inverse metric G⁻¹(z) = Σᵢ Mᵢ exp(−‖z − cᵢ‖²/T²) + λI (a sum over the N centroids).

    Args:
        model: the RHVAE.
        variables: its variables (the stored metric).
        z: codes ``(batch, d)``.
        metric: a metric to use instead of the stored one.

    Returns:
        ``(batch, d, d)``.
    """
    _check_z(model, z)
    return inverse_metric(stored_metric(model, variables) if metric is None else metric, z)


def metric_tensor(
    model: nn.Module, variables: Variables, z: jax.Array, *, metric: Optional[Metric] = None
) -> jax.Array:
    """Metric G(z) = (G⁻¹(z))⁻¹, by a Cholesky solve against I.

    Args:
        model: the RHVAE.
        variables: its variables.
        z: codes ``(batch, d)``.
        metric: a metric to use instead of the stored one.

    Returns:
        ``(batch, d, d)``.
    """
    return _cholesky_solve_identity(G_inv(model, variables, z, metric=metric))


def log_volume(model: nn.Module, variables: Variables, z: jax.Array, *, metric: Optional[Metric] = None) -> jax.Array:
    """log √det G(z) = −½ log det G⁻¹(z), the log volume element.

    Args:
        model: the RHVAE.
        variables: its variables.
        z: codes ``(batch, d)``.
        metric: a metric to use instead of the stored one.

    Returns:
        ``(batch,)``.
    """
    return -0.5 * logdet_inverse(G_inv(model, variables, z, metric=metric), model.lam if metric is None else metric.lam)


def metric_fn(model: nn.Module, variables: Variables) -> Callable[[jax.Array], jax.Array]:
    """The stored metric as a function of one latent point (for ``aet.geometry``).

    Args:
        model: the RHVAE.
        variables: its variables.

    Returns:
        ``z (d,) -> G(z) (d, d)``, pure and differentiable in ``z``; ``vmap`` it for batches.
    """
    metric = stored_metric(model, variables)

    def fn(z: jax.Array) -> jax.Array:
        return _cholesky_solve_identity(inverse_metric(metric, z))

    return fn


def update_metric(model: nn.Module, variables: Variables, x_centroids: Any) -> Variables:
    """Recompute the stored metric from centroid data (jit-able).

    Sets cᵢ = μ_φ(xᵢ) ``(N, d)``, Mᵢ = L_ψ(xᵢ)L_ψ(xᵢ)ᵀ ``(N, d, d)`` and keeps the
    data (``"x"``, for ``metric_source="centroids"``) and every other entry of the
    collection (the ``"seed"``). For a conditional model ``x_centroids`` is the pair
    ``(x, c)``: cᵢ = μ_φ(xᵢ, cᵢ), Mᵢ from L_ψ(xᵢ, cᵢ), and the conditions are stored
    as ``"condition"``.

    Args:
        model: the RHVAE.
        variables: its variables.
        x_centroids: ``(n_centroids, *data_shape)`` (or the pair ``(x, c)``).

    Returns:
        New ``variables``.
    """
    check_inputs(model, x_centroids, name="x_centroids")
    n = batch_size(x_centroids)
    if n < model.n_centroids:
        raise ValueError(
            f"`n_centroids` ({model.n_centroids}) is larger than the centroid data ({n} points)"
        )
    if n != model.n_centroids:
        raise ValueError(
            f"`x_centroids` must have exactly n_centroids={model.n_centroids} rows, got {n}; "
            "pick them with aet.rhvae.select_centroid_data"
        )
    m = metric_from_data(model, variables, x_centroids)
    old = variables["metric"]
    data, c = split_condition(model, x_centroids)
    new = {**old, "centroids": m.centroids.astype(old["centroids"].dtype), "M": m.M.astype(old["M"].dtype),
           "x": jnp.asarray(data, old["x"].dtype)}
    if c is not None:
        new["condition"] = jnp.asarray(c, old["condition"].dtype)
    return {**variables, "metric": new}


def _encode_chunked(model: nn.Module, variables: Variables, x: Any, chunk: int) -> jax.Array:
    """Encoder means of all of ``x`` (or of the pair) ``(n, d)``, ``chunk`` rows at a time (bounded memory)."""
    n = batch_size(x)
    n_chunks = -(-n // chunk)
    pad = n_chunks * chunk - n

    def chunks(a: jax.Array) -> jax.Array:
        a = jnp.concatenate([a, jnp.broadcast_to(a[:1], (pad,) + a.shape[1:])]) if pad else a
        return a.reshape((n_chunks, chunk) + a.shape[1:])

    xp = jax.tree_util.tree_map(chunks, tuple(x) if isinstance(x, list) else x)
    mu = jax.lax.map(lambda xb: encoder_mean(model.encoder, encode(model, variables, xb)), xp)
    return mu.reshape(n_chunks * chunk, -1)[:n]


def centroid_key(variables: Variables, step: Any = 0) -> jax.Array:
    """The k-means key of the stored metric: ``fold_in(PRNGKey(seed), step)``.

    Args:
        variables: the variables with a ``"metric"`` collection (its ``"seed"`` was
            drawn from the ``model.init`` key, so from the user's key in ``fit``).
        step: e.g. the training step count (a new draw every epoch, reproducible on resume).

    Returns:
        A raw ``uint32[2]`` PRNG key; ``PRNGKey(0)`` folded with ``step`` for variables
        without a seed (created before the seed existed).
    """
    seed = variables.get("metric", {}).get("seed", 0)
    # the seed is < 2²⁴, so a cast of the variables to float32/64 keeps it exact
    return jax.random.fold_in(jax.random.PRNGKey(jnp.asarray(seed).astype(jnp.int32)), step)


def select_centroid_data(
    model: nn.Module,
    variables: Variables,
    x: Any,
    key: Optional[jax.Array] = None,
    *,
    n_iter: int = 10,
    chunk: int = 1024,
) -> jax.Array:
    """Choose ``model.n_centroids`` centroid data points from ``x``.

    k-means (k-means++ seeding, ``n_iter`` Lloyd iterations) on the latent means
    μ_φ(x), then, for each centre, the data point whose code is nearest to it.
    O(n·N) time and memory, so it scales to large training sets (k-medoids would
    need all n² distances); two centres may share a nearest point, which then
    counts twice. Jit-able; ``fit`` calls it after every epoch with
    ``key = centroid_key(variables, state.step)``. For a conditional model ``x`` is
    the pair ``(x, c)`` of the whole training set: the codes are μ_φ(x, c) and the
    chosen pairs are returned.

    Args:
        model: the RHVAE.
        variables: its variables.
        x: the data ``(n, *data_shape)`` (or the pair ``(x, c)``).
        key: the k-means key; default :func:`centroid_key` ``(variables)`` (from the stored seed).
        n_iter: Lloyd iterations.
        chunk: rows encoded at a time.

    Returns:
        ``(n_centroids, *data_shape)`` (the pair of them for a conditional model).
    """
    if is_conditional(model):
        check_inputs(model, x)
    else:
        check_array(x, "x")
    n = batch_size(x)
    if model.n_centroids > n:
        raise ValueError(f"`n_centroids` ({model.n_centroids}) is larger than the data ({n} points)")
    key = centroid_key(variables) if key is None else key
    mu = _encode_chunked(model, variables, x, min(chunk, n))
    centres = centroids_kmeans(mu, model.n_centroids, key, n_iter=n_iter)
    pick = jnp.argmin(sq_dists(centres, mu), axis=1)  # nearest code to each centre; (N, n) distances
    if is_conditional(model):
        return x[0][pick], x[1][pick]
    return x[pick]


__all__ = [
    "capped_exp", "MetricNetwork", "Metric", "inverse_metric", "inverse_metric_jacobian", "momentum_metric",
    "logdet_inverse", "riemannian_logprior", "stored_metric", "metric_factors", "metric_from_data", "centroid_data", "G_inv",
    "metric_tensor", "log_volume", "metric_fn", "update_metric", "centroid_key", "select_centroid_data",
]
