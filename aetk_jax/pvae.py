"""Poincaré VAE, 𝒫^c-VAE (Mathieu, Le Lan, Maddison, Tomioka & Teh 2019).

Codes live on the Poincaré ball 𝔹_c^d of curvature −c (``aetk_jax.poincare``
has its maps), ``latent_dim`` = d. Densities are with respect to the
Riemannian volume dM(z) = λ_z^d dz, λ_z = 2/(1 − c‖z‖²). Two families, both
for the posterior and the prior (``distribution=``):

* ``"wrapped"``: the wrapped normal 𝒩^W(μ, Σ): u ~ N(0, diag σ²) in the
  tangent space at 0 (orthonormal coordinates, i.e. the Euclidean vector u/λ_0),
  parallel-transported to μ and mapped by exp_μ,
  z = exp_μ(P_{0→μ}(u/λ_0)); its log-density, with r = d_c(μ, z) = ‖u‖ and
  u = λ_0 P_{μ→0}(log_μ z),

      log 𝒩^W(z; μ, σ) = log N(u; 0, diag σ²) − (d−1) log(sinh(√c r)/(√c r)).

* ``"riemannian"``: the Riemannian (maximum-entropy) normal 𝒩^R(μ, σ²), isotropic,

      log 𝒩^R(z; μ, σ) = −d_c(μ, z)²/(2σ²) − log Z(σ),
      Z(σ) = |S^{d−1}| ∫₀^∞ e^{−r²/(2σ²)} (sinh(√c r)/√c)^{d−1} dr,

  Z by a 128-node Gauss–Legendre rule in log space (stable for every σ; the
  closed form as an alternating sum of erf terms loses all digits in float32 at
  small σ for d ≥ 3). Sampler: a direction α uniform on S^{d−1} and a geodesic
  radius r from the density ∝ e^{−r²/(2σ²)} sinh(√c r)^{d−1}, z = exp_μ(r α/λ_μ).
  The radius is drawn by rejection, ``N_PROPOSALS`` vectorised proposals, with
  one of two envelopes: for (d−1)cσ² < 1 the chi-like r = σ'‖N(0, I_d)‖,
  1/σ'² = 1/σ² − (d−1)c/3 (from sinh(x)/x ≤ e^{x²/6}), accepted with probability
  (sinh(x)/x)^{d−1} e^{−(d−1)x²/6}, x = √c r; otherwise r ~ N((d−1)√cσ², σ²)
  (from sinh x ≤ eˣ/2), accepted with probability (1 − e^{−2√c r})^{d−1} (r > 0).
  The acceptance rate per proposal, which depends on √c σ and d only, measured
  ≥ 0.51 for d ≤ 10 and √c σ from 0.01 to 5 (lowest where the envelopes switch),
  so that none of the 32 proposals is accepted has probability below 10⁻⁹ (the
  draw then falls back to |first proposal|).
  Its gradient in σ is the implicit one (Figurnov et al. 2018),
  ∂r/∂σ = −∂_σF(r; σ)/p(r; σ) = (1/(σ³ p(r))) ∫₀^r (E[t²] − t²) p(t) dt, by
  Gauss–Legendre (Mathieu et al. use adaptive rejection sampling for r and the
  same implicit gradient).

Encoder (:class:`PoincareEncoder`): μ = exp_0(Dense(d)(h)) on the ball (then kept
1e-5/√c inside it), σ = softplus(·) > 0, d scales for the wrapped normal, one for
the Riemannian one. Prior (:class:`PoincarePrior`): the same family at μ = 0,
σ = 1. The KL term is the Monte-Carlo estimate (1/S) Σ_s [log q(z_s|x) −
log p(z_s)] (``aet.base.kl_term``), so ``aet.pvae.loss`` is ``aet.vae.loss``. The
decoder receives the ball coordinates z, as in pythae (Mathieu et al.'s
reference code also offers a gyroplane first layer).

Departures from pythae: pythae uses the encoder's raw output as μ (its default
encoder is the VAE's; nothing keeps μ inside the ball), here μ = exp_0(·) as in
Mathieu et al.; pythae's Riemannian normal radius uses ARS from the reference
code, here the two-envelope rejection above; pythae's wrapped normal divides
the tangent noise by λ_0 as here. ``PoincareVAE(..., curvature=c)`` sets the
curvature of its encoder and prior.
"""
from __future__ import annotations

