"""MS-SSIM (aetk_jax.msssim_vae.msssim) against an independent float64 NumPy implementation of
Wang et al.'s formulas, its exact value 1 on identical images, its order under noise, its
gradients, the scale rule, and aet.MSSSIM_VAE (training on the digits, bad arguments)."""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from _conditional_checks import BODIES, K, LATENT, N_IN, check_conditional_loss
from _conditional_checks import batch as cond_batch
from conftest import small_vae_parts
from jax.test_util import check_grads

import aetk_jax as aet
from aetk_jax import msssim_vae
from aetk_jax.msssim_vae import msssim

# ---------------------------------------------------------------------------------------------
# the reference: Wang, Bovik, Sheikh & Simoncelli (2004) SSIM statistics under a Gaussian window
# (σ = 1.5) at every position where the window fits, Wang, Simoncelli & Bovik (2003) MS-SSIM with
# their exponents, 2×2 mean pooling between scales, written with explicit loops over positions.

_GAMMA = [0.0448, 0.2856, 0.3001, 0.2363, 0.1333]


def _ref_window(k, sigma=1.5):
    g = np.array([np.exp(-((i - (k - 1) / 2) ** 2) / (2 * sigma**2)) for i in range(k)])
    g /= g.sum()
    return np.outer(g, g)


def _ref_scale_means(x, y, k, L):
    """Mean over valid positions (and channels) of l·cs and of cs, for images (H, W, C)."""
    w = _ref_window(k)
    c1, c2 = (0.01 * L) ** 2, (0.03 * L) ** 2
    ssim_vals, cs_vals = [], []
    for ch in range(x.shape[2]):
        for i in range(x.shape[0] - k + 1):
            for j in range(x.shape[1] - k + 1):
                px, py = x[i:i + k, j:j + k, ch], y[i:i + k, j:j + k, ch]
                mx, my = np.sum(w * px), np.sum(w * py)
                vx, vy = np.sum(w * (px - mx) ** 2), np.sum(w * (py - my) ** 2)
                cov = np.sum(w * (px - mx) * (py - my))
                lum = (2 * mx * my + c1) / (mx**2 + my**2 + c1)
                cs = (2 * cov + c2) / (vx + vy + c2)
                ssim_vals.append(lum * cs)
                cs_vals.append(cs)
    return np.mean(ssim_vals), np.mean(cs_vals)


def _ref_pool(x):
    h, w = x.shape[0] // 2, x.shape[1] // 2
    out = np.zeros((h, w, x.shape[2]))
    for i in range(h):
        for j in range(w):
            out[i, j] = x[2 * i:2 * i + 2, 2 * j:2 * j + 2].mean(axis=(0, 1))
    return out


