"""The MS-SSIM VAE (Snell et al. 2017): a VAE whose reconstruction term is perceptual.

    loss(x) = (1/B) Σ_b [1 − MS-SSIM(x_b, x̂_b)] + β · (1/B) Σ_b KL(q(z|x_b) ‖ p(z)),

x̂_b the decoder's mean at one reparameterised draw z_b ~ q(z|x_b), reshaped to the
image shape (``(H, W)`` or ``(H, W, C)``). As in pythae the perceptual term is 1 − MS-SSIM
in [0, 2], unscaled, and β multiplies the KL in nats (pythae: ``beta=1.0``, ``window_size=3``).

SSIM (Wang et al. 2004) compares local statistics under a normalised Gaussian window w
(σ = 1.5, ``window_size`` × ``window_size``, as pythae), evaluated where the window fits
inside the image ('valid' positions):

    μ_x = w ∗ x,  σ_x² = w ∗ x² − μ_x²,  σ_xy = w ∗ (x y) − μ_x μ_y,
    l = (2 μ_x μ_y + C1) / (μ_x² + μ_y² + C1),    cs = (2 σ_xy + C2) / (σ_x² + σ_y² + C2),
    C1 = (0.01 L)², C2 = (0.03 L)²   (L = ``data_range``, 1 for data in [0, 1]),

computed as l = 1 − (μ_x − μ_y)²/(μ_x² + μ_y² + C1) and cs = 1 − σ²_{x−y}/(σ_x² + σ_y² + C2)
(σ²_{x−y} = w ∗ (x − y)² − (μ_x − μ_y)²), the same values, so that identical images give
exactly 1 in any precision.

MS-SSIM (Wang, Simoncelli & Bovik 2003) takes M scales, the image mean-pooled 2×2 between
them (odd sides floored), and combines the map means

    MS-SSIM = mean(l_M · cs_M)^{γ_M} · Π_{j<M} mean(cs_j)^{γ_j},

the coarsest scale's term being its mean SSIM (the common reading of the paper's
l_M^{α_M} Π_j cs_j^{β_j} with α_M = β_M). Each term is floored at 10⁻⁶ before the power
(a negative mean cs, from anticorrelated images, would make a fractional power undefined).
Channels: the maps are averaged over them.

Number of scales. An image must stay at least ``window_size`` on its smaller side at the
coarsest scale: M is the largest m ≤ 5 with ⌊min(H, W) / 2^{m−1}⌋ ≥ ``window_size``
(:func:`n_scales`). The 8×8 digits with the 3×3 window get M = 2 (8 and 4; 2 < 3). The
exponents are Wang et al.'s γ = (0.0448, 0.2856, 0.3001, 0.2363, 0.1333) (finest first) for
M = 5, and their first M divided by their sum for M < 5 (M = 2: 0.1356, 0.8644).

Departures from pythae (whose MS-SSIM is that of pytorch-msssim): pythae computes one
MS-SSIM for the whole batch (map means pooled over all images), here one per image,
averaged; it zero-pads the images ('same' positions: the border windows see zeros), here
only valid positions count; it maps every term t to (t + 1)/2 before the power (not in the
paper), here the terms are floored instead; its number of scales depends on the width
alone with its own exponent table (an 8-wide image gets 3 scales with exponents
0.4558, 0.1633, 0.3809, the last scale 2×2, smaller than the window); and its product
Π_{j<M} cs_j^{γ_j} · ssim_M^{γ_M} multiplies the coarsest term in once per finer scale, i.e.
raises it to (M − 1) γ_M instead of γ_M.
"""
from __future__ import annotations

import functools
import math
from typing import Any, Optional, Sequence

import jax
import jax.numpy as jnp

from .base import (
    AutoEncoderModel, Variables, check_inputs, decode, encode, finish, kl_term, sample_posterior, split_condition,
)
from .decoders import decoder_mean
from .validation import check_int, check_scalar

WANG_EXPONENTS = (0.0448, 0.2856, 0.3001, 0.2363, 0.1333)
MAX_SCALES = len(WANG_EXPONENTS)
SIGMA = 1.5  # the Gaussian window's standard deviation (pixels)
FLOOR = 1e-6  # each scale's term is floored here before its power


class MSSSIM_VAE(AutoEncoderModel):
    """``MSSSIM_VAE(encoder, decoder)``: a VAE trained with 1 − MS-SSIM as its reconstruction term.

    The variables have exactly the VAE's layout.

    Attributes:
        image_shape: the shape of one example as an image, ``(H, W)`` or ``(H, W, C)``;
            ``None`` to read it from the data (see :func:`image_shape_of`).
    """

    image_shape: Optional[Sequence[int]] = None

    def __post_init__(self) -> None:
        if self.image_shape is not None:
            shape = tuple(int(s) for s in self.image_shape)
            if len(shape) not in (2, 3) or min(shape) < 1:
                raise ValueError(f"`image_shape` must be (H, W) or (H, W, C) of positive sizes, got {shape}")
            object.__setattr__(self, "image_shape", shape)
        super().__post_init__()