import functools
import math
from typing import Any, NamedTuple, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from . import poincare as pb
from . import vae
from .base import AutoEncoderModel, Variables
from .distributions import LOG_2PI, softplus_scale
from .encoders import encoder_logposterior, encoder_mean, encoder_sample
from .svae import sample_uniform_sphere, sphere_log_area
from .validation import check_int, check_scalar

DISTRIBUTIONS = ("wrapped", "riemannian")
#: proposals drawn at once per radius in the Riemannian normal's rejection sampler
N_PROPOSALS = 32
_GL_X, _GL_W = np.polynomial.legendre.leggauss(128)


class PoincareParams(NamedTuple):
    """``mu`` ``(batch, d)`` on the ball; ``sigma`` ``(batch, d)`` (wrapped) or ``(batch, 1)`` (Riemannian)."""

    mu: jax.Array
    sigma: jax.Array


def _log_sinhc(x: jax.Array) -> jax.Array:
    """log(sinh(x)/x) for x ≥ 0, stable (x²/6 − x⁴/180 below 1e-2)."""
    xs = jnp.maximum(x, 1e-2)
    big = xs + jnp.log(-jnp.expm1(-2.0 * xs)) - math.log(2.0) - jnp.log(xs)
    return jnp.where(x < 1e-2, x**2 / 6.0 - x**4 / 180.0, big)


# ---------------------------------------------------------------- wrapped normal


def wrapped_normal_sample(key: jax.Array, mu: jax.Array, sigma: jax.Array, c: float) -> jax.Array:
    """z = exp_μ(P_{0→μ}(u/λ_0)), u ~ N(0, diag σ²): ``mu`` ``(..., d)``, ``sigma`` broadcast against it.

    Args:
        key: PRNG key.
        mu: centres on the ball ``(..., d)``.
        sigma: tangent-space scales, ``(..., d)`` or ``(..., 1)``.
        c: the curvature magnitude c > 0.

    Returns:
        Points on the ball ``(..., d)``, differentiable in ``mu`` and ``sigma``.
    """
    u = sigma * jax.random.normal(key, mu.shape, mu.dtype)
    return pb.expmap(mu, pb.transport0(mu, u / 2.0, c), c)


def wrapped_normal_logpdf(z: jax.Array, mu: jax.Array, sigma: jax.Array, c: float) -> jax.Array:
    """log 𝒩^W(z; μ, σ) with respect to the Riemannian volume, ``(...)``.

    Args:
        z: points ``(..., d)``.
        mu: centres ``(..., d)`` (broadcast against ``z``).
        sigma: scales ``(..., d)`` or ``(..., 1)``.
        c: the curvature magnitude c > 0.

    Returns:
        Log densities (no trailing axis).
    """
    d = z.shape[-1]
    u = 2.0 * pb.transport_to0(mu, pb.logmap(mu, z, c), c)  # λ_0 P_{μ→0}(log_μ z)
    r = jnp.sqrt(jnp.maximum(jnp.sum(u**2, axis=-1), jnp.finfo(u.dtype).tiny))
    sigma = jnp.broadcast_to(sigma, u.shape)
    log_n = -0.5 * jnp.sum(LOG_2PI + 2.0 * jnp.log(sigma) + (u / sigma) ** 2, axis=-1)
    return log_n - (d - 1) * _log_sinhc(jnp.sqrt(c) * r)


# ---------------------------------------------------------------- Riemannian normal