def ref_msssim(x, y, k=3, L=1.0):
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    if x.ndim == 2:
        x, y = x[..., None], y[..., None]
    sides = [min(x.shape[:2])]
    while len(sides) < 5 and sides[-1] // 2 >= k:  # the smallest scale still holds the window
        sides.append(sides[-1] // 2)
    m = len(sides)
    gamma = np.array(_GAMMA[:m]) if m == 5 else np.array(_GAMMA[:m]) / np.sum(_GAMMA[:m])
    value = 1.0
    for j in range(m):
        ssim_j, cs_j = _ref_scale_means(x, y, k, L)
        value *= max(ssim_j if j == m - 1 else cs_j, 1e-6) ** gamma[j]
        x, y = _ref_pool(x), _ref_pool(y)
    return value


def _pairs():
    """Known image pairs: digits, smooth patterns and noisy or blurred versions, colour, constants."""
    rng = np.random.default_rng(0)
    digits = np.asarray(aet.data.load_digits()[0].x[:3], np.float64).reshape(3, 8, 8)
    t = np.linspace(0, 1, 28)
    smooth = 0.5 + 0.4 * np.sin(6 * t)[:, None] * np.cos(4 * t)[None, :]
    big = 0.5 + 0.3 * np.sin(np.linspace(0, 9, 64))[:, None] * np.sin(np.linspace(0, 5, 64))[None, :]
    colour = rng.uniform(size=(16, 12, 3))
    return {
        "two digits (8x8, 2 scales)": (digits[0], digits[1]),
        "digit vs noisy digit": (digits[2], digits[2] + 0.1 * rng.normal(size=(8, 8))),
        "smooth vs noisy (28x28, 4 scales)": (smooth, smooth + 0.05 * rng.normal(size=(28, 28))),
        "smooth vs shifted (64x64, 5 scales)": (big, np.roll(big, 3, axis=1)),
        "colour (16x12x3, 3 scales)": (colour, 0.7 * colour + 0.3 * rng.uniform(size=colour.shape)),
        "image vs constant": (digits[0], np.full((8, 8), 0.3)),
        "anticorrelated (floored)": (digits[1], 1.0 - digits[1]),
    }


@pytest.mark.parametrize("name", list(_pairs()))
def test_msssim_matches_the_reference(name):
    x, y = _pairs()[name]
    with jax.enable_x64(True):
        got = float(msssim(jnp.asarray(x, jnp.float64)[None], jnp.asarray(y, jnp.float64)[None])[0])
    want = ref_msssim(x, y)
    np.testing.assert_allclose(got, want, rtol=1e-10)
    if name.startswith("anticorrelated"):
        assert want == pytest.approx(1e-6, rel=1e-9)  # a negative term: floored


def test_msssim_batches_and_other_windows_and_ranges():
    rng = np.random.default_rng(1)
    x, y = rng.uniform(size=(3, 20, 20)) * 255, rng.uniform(size=(3, 20, 20)) * 255
    with jax.enable_x64(True):
        got = np.asarray(msssim(jnp.asarray(x), jnp.asarray(y), window_size=5, data_range=255.0))
    np.testing.assert_allclose(got, [ref_msssim(a, b, k=5, L=255.0) for a, b in zip(x, y)], rtol=1e-10)


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.float64])
def test_identical_images_give_exactly_one(dtype):
    rng = np.random.default_rng(2)
    with jax.enable_x64(dtype == jnp.float64):
        for shape in [(4, 8, 8), (2, 28, 28), (2, 16, 12, 3)]:
            x = jnp.asarray(rng.uniform(size=shape), dtype)
            s = msssim(x, x)
            assert s.dtype == dtype
            assert np.all(np.asarray(s) == 1.0)


def test_noisier_images_score_lower():
    rng = np.random.default_rng(3)
    digits = jnp.asarray(aet.data.load_digits()[0].x[:8]).reshape(8, 8, 8)
    noise = jnp.asarray(rng.normal(size=digits.shape), jnp.float32)
    scores = np.stack([np.asarray(msssim(digits, digits + s * noise)) for s in (0.0, 0.05, 0.1, 0.2, 0.4)])
    assert np.all(scores[0] == 1.0)
    assert np.all(np.diff(scores, axis=0) < 0), scores


def test_msssim_gradients():
    rng = np.random.default_rng(4)
    with jax.enable_x64(True):
        x = jnp.asarray(rng.uniform(size=(2, 8, 8)))
        y = jnp.asarray(np.clip(np.asarray(x) + 0.2 * rng.normal(size=(2, 8, 8)), 0, 1))
        check_grads(lambda a, b: msssim(a, b), (x, y), order=1, modes=["fwd", "rev"], eps=1e-6, atol=1e-7, rtol=1e-6)


@pytest.mark.parametrize("side, window, scales", [(8, 3, 2), (8, 5, 1), (8, 7, 1), (28, 3, 4), (64, 3, 5),
                                                  (256, 11, 5), (15, 3, 3), (12, 7, 1)])
def test_scale_rule(side, window, scales):
    # the smallest scale is at least the window: ⌊side / 2^(M−1)⌋ ≥ window, and M ≤ 5
    assert msssim_vae.n_scales(side, side + 3, window) == scales
    assert side // 2 ** (scales - 1) >= window and (scales == 5 or side // 2**scales < window)


