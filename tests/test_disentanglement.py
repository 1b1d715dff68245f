"""Tests of the MIG and SAP scores (aet.disentanglement) on synthetic data whose factors are
known: exact values on balanced designs, near 1 for codes disentangled by construction,
near 0 for rotated (entangled) codes, and the plug-in information against scikit-learn."""
from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
from sklearn.metrics import mutual_info_score

from aetk_jax import disentanglement as dis


def factorial(levels=(5, 4, 3), repeats=40):
    """Every combination of the factor values equally often: factors independent exactly."""
    grid = np.array(list(itertools.product(*[range(m) for m in levels])))
    return np.repeat(grid, repeats, axis=0)


def test_information_matches_sklearn(rng):
    a, b = rng.integers(0, 6, 500), rng.integers(0, 4, 500)
    b = (b + a) % 4  # dependent
    assert abs(dis.mutual_information(a, b) - mutual_info_score(a, b)) < 1e-12
    p = np.bincount(a) / 500
    assert abs(dis.entropy(a) + np.sum(p * np.log(p))) < 1e-12


def test_exact_values_on_balanced_designs():
    v = factorial()
    # codes equal to the factors: I(z_j; v_k) = 0 exactly off the diagonal → MIG = SAP = 1
    assert abs(dis.mig(v.astype(float), v) - 1.0) < 1e-12
    assert abs(dis.sap(v.astype(float), v) - 1.0) < 1e-12
    # every code a copy of factor 0: no gap for factor 0 (two equal MIs), none for the others (0 and 0)
    z = np.repeat(v[:, :1].astype(float), 3, axis=1)
    assert abs(dis.mig(z, v)) < 1e-12 and abs(dis.sap(z, v)) < 1e-12
    # half the factors captured: factor 0 by code 0 alone (gap 1), factors 1, 2 by nothing
    z = np.stack([v[:, 0], v[:, 0] * 0.0 + 1.0], axis=1).astype(float)
    assert abs(dis.mig(z, v) - 1.0 / 3.0) < 1e-12 and abs(dis.sap(z, v) - 1.0 / 3.0) < 1e-12


def noisy_codes(rng, v, mixing, noise=0.05):
    """Standardised factors mixed by ``mixing`` (d × K) plus Gaussian noise."""
    s = (v - v.mean(axis=0)) / v.std(axis=0)
    return s @ mixing.T + noise * rng.normal(size=(len(v), mixing.shape[0]))


def test_disentangled_codes_score_near_one(rng):
    v = factorial()
    z = noisy_codes(rng, v, np.eye(3))  # each code a noisy copy of one factor
    # measured: MIG 0.996, SAP 0.9975 (the R² of a standardised copy with noise sd 0.05 is
    # 1/1.0025 = 0.9975); the margins below are 5x the measured shortfall from 1 for MIG
    m, s = dis.mig(z, v), dis.sap(z, v)
    assert m > 0.98 and s > 0.99, (m, s)
    # more noise lowers the scores
    assert dis.mig(noisy_codes(rng, v, np.eye(3), noise=0.5), v) < m


def test_entangled_codes_score_near_zero(rng):
    v = factorial((5, 4, 3, 2), repeats=20)
    # a Hadamard rotation: every code is (±v0 ± v1 ± v2 ± v3)/2, so (the standardised factors
    # being symmetric) every code carries the same information about every factor
    h = np.array([[1, 1, 1, 1], [1, -1, 1, -1], [1, 1, -1, -1], [1, -1, -1, 1]]) / 2.0
    m, s = dis.mig(noisy_codes(rng, v, h), v), dis.sap(noisy_codes(rng, v, h), v)
    # measured: MIG 0.002, SAP 0.0004 (sampling noise of the plug-in estimates only)
    assert m < 0.05 and s < 0.05, (m, s)
    v = factorial()
    r = np.array([[1.0, 1.0, 0.0], [1.0, -1.0, 0.0], [0.0, 0.0, math.sqrt(2.0)]]) / math.sqrt(2.0)
    z = noisy_codes(rng, v, r)  # factors 0, 1 mixed at 45°, factor 2 kept: about 1/3
    m, s = dis.mig(z, v), dis.sap(z, v)
    # measured: MIG 0.337, SAP 0.333 (factor 2 scores 1, factors 0 and 1 score 0: exactly 1/3)
    assert abs(m - 1 / 3) < 0.05 and abs(s - 1 / 3) < 0.05, (m, s)


def test_bad_arguments():
    v = factorial()
    with pytest.raises(ValueError, match="n_bins"):
        dis.mig(v.astype(float), v, n_bins=1)
    with pytest.raises(ValueError, match="codes"):
        dis.mig(v[:, 0].astype(float), v)
    with pytest.raises(ValueError, match="codes"):
        dis.sap(v[:10].astype(float), v)
    with pytest.raises(ValueError, match="factors"):
        dis.sap(v.astype(float), np.zeros((len(v), 2)))
    with pytest.raises(ValueError, match="codes"):
        dis.mig(np.full((len(v), 3), np.nan), v)


def test_public_names_of_the_second_zoo():
    import aetk_jax as aet
    from aetk_jax import betatcvae, disentanglement, rae, wae

    assert aet.evaluate.mig is disentanglement.mig and aet.evaluate.sap is disentanglement.sap
    assert (aet.BetaTCVAE, aet.WAE, aet.RAE_L2, aet.RAE_GP) == (betatcvae.BetaTCVAE, wae.WAE, rae.RAE_L2, rae.RAE_GP)