def _radial_log_density(r: jax.Array, sigma: jax.Array, c: float, d: int) -> jax.Array:
    """log of e^{−r²/(2σ²)} (sinh(√c r)/√c)^{d−1} (unnormalised), r > 0."""
    return -(r**2) / (2.0 * sigma**2) + (d - 1) * (_log_sinhc(jnp.sqrt(c) * r) + jnp.log(r))


def _gl_log_integral(log_f: Any, a: jax.Array, b: jax.Array) -> jax.Array:
    """log ∫_a^b exp(log_f(t)) dt by 128-node Gauss–Legendre (``a``, ``b`` of one shape; nodes on a new last axis)."""
    x, w = (jnp.asarray(v, a.dtype) for v in (_GL_X, _GL_W))
    half = (b - a)[..., None] / 2.0
    t = a[..., None] + half * (x + 1.0)
    return jax.scipy.special.logsumexp(log_f(t) + jnp.log(w) + jnp.log(half), axis=-1)


def _radius_upper(sigma: jax.Array, c: float, d: int) -> jax.Array:
    """A radius beyond which the radial density is negligible: σ((d−1)√cσ + √d + 12)."""
    return jax.lax.stop_gradient(sigma * ((d - 1) * jnp.sqrt(c) * sigma + math.sqrt(d) + 12.0))


def riemannian_log_normaliser(sigma: jax.Array, c: float, d: int) -> jax.Array:
    """log Z(σ) = log |S^{d−1}| + log ∫₀^∞ e^{−r²/(2σ²)} (sinh(√c r)/√c)^{d−1} dr.

    Args:
        sigma: scales > 0, any shape.
        c: the curvature magnitude c > 0.
        d: the dimension ≥ 1.

    Returns:
        log Z, the shape of ``sigma``.
    """
    s = sigma[..., None]
    log_int = _gl_log_integral(lambda r: _radial_log_density(r, s, c, d), jnp.zeros_like(sigma),
                               _radius_upper(sigma, c, d))
    return sphere_log_area(d) + log_int


def riemannian_normal_logpdf(z: jax.Array, mu: jax.Array, sigma: jax.Array, c: float) -> jax.Array:
    """log 𝒩^R(z; μ, σ) = −d_c(μ, z)²/(2σ²) − log Z(σ), ``(...)``.

    Args:
        z: points ``(..., d)``.
        mu: centres ``(..., d)``.
        sigma: scales ``(..., 1)``.
        c: the curvature magnitude c > 0.

    Returns:
        Log densities (no trailing axis).
    """
    s = sigma[..., 0]
    return -pb.distance(mu, z, c) ** 2 / (2.0 * s**2) - riemannian_log_normaliser(s, c, z.shape[-1])


def _draw_radius(key: jax.Array, sigma: jax.Array, c: float, d: int) -> jax.Array:
    """Exact draws of the geodesic radius (no gradient), ``sigma``'s shape; see the module docstring."""
    sigma = jax.lax.stop_gradient(sigma)
    sc = jnp.sqrt(c)
    shape = (N_PROPOSALS, *sigma.shape)
    k_chi, k_gauss, k_u = jax.random.split(key, 3)
    small = (d - 1) * c * sigma**2 < 1.0
    s_prime = jax.lax.rsqrt(jnp.maximum(1.0 / sigma**2 - (d - 1) * c / 3.0, jnp.finfo(sigma.dtype).tiny))
    r_chi = s_prime * jnp.sqrt(jnp.sum(jax.random.normal(k_chi, (d, *shape), sigma.dtype) ** 2, axis=0))
    r_gauss = (d - 1) * sc * sigma**2 + sigma * jax.random.normal(k_gauss, shape, sigma.dtype)
    r = jnp.where(small, r_chi, r_gauss)
    x = sc * jnp.maximum(r, jnp.finfo(sigma.dtype).tiny)
    log_acc_chi = (d - 1) * (_log_sinhc(x) - x**2 / 6.0)
    log_acc_gauss = jnp.where(r > 0, (d - 1) * jnp.log(-jnp.expm1(-2.0 * x)), -jnp.inf)
    log_u = jnp.log(jax.random.uniform(k_u, shape, sigma.dtype, minval=jnp.finfo(sigma.dtype).tiny))
    ok = log_u <= jnp.where(small, log_acc_chi, log_acc_gauss)
    first = jnp.argmax(ok, axis=0)
    r_first = jnp.take_along_axis(r, first[None], axis=0)[0]
    return jnp.where(jnp.any(ok, axis=0), r_first, jnp.abs(r[0]))  # fallback (probability < 1e-9)