def image_shape_of(model: Any, x: jax.Array) -> tuple[int, ...]:
    """The image shape of the examples ``x`` ``(batch, *data_shape)``.

    The model's ``image_shape`` when set (it must hold ``prod(data_shape)`` values);
    otherwise ``data_shape`` itself when it is ``(H, W)`` or ``(H, W, C)``, and ``(n, n)``
    for flat data of n² features (the 64 features of the digits are 8×8).

    Args:
        model: the model (its ``image_shape`` field, when it has one, is used).
        x: the data.

    Returns:
        ``(H, W)`` or ``(H, W, C)``.
    """
    data_shape = tuple(int(s) for s in x.shape[1:])
    size = math.prod(data_shape)
    given = getattr(model, "image_shape", None)
    if given is not None:
        if math.prod(given) != size:
            raise ValueError(f"`image_shape` {tuple(given)} holds {math.prod(given)} values, the examples have {size}")
        return tuple(given)
    if len(data_shape) in (2, 3):
        return data_shape
    side = math.isqrt(size)
    if len(data_shape) == 1 and side * side == size:
        return (side, side)
    raise ValueError(
        f"cannot read an image shape from examples of shape {data_shape}: pass image_shape=(H, W) "
        f"or (H, W, C) to MSSSIM_VAE"
    )


def n_scales(height: int, width: int, window_size: int) -> int:
    """The number M of scales: the largest m ≤ 5 with ⌊min(H, W) / 2^{m−1}⌋ ≥ ``window_size``.

    Args:
        height: H.
        width: W.
        window_size: the window's side.

    Returns:
        M ≥ 1 (``window_size`` ≤ min(H, W) is required).
    """
    side, m = min(int(height), int(width)), 1
    while m < MAX_SCALES and side // 2 >= window_size:
        side, m = side // 2, m + 1
    return m


def scale_exponents(m: int) -> tuple[float, ...]:
    """Wang et al.'s exponents for ``m`` scales, finest first (renormalised to sum 1 when m < 5).

    Args:
        m: the number of scales, 1 ≤ m ≤ 5.

    Returns:
        ``m`` exponents.
    """
    if m == MAX_SCALES:
        return WANG_EXPONENTS
    head = WANG_EXPONENTS[:m]
    return tuple(g / sum(head) for g in head)


def gaussian_window(window_size: int, sigma: float = SIGMA, dtype: Any = jnp.float32) -> jax.Array:
    """The normalised 2-D Gaussian window ``(window_size, window_size)`` (sums to 1).

    Args:
        window_size: its side (odd).
        sigma: the standard deviation in pixels.
        dtype: its dtype.

    Returns:
        The outer product of the normalised 1-D Gaussian with itself.
    """
    t = jnp.arange(window_size, dtype=dtype) - (window_size - 1) / 2
    g = jnp.exp(-(t**2) / (2.0 * sigma**2))
    g = g / jnp.sum(g)
    return g[:, None] * g[None, :]


def check_window(window_size: Any, height: int, width: int) -> None:
    """Refuse a window that is not an odd int no larger than the image's smaller side.

    Args:
        window_size: the candidate.
        height: the image's H.
        width: the image's W.
    """
    check_int(window_size, "window_size", minimum=1)
    if window_size % 2 == 0:
        raise ValueError(f"`window_size` must be odd (a window centred on a pixel), got {window_size}")
    if window_size > min(height, width):
        raise ValueError(f"`window_size` {window_size} is larger than the {height}×{width} images")


def _filter(img: jax.Array, window: jax.Array) -> jax.Array:
    """w ∗ img at the valid positions, per channel: ``(n, H, W, C)`` → ``(n, H−k+1, W−k+1, C)``."""
    n, h, w, c = img.shape
    flat = jnp.moveaxis(img, 3, 1).reshape(n * c, h, w, 1)
    out = jax.lax.conv_general_dilated(
        flat, window[:, :, None, None].astype(img.dtype), (1, 1), "VALID", dimension_numbers=("NHWC", "HWIO", "NHWC")
    )
    return jnp.moveaxis(out.reshape(n, c, *out.shape[1:3]), 1, 3)


def ssim_maps(x: jax.Array, y: jax.Array, window: jax.Array, data_range: float = 1.0) -> tuple[jax.Array, jax.Array]:
    """The luminance map l and the contrast–structure map cs of images ``(n, H, W, C)``.

    Args:
        x: the first images.
        y: the second images, same shape.
        window: the normalised window ``(k, k)``.
        data_range: L, the range of the pixel values.

    Returns:
        ``(l, cs)``, each ``(n, H−k+1, W−k+1, C)``.
    """
    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    mu_x, mu_y = _filter(x, window), _filter(y, window)
    var_x = _filter(x * x, window) - mu_x**2
    var_y = _filter(y * y, window) - mu_y**2
    # written as 1 − (distance)/(denominator), the same values, so that identical images give
    # exactly 1 in any precision: 2μ_xμ_y = μ_x² + μ_y² − (μ_x − μ_y)², and
    # 2σ_xy = σ_x² + σ_y² − σ²_{x−y} with σ²_{x−y} = w ∗ (x − y)² − (μ_x − μ_y)²
    d_mu = mu_x - mu_y
    var_diff = _filter((x - y) ** 2, window) - d_mu**2
    lum = 1.0 - d_mu**2 / (mu_x**2 + mu_y**2 + c1)
    cs = 1.0 - var_diff / (var_x + var_y + c2)
    return lum, cs