def test_bad_windows_and_shapes_raise():
    x = jnp.ones((2, 8, 8)) * 0.5
    with pytest.raises(ValueError, match="window_size"):
        msssim(x, x, window_size=4)
    with pytest.raises(ValueError, match="window_size"):
        msssim(x, x, window_size=9)
    with pytest.raises(ValueError, match="data_range"):
        msssim(x, x, data_range=0.0)
    with pytest.raises(ValueError, match="`x` and `y`"):
        msssim(x, x[:, :7])
    enc, dec = small_vae_parts(latent_dim=2, hidden=8, data_dim=64)
    with pytest.raises(ValueError, match="image_shape"):
        aet.MSSSIM_VAE(enc, dec, image_shape=(64,))
    model = aet.MSSSIM_VAE(enc, dec)
    xf = jnp.ones((2, 64)) * 0.5
    v = {}  # every check runs before the variables are used
    with pytest.raises(ValueError, match="beta"):
        msssim_vae.loss(model, v, xf, jax.random.key(0), beta=-0.5)
    with pytest.raises(ValueError, match="window_size"):
        msssim_vae.loss(model, v, xf, jax.random.key(0), window_size=2)
    with pytest.raises(ValueError, match="window_size"):
        msssim_vae.loss(model, v, xf, jax.random.key(0), window_size=11)
    enc10, dec10 = small_vae_parts(latent_dim=2, hidden=8, data_dim=10)
    m10 = aet.MSSSIM_VAE(enc10, dec10)
    x10 = jnp.ones((2, 10)) * 0.5
    with pytest.raises(ValueError, match="image_shape"):
        msssim_vae.loss(m10, v, x10, jax.random.key(0))
    m_wrong = aet.MSSSIM_VAE(enc, dec, image_shape=(4, 8))
    with pytest.raises(ValueError, match="image_shape"):
        msssim_vae.loss(m_wrong, v, xf, jax.random.key(0))


def test_loss_is_one_minus_msssim_plus_beta_kl():
    enc, dec = small_vae_parts(latent_dim=2, hidden=8, data_dim=64)
    model = aet.MSSSIM_VAE(enc, dec)
    x = jnp.asarray(aet.data.load_digits()[0].x[:5])
    v = model.init(jax.random.key(0), x)
    key = jax.random.key(1)
    value, m = msssim_vae.loss(model, v, x, key, beta=0.3, aux=True)
    # recompute from the parts: the same draw, the decoder's Bernoulli means as 8×8 images
    enc_out = aet.base.encode(model, v, x)
    z = aet.base.sample_posterior(model, enc_out, key, 1)[0]
    x_hat = aet.decoder_mean(model.decoder, aet.base.decode(model, v, z))
    score = np.asarray(msssim(x.reshape(5, 8, 8), x_hat.reshape(5, 8, 8)))
    kl = np.asarray(aet.encoder_kl(model.encoder, enc_out))
    np.testing.assert_allclose(float(value), np.mean(1 - score) + 0.3 * np.mean(kl), rtol=1e-5)
    np.testing.assert_allclose(float(m["msssim"]), np.mean(score), rtol=1e-6)
    jitted = jax.jit(functools.partial(msssim_vae.loss, model, beta=0.3))
    np.testing.assert_allclose(float(jitted(v, x, key)), float(value), rtol=1e-5)


@pytest.mark.slow
def test_trains_on_digits(digits):
    train, val = digits
    enc, dec = small_vae_parts(latent_dim=2, hidden=64)
    model = aet.MSSSIM_VAE(enc, dec)
    loss = functools.partial(msssim_vae.loss, model, beta=0.05)
    variables, history = aet.train.fit(model, loss, train, key=jax.random.key(0), optimizer=optax.adam(3e-3),
                                       epochs=6, batch_size=64, progress=False)
    losses = history["train"]["loss"]
    assert losses[-1] < losses[0] - 0.2, losses
    xv = jnp.asarray(val.x)
    _, metrics = jax.jit(functools.partial(msssim_vae.loss, model, beta=0.05, aux=True))(variables, xv, jax.random.key(1))
    # the baseline a model that ignores z can reach: the training mean image (held-out MS-SSIM 0.662);
    # measured after 6 epochs: 0.750
    mean_image = jnp.broadcast_to(jnp.asarray(train.x.mean(0)), xv.shape).reshape(-1, 8, 8)
    baseline = float(jnp.mean(msssim(xv.reshape(-1, 8, 8), mean_image)))
    assert float(metrics["msssim"]) > baseline + 0.04, (float(metrics["msssim"]), baseline)
    s = aet.sample(model, variables, jax.random.key(2), 4)
    assert s.x.shape == (4, 64)


# ---------------------------------------------------------------------------------------------
# conditional


def test_msssim_vae_is_conditional():
    """q(z|x, c) and x̂ decoded under c (``_conditional_checks``), on 3×4 images with the 3×3 window."""
    from aetk_jax import builders

    plain = builders.build("msssim_vae", (N_IN,), latent_dim=LATENT, hidden=(8,)).model
    model = plain.clone(image_shape=(3, 4), n_conditions=K)
    variables = model.init(jax.random.key(3), cond_batch())
    check_conditional_loss(model, variables, msssim_vae.loss, BODIES, trained=BODIES)