def _dr_dsigma(r: jax.Array, sigma: jax.Array, c: float, d: int) -> jax.Array:
    """∂r/∂σ at fixed F(r; σ): (1/(σ³ p(r))) ∫₀^r (E[t²] − t²) p(t) dt, with a positive integrand
    (over [r, ∞) of t² − E[t²] when r² > E[t²])."""
    s = sigma[..., None]
    zero, top = jnp.zeros_like(sigma), jnp.maximum(_radius_upper(sigma, c, d), 2.0 * r)
    log_p = lambda t: _radial_log_density(t, s, c, d)  # noqa: E731
    log_z = _gl_log_integral(log_p, zero, top)
    m2 = jnp.exp(_gl_log_integral(lambda t: log_p(t) + 2.0 * jnp.log(t), zero, top) - log_z)
    tiny = jnp.finfo(sigma.dtype).tiny
    m2_ = m2[..., None]
    below = _gl_log_integral(lambda t: log_p(t) + jnp.log(jnp.maximum(m2_ - t**2, tiny)), zero, r)
    above = _gl_log_integral(lambda t: log_p(t) + jnp.log(jnp.maximum(t**2 - m2_, tiny)), r, top)
    log_int = jnp.where(r**2 <= m2, below, above)
    return jnp.exp(log_int - _radial_log_density(r, sigma, c, d)) / sigma**3


@functools.partial(jax.custom_jvp, nondiff_argnums=(2, 3))
def _implicit_radius(sigma: jax.Array, r: jax.Array, c: float, d: int) -> jax.Array:
    return r


@_implicit_radius.defjvp
def _implicit_radius_jvp(c: float, d: int, primals: tuple[jax.Array, jax.Array], tangents: tuple[Any, Any]) -> Any:
    sigma, r = primals
    sigma_dot, r_dot = tangents
    return r, r_dot + _dr_dsigma(r, sigma, c, d) * sigma_dot


def riemannian_normal_sample(key: jax.Array, mu: jax.Array, sigma: jax.Array, c: float) -> jax.Array:
    """z = exp_μ(r α / λ_μ): α uniform on S^{d−1}, r the geodesic radius (implicit gradient in σ).

    Args:
        key: PRNG key.
        mu: centres ``(..., d)``.
        sigma: scales ``(..., 1)``.
        c: the curvature magnitude c > 0.

    Returns:
        Points on the ball ``(..., d)``, differentiable in ``mu`` and ``sigma``.
    """
    d = mu.shape[-1]
    k_r, k_a = jax.random.split(key)
    s = jnp.broadcast_to(sigma[..., 0], mu.shape[:-1])
    r = _implicit_radius(s, jax.lax.stop_gradient(_draw_radius(k_r, s, c, d)), c, d)
    alpha = sample_uniform_sphere(k_a, mu.shape[:-1], d, mu.dtype)
    return pb.expmap(mu, r[..., None] * alpha / pb.conformal_factor(mu, c), c)


def _logpdf(distribution: str, z: jax.Array, mu: jax.Array, sigma: jax.Array, c: float) -> jax.Array:
    fn = wrapped_normal_logpdf if distribution == "wrapped" else riemannian_normal_logpdf
    return fn(z, mu, sigma, c)