def _pool(img: jax.Array) -> jax.Array:
    """2×2 mean pooling of ``(n, H, W, C)`` (odd sides floored)."""
    n, h, w, c = img.shape
    img = img[:, : 2 * (h // 2), : 2 * (w // 2)]
    return img.reshape(n, h // 2, 2, w // 2, 2, c).mean(axis=(2, 4))


def msssim(x: jax.Array, y: jax.Array, *, window_size: int = 3, data_range: float = 1.0) -> jax.Array:
    """MS-SSIM of each pair of images, ``(batch,)`` (see the module for the definition).

    Args:
        x: images ``(batch, H, W)`` or ``(batch, H, W, C)``.
        y: images of the same shape.
        window_size: the Gaussian window's side (odd, ≤ min(H, W)).
        data_range: L, the range of the pixel values (1 for [0, 1]).

    Returns:
        MS-SSIM(x_b, y_b) for each b; exactly 1 for identical images.
    """
    if x.shape != y.shape or x.ndim not in (3, 4):
        raise ValueError(f"`x` and `y` must be images of one shape (batch, H, W[, C]), got {x.shape} and {y.shape}")
    check_window(window_size, x.shape[1], x.shape[2])
    check_scalar(data_range, "data_range", positive=True)
    return _msssim_jit(x, y, int(window_size), data_range)


@functools.partial(jax.jit, static_argnums=2)
def _msssim_jit(x: jax.Array, y: jax.Array, window_size: int, data_range: Any) -> jax.Array:
    if x.ndim == 3:
        x, y = x[..., None], y[..., None]
    m = n_scales(x.shape[1], x.shape[2], window_size)
    window = gaussian_window(window_size, dtype=x.dtype)
    value = jnp.ones(x.shape[0], x.dtype)
    for j, gamma in enumerate(scale_exponents(m)):  # a static loop over ≤ 5 scales of different sizes
        lum, cs = ssim_maps(x, y, window, data_range)
        term = lum * cs if j == m - 1 else cs
        value = value * jnp.maximum(jnp.mean(term, axis=(1, 2, 3)), FLOOR) ** gamma
        x, y = _pool(x), _pool(y)
    return value


def loss(
    model: MSSSIM_VAE,
    variables: Variables,
    x: jax.Array,
    key: jax.Array,
    *,
    beta: float = 1.0,
    window_size: int = 3,
    data_range: float = 1.0,
    aux: bool = False,
) -> Any:
    """(1/B) Σ_b [1 − MS-SSIM(x_b, x̂_b)] + β · (1/B) Σ_b KL(q(z|x_b) ‖ p(z)); a scalar.

    Args:
        model: an ``MSSSIM_VAE`` (any model with a stochastic encoder and a decoder).
        variables: its variables.
        x: data ``(batch, *data_shape)`` whose examples are images (:func:`image_shape_of`); the pair
            ``(x, c)`` for a conditional model (q(z|x, c), x̂ decoded under c).
        key: PRNG key for the draw z ~ q(z|x).
        beta: the KL weight β ≥ 0.
        window_size: the SSIM window's side (odd, at most the image's smaller side).
        data_range: L of the SSIM constants.
        aux: also return ``{"loss", "msssim", "reconstruction", "kl"}`` (batch means;
            ``reconstruction`` is 1 − MS-SSIM).

    Returns:
        The loss, or ``(loss, metrics)`` with ``aux=True``.
    """
    check_inputs(model, x, key)
    check_scalar(beta, "beta", nonnegative=True)
    data, c = split_condition(model, x)
    shape = image_shape_of(model, data)
    check_window(window_size, shape[0], shape[1])
    enc_out = encode(model, variables, x)
    zs = sample_posterior(model, enc_out, key, 1)
    x_hat = decoder_mean(model.decoder, decode(model, variables, zs[0], c))
    batch = data.shape[0]
    score = msssim(
        data.reshape(batch, *shape), x_hat.reshape(batch, *shape).astype(data.dtype),
        window_size=window_size, data_range=data_range,
    )
    mean_score, kl = jnp.mean(score), jnp.mean(kl_term(model, variables, enc_out, zs))
    recon = 1.0 - mean_score
    return finish(recon + beta * kl, {"msssim": mean_score, "reconstruction": recon, "kl": kl}, aux)


__all__ = [
    "FLOOR",
    "MSSSIM_VAE",
    "SIGMA",
    "WANG_EXPONENTS",
    "check_window",
    "gaussian_window",
    "image_shape_of",
    "loss",
    "msssim",
    "n_scales",
    "scale_exponents",
    "ssim_maps",
]
