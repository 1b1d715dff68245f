"""Disentanglement scores for data with known generative factors (pure NumPy, float64).

Inputs everywhere: ``codes`` ``(n, d)`` (e.g. the encoder's means on n examples)
and ``factors`` ``(n, K)`` (the known factors of the same examples).

**MIG**, the mutual information gap (Chen, Li, Grosse & Duvenaud 2018). Each code
dimension is discretised into ``n_bins`` equal-width bins over its observed range;
I(z_j; v_k) is the plug-in mutual information of the discretised code and the
factor (natural log), H(v_k) the factor's entropy, and

    MIG = (1/K) Σ_k [I(z_{j(1)}; v_k) − I(z_{j(2)}; v_k)] / H(v_k),

j(1), j(2) the codes with the largest and second-largest information about v_k.
It lies in [0, 1]: 1 when each factor is captured by one code alone. Factors are
taken as discrete labels; a factor with more than ``n_bins`` distinct values is
discretised like the codes. Constant factors (H = 0) are left out of the mean.
With one code dimension the second-largest information is taken as 0.

**SAP**, the separated attribute predictability (Kumar, Sattigeri & Balakrishnan 2018):
S[j, k] is the R² of a linear regression of v_k on z_j alone, i.e. the squared
correlation Cov(z_j, v_k)² / (Var z_j · Var v_k) (0 when either is constant), and

    SAP = (1/K) Σ_k [S_{(1)k} − S_{(2)k}],

the mean gap between the two most predictive codes (constant factors left out).
This is the paper's score for continuous factors, used here for every factor;
disentanglement_lib scores discrete factors with a classifier's accuracy instead.
"""
from __future__ import annotations

from typing import Any

import numpy as np

from .validation import check_int


def _as_pair(codes: Any, factors: Any) -> tuple[np.ndarray, np.ndarray]:
    z = np.asarray(codes, dtype=np.float64)
    v = np.asarray(factors)
    if z.ndim != 2:
        raise ValueError(f"`codes` must have shape (n, d), got {z.shape}")
    if v.ndim == 1:
        v = v[:, None]
    if v.ndim != 2:
        raise ValueError(f"`factors` must have shape (n, K), got {v.shape}")
    if len(z) != len(v) or len(z) < 2:
        raise ValueError(f"`codes` and `factors` need the same number (>= 2) of rows, got {len(z)} and {len(v)}")
    if not np.all(np.isfinite(z)):
        raise ValueError("`codes` contains NaN or inf values")
    return z, v


def discretize(a: np.ndarray, n_bins: int) -> np.ndarray:
    """Equal-width histogram bins 0..n_bins−1 of each column of ``a`` ``(n, m)`` over its range."""
    out = np.zeros(a.shape, dtype=np.int64)
    for j in range(a.shape[1]):
        edges = np.histogram_bin_edges(a[:, j], bins=n_bins)
        out[:, j] = np.digitize(a[:, j], edges[1:-1])
    return out


def _labels(v: np.ndarray, n_bins: int) -> np.ndarray:
    """Integer labels of each factor column (distinct values, or bins when there are > n_bins)."""
    out = np.zeros(v.shape, dtype=np.int64)
    for k in range(v.shape[1]):
        values, inverse = np.unique(v[:, k], return_inverse=True)
        if len(values) > n_bins and np.issubdtype(v.dtype, np.number):
            out[:, k] = discretize(v[:, k : k + 1].astype(np.float64), n_bins)[:, 0]
        else:
            out[:, k] = inverse
    return out


def entropy(labels: np.ndarray) -> float:
    """Plug-in entropy (nats) of integer ``labels`` ``(n,)``."""
    p = np.bincount(labels) / len(labels)
    p = p[p > 0]
    return float(-np.sum(p * np.log(p)))


def mutual_information(a: np.ndarray, b: np.ndarray) -> float:
    """Plug-in mutual information (nats) of two integer label vectors ``(n,)``."""
    nb = int(b.max()) + 1
    joint = np.bincount(a * nb + b, minlength=(int(a.max()) + 1) * nb).reshape(-1, nb) / len(a)
    pa, pb = joint.sum(axis=1, keepdims=True), joint.sum(axis=0, keepdims=True)
    mask = joint > 0
    return float(np.sum(joint[mask] * np.log(joint[mask] / (pa @ pb)[mask])))


def _top_two_gap(scores: np.ndarray) -> np.ndarray:
    """Per column of ``scores`` ``(d, K)``: the largest minus the second largest (0 if d = 1)."""
    s = np.sort(scores, axis=0)[::-1]
    return s[0] - (s[1] if len(s) > 1 else 0.0)


def mig(codes: Any, factors: Any, n_bins: int = 20) -> float:
    """Mutual information gap in [0, 1] (see the module docstring).

    Args:
        codes: ``(n, d)`` codes.
        factors: ``(n, K)`` (or ``(n,)``) known factors, discrete labels or values.
        n_bins: ≥ 2 equal-width bins per code dimension.

    Returns:
        The MIG, a float.
    """
    check_int(n_bins, "n_bins", minimum=2)
    z, v = _as_pair(codes, factors)
    zd, vd = discretize(z, n_bins), _labels(v, n_bins)
    h = np.array([entropy(vd[:, k]) for k in range(vd.shape[1])])
    keep = h > 0
    if not np.any(keep):
        raise ValueError("every factor in `factors` is constant: MIG is undefined")
    mi = np.array([[mutual_information(zd[:, j], vd[:, k]) for k in range(vd.shape[1])] for j in range(z.shape[1])])
    return float(np.mean(_top_two_gap(mi[:, keep]) / h[keep]))


def sap(codes: Any, factors: Any) -> float:
    """Separated attribute predictability in [0, 1] (see the module docstring).

    Args:
        codes: ``(n, d)`` codes.
        factors: ``(n, K)`` (or ``(n,)``) known factors (numbers).

    Returns:
        The SAP score, a float.
    """
    z, v = _as_pair(codes, factors)
    v = v.astype(np.float64)
    zc, vc = z - z.mean(axis=0), v - v.mean(axis=0)
    var_z, var_v = np.mean(zc**2, axis=0), np.mean(vc**2, axis=0)
    keep = var_v > 0
    if not np.any(keep):
        raise ValueError("every factor in `factors` is constant: SAP is undefined")
    cov = zc.T @ vc / len(z)  # (d, K)
    denom = np.outer(var_z, var_v)
    r2 = np.divide(cov**2, denom, out=np.zeros_like(cov), where=denom > 0)
    return float(np.mean(_top_two_gap(r2[:, keep])))


__all__ = ["discretize", "entropy", "mig", "mutual_information", "sap"]
