"""Foundation utilities: vec_to_ltri, slogdet, sample_mvnormal_canon, cycle_anneal."""
from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import aetk_jax as aet
from aetk_jax.utils import cycle_anneal, sample_mvnormal_canon, slogdet, vec_to_ltri

# ---------------------------------------------------------------------------- vec_to_ltri


def test_vec_to_ltri_julia_example():
    # the Julia package's test: diagonal (1, 2, 3), lower (4, 5, 6) filled row by row
    L = vec_to_ltri(jnp.array([1.0, 2, 3, 4, 5, 6]), 3)
    np.testing.assert_array_equal(np.asarray(L), [[1, 0, 0], [4, 2, 0], [5, 6, 3]])


def test_vec_to_ltri_batched_matches_a_loop_reference():
    d = 4
    v = np.random.default_rng(0).normal(size=(3, 2, d * (d + 1) // 2)).astype(np.float32)
    got = np.asarray(vec_to_ltri(jnp.asarray(v), d))
    assert got.shape == (3, 2, d, d)
    want = np.zeros((3, 2, d, d), np.float32)
    for idx in np.ndindex(3, 2):
        k = d
        for i in range(d):
            want[idx][i, i] = v[idx][i]
            for j in range(i):  # L[i, j], i > j, in row-major order after the diagonal
                want[idx][i, j] = v[idx][k]
                k += 1
    np.testing.assert_allclose(got, want, rtol=0, atol=0)
    # differentiable: ∂ Σ L / ∂v = 1 for every entry (each entry lands exactly once)
    g = jax.jit(jax.grad(lambda u: jnp.sum(vec_to_ltri(u, d))))(jnp.asarray(v))
    np.testing.assert_array_equal(np.asarray(g), 1.0)
    # under jit and vmap
    np.testing.assert_allclose(np.asarray(jax.jit(jax.vmap(lambda u: vec_to_ltri(u, d)))(jnp.asarray(v[0], jnp.float32))),
                               want[0], rtol=1e-6)


def test_vec_to_ltri_wrong_length_raises():
    with pytest.raises(ValueError, match="6"):
        vec_to_ltri(jnp.ones(5), 3)


# -------------------------------------------------------------------------------- slogdet


def _spd(rng, *batch, d=4):
    A = rng.normal(size=(*batch, d, d))
    return A @ np.swapaxes(A, -1, -2) + d * np.eye(d)


def test_slogdet_matches_numpy_in_float64():
    with jax.enable_x64(True):
        rng = np.random.default_rng(1)
        A = _spd(rng, 5, d=4)
        got = np.asarray(slogdet(jnp.asarray(A)))
        sign, want = np.linalg.slogdet(A)
        assert np.all(sign > 0) and got.shape == (5,) and got.dtype == np.float64
        np.testing.assert_allclose(got, want, rtol=1e-12)
        # ∇ log det A = A⁻¹ (symmetric A)
        g = np.asarray(jax.grad(lambda M: slogdet(M))(jnp.asarray(A[0])))
        np.testing.assert_allclose(0.5 * (g + g.T), np.linalg.inv(A[0]), rtol=1e-9, atol=1e-12)


# ------------------------------------------------------------------ sample_mvnormal_canon


def test_sample_mvnormal_canon_has_the_right_mean_and_covariance():
    with jax.enable_x64(True):
        rng = np.random.default_rng(2)
        d, n = 3, 40000
        P = _spd(rng, d=d) / 3.0  # a precision matrix
        mu = rng.normal(size=d)
        keys = jax.random.split(jax.random.key(0), n)
        draws = np.asarray(jax.jit(jax.vmap(lambda k: sample_mvnormal_canon(k, jnp.asarray(mu), jnp.asarray(P))))(keys))
        assert draws.shape == (n, d) and draws.dtype == np.float64
        cov = np.linalg.inv(P)
        se = np.sqrt(np.diag(cov) / n)
        assert np.all(np.abs(draws.mean(0) - mu) < 5 * se)
        emp = np.cov(draws.T)
        # standard error of a covariance entry: √((Σᵢᵢ Σⱼⱼ + Σᵢⱼ²)/n); allow 5 of them
        tol = 5 * np.sqrt((np.outer(np.diag(cov), np.diag(cov)) + cov**2) / n)
        assert np.all(np.abs(emp - cov) < tol), (emp, cov)
        # the whitened residual Lᵀ(x − μ) (P = L Lᵀ) is standard normal
        L = np.linalg.cholesky(P)
        w = (draws - mu) @ L
        np.testing.assert_allclose(np.cov(w.T), np.eye(d), atol=0.05)


def test_sample_mvnormal_canon_batched():
    with jax.enable_x64(True):
        rng = np.random.default_rng(3)
        P = np.stack([_spd(rng, d=2), 4.0 * np.eye(2)])
        mu = np.array([[1.0, -1.0], [0.0, 2.0]])
        x = np.asarray(sample_mvnormal_canon(jax.random.key(1), jnp.asarray(mu), jnp.asarray(P)))
        assert x.shape == (2, 2)
        # for P = 4I the draw is μ + ε/2 with a standard normal ε: recover it and check it is plausible
        assert np.all(np.abs((x[1] - mu[1]) * 2.0) < 6.0)
        # and a huge precision pins the draw to μ
        tight = np.asarray(sample_mvnormal_canon(jax.random.key(2), jnp.asarray(mu), jnp.asarray(np.stack([1e12 * np.eye(2)] * 2))))
        np.testing.assert_allclose(tight, mu, atol=1e-4)


# --------------------------------------------------------------------------- cycle_anneal


def _cycle_reference(epoch, n_epoch, n_cycles, frac=0.5, beta_max=1.0, beta_min=0.0):
    # Fu et al. (2019) as the Julia package writes it: τ = ((epoch−1) mod ⌈N/M⌉) / (N/M)
    period = n_epoch / n_cycles
    tau = ((epoch - 1) % math.ceil(period)) / period
    return beta_min + (beta_max - beta_min) * tau / frac if tau <= frac else beta_max


def test_cycle_anneal_julia_values():
    # n_epoch = 10, 2 cycles of 5 epochs, frac = 0.5: τ = 0, .2, .4, .6, .8, 0, …
    # β = τ / 0.5 while τ ≤ 0.5, else 1: 0, 0.4, 0.8, 1, 1, 0, 0.4, 0.8, 1, 1
    got = [cycle_anneal(e, 10, 2) for e in range(1, 11)]
    np.testing.assert_allclose(got, [0, 0.4, 0.8, 1, 1, 0, 0.4, 0.8, 1, 1], rtol=1e-12, atol=1e-12)
    # the Julia package's own checks: epoch 1 → 0, epoch 3 → > 0, epoch 9 → 1
    assert cycle_anneal(1, 10, 2) == 0.0 and cycle_anneal(3, 10, 2) > 0 and cycle_anneal(9, 10, 2) == 1.0


@pytest.mark.parametrize("n_epoch, n_cycles, frac, bmax, bmin", [(10, 3, 0.5, 1.0, 0.0), (17, 4, 0.3, 2.0, 0.5), (6, 1, 1.0, 1.0, 0.1)])
def test_cycle_anneal_matches_reference(n_epoch, n_cycles, frac, bmax, bmin):
    got = [cycle_anneal(e, n_epoch, n_cycles, frac=frac, beta_max=bmax, beta_min=bmin) for e in range(1, n_epoch + 1)]
    want = [_cycle_reference(e, n_epoch, n_cycles, frac, bmax, bmin) for e in range(1, n_epoch + 1)]
    np.testing.assert_allclose(got, want, rtol=1e-12)
    assert min(got) == pytest.approx(bmin) and max(got) <= bmax + 1e-12


def test_cycle_anneal_bad_arguments():
    with pytest.raises(ValueError, match="frac"):
        cycle_anneal(1, 10, 2, frac=1.5)
    with pytest.raises(ValueError, match="epoch"):
        cycle_anneal(0, 10, 2)
    with pytest.raises(ValueError, match="n_cycles"):
        cycle_anneal(1, 10, 0)
    with pytest.raises(TypeError, match="epoch"):
        cycle_anneal(1.5, 10, 2)


def test_utils_are_exported():
    assert aet.utils.vec_to_ltri is vec_to_ltri and aet.utils.cycle_anneal is cycle_anneal