def _sample(distribution: str, key: jax.Array, mu: jax.Array, sigma: jax.Array, c: float) -> jax.Array:
    fn = wrapped_normal_sample if distribution == "wrapped" else riemannian_normal_sample
    return fn(key, mu, sigma, c)


# ---------------------------------------------------------------- encoder, prior, model


def _check_family(curvature: Any, distribution: Any) -> None:
    if curvature is not None:
        check_scalar(curvature, "curvature", positive=True)
    if distribution is not None and distribution not in DISTRIBUTIONS:
        raise ValueError(f"`distribution` must be one of {DISTRIBUTIONS}, got {distribution!r}")


class PoincareEncoder(nn.Module):
    """q(z|x) on the Poincaré ball: ``mu = exp_0(Dense(d)(body(x)))``, ``sigma = softplus(Dense(k))``.

    k = d for the wrapped normal, 1 for the Riemannian normal. The σ head starts
    with a zero kernel and σ = 1. ``curvature`` and ``distribution`` left at
    ``None`` are set by :class:`PoincareVAE` (standalone: 1.0 and ``"wrapped"``).

    Attributes:
        body: any flax module mapping ``x`` to features.
        latent_dim: d ≥ 1.
        curvature: c > 0 (the ball has curvature −c), or ``None``.
        distribution: ``"wrapped"`` or ``"riemannian"``, or ``None``.
    """

    body: nn.Module
    latent_dim: int
    curvature: Optional[float] = None
    distribution: Optional[str] = None

    def __post_init__(self) -> None:
        check_int(self.latent_dim, "latent_dim", minimum=1)
        _check_family(self.curvature, self.distribution)
        super().__post_init__()

    @property
    def c(self) -> float:
        """The curvature magnitude in use (1.0 when unset)."""
        return 1.0 if self.curvature is None else float(self.curvature)

    @property
    def family(self) -> str:
        """The distribution in use (``"wrapped"`` when unset)."""
        return self.distribution or "wrapped"

    @nn.compact
    def __call__(self, x: jax.Array) -> PoincareParams:
        h = self.body(x)
        mu = pb.project(pb.expmap0(nn.Dense(self.latent_dim, name="mu")(h), self.c), self.c)
        k = self.latent_dim if self.family == "wrapped" else 1
        head = nn.Dense(k, name="sigma", kernel_init=nn.initializers.zeros,
                        bias_init=nn.initializers.constant(math.log(math.e - 1.0)))
        return PoincareParams(mu, softplus_scale(head(h)))


@encoder_sample.register(PoincareEncoder)
def _poincare_sample(encoder: PoincareEncoder, enc_out: PoincareParams, key: jax.Array) -> jax.Array:
    return _sample(encoder.family, key, enc_out.mu, enc_out.sigma, encoder.c)


@encoder_logposterior.register(PoincareEncoder)
def _poincare_logposterior(encoder: PoincareEncoder, z: jax.Array, enc_out: PoincareParams) -> jax.Array:
    return _logpdf(encoder.family, z, enc_out.mu, enc_out.sigma, encoder.c)


@encoder_mean.register(PoincareEncoder)
def _poincare_mean(encoder: PoincareEncoder, enc_out: PoincareParams) -> jax.Array:
    return enc_out.mu  # the centre (Fréchet mean) of either family


class PoincarePrior(nn.Module):
    """p(z): the wrapped or Riemannian normal at the origin with σ = 1 (no parameters).

    Attributes:
        curvature: c > 0.
        distribution: ``"wrapped"`` or ``"riemannian"``.
    """

    curvature: float = 1.0
    distribution: str = "wrapped"

    def __post_init__(self) -> None:
        _check_family(self.curvature, self.distribution)
        super().__post_init__()

    def _params(self, z: jax.Array) -> tuple[jax.Array, jax.Array]:
        k = z.shape[-1] if self.distribution == "wrapped" else 1
        return jnp.zeros(z.shape[-1], z.dtype), jnp.ones(k, z.dtype)

    def __call__(self, z: jax.Array, encoder: Any = None) -> jax.Array:
        mu, sigma = self._params(z)
        return _logpdf(self.distribution, z, mu, sigma, float(self.curvature))

    def sample(self, key: jax.Array, n: int, d: int, encoder: Any = None) -> jax.Array:
        """``n`` draws ``(n, d)``."""
        mu, sigma = self._params(jnp.zeros((1, d)))
        mu = jnp.zeros((n, d))
        return _sample(self.distribution, key, mu, jnp.broadcast_to(sigma, (n, sigma.shape[-1])),
                       float(self.curvature))


class PoincareVAE(AutoEncoderModel):
    """``PoincareVAE(encoder, decoder, curvature=1.0, distribution="wrapped")``: codes on the Poincaré ball.

    ``encoder`` is a :class:`PoincareEncoder`; its unset ``curvature`` and
    ``distribution`` are taken from the model (set ones must agree). ``prior``
    defaults to :class:`PoincarePrior` of the same curvature and family.

    Attributes:
        curvature: c > 0; the ball has curvature −c.
        distribution: ``"wrapped"`` (the wrapped normal) or ``"riemannian"`` (the Riemannian normal).
    """

    curvature: float = 1.0
    distribution: str = "wrapped"

    def __post_init__(self) -> None:
        _check_family(self.curvature, self.distribution)
        enc = self.encoder
        if isinstance(enc, PoincareEncoder):
            for name in ("curvature", "distribution"):
                mine, theirs = getattr(self, name), getattr(enc, name)
                if theirs is not None and theirs != mine:
                    raise ValueError(f"`{name}`: the encoder has {theirs!r}, the model {mine!r}")
            object.__setattr__(self, "encoder", enc.clone(curvature=float(self.curvature),
                                                          distribution=self.distribution))
        if self.prior is None:
            object.__setattr__(self, "prior", PoincarePrior(float(self.curvature), self.distribution))
        super().__post_init__()


def elbo(model: PoincareVAE, variables: Variables, x: jax.Array, key: jax.Array, **hyper: Any) -> jax.Array:
    """Per-example ELBO with the Monte-Carlo KL, ``(batch,)`` (``aet.vae.elbo``: ``n_samples=1``).

    Args:
        model: the Poincaré VAE.
        variables: its variables.
        x: data ``(batch, *data_shape)``.
        key: PRNG key for the posterior draws.
        **hyper: ``n_samples``.

    Returns:
        The ELBO estimate per example, ``(batch,)``.
    """
    return vae.elbo(model, variables, x, key, **hyper)


def loss(
    model: PoincareVAE,
    variables: Variables,
    x: jax.Array,
    key: jax.Array,
    *,
    beta: float = 1.0,
    n_samples: int = 1,
    aux: bool = False,
) -> Any:
    """Negative (β-weighted) ELBO with the Monte-Carlo KL (``aet.vae.loss``).

    Args:
        model: the Poincaré VAE.
        variables: its variables.
        x: data ``(batch, *data_shape)``.
        key: PRNG key for the posterior draws.
        beta: weight ≥ 0 of the KL term.
        n_samples: draws per example ≥ 1.
        aux: also return the metrics.

    Returns:
        The loss, or ``(loss, {"loss", "loglikelihood", "kl", "elbo"})`` with ``aux=True``.
    """
    return vae.loss(model, variables, x, key, beta=beta, n_samples=n_samples, aux=aux)


__all__ = [
    "PoincareVAE", "PoincareEncoder", "PoincareParams", "PoincarePrior", "DISTRIBUTIONS", "N_PROPOSALS",
    "wrapped_normal_sample", "wrapped_normal_logpdf", "riemannian_normal_sample", "riemannian_normal_logpdf",
    "riemannian_log_normaliser", "elbo", "loss",
]
