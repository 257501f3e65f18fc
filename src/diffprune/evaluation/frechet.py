"""The Frechet distance between two Gaussians fitted to feature sets (FID when the features are Inception's).

``d^2 = ||mu1 - mu2||^2 + Tr(S1) + Tr(S2) - 2 Tr((S1 S2)^{1/2})``.

pytorch-fid computes ``Tr((S1 S2)^{1/2})`` with ``scipy.linalg.sqrtm`` of the non-symmetric product (a Schur
decomposition that can return complex noise and needs an ``eps`` retry). ``S1 S2`` is similar to the symmetric
PSD matrix ``S1^{1/2} S2 S1^{1/2}``, so the same trace is the sum of square roots of that matrix's eigenvalues:
two symmetric eigendecompositions, real by construction, and several times faster for D = 2048
(``benchmarks/bench_fid.py`` measures both). ``method="sqrtm"`` keeps pytorch-fid's exact route.
"""
from __future__ import annotations

from typing import Literal

import numpy as np
import scipy.linalg

from diffprune.evaluation.errors import EvaluationError

FrechetMethod = Literal["eigh", "sqrtm"]


def gaussian_stats(features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean (D,) and unbiased covariance (D x D) of an N x D feature array, in float64 (pytorch-fid's convention)."""
    feats = _as_features(features, "features")
    if len(feats) < 2:
        raise EvaluationError(f"need at least 2 feature vectors to estimate a covariance, got {len(feats)}")
    mu = feats.mean(axis=0)
    sigma = np.cov(feats, rowvar=False)
    return mu, np.atleast_2d(sigma)


def frechet_distance(
    mu1: np.ndarray,
    sigma1: np.ndarray,
    mu2: np.ndarray,
    sigma2: np.ndarray,
    *,
    method: FrechetMethod = "eigh",
    eps: float = 1e-6,
) -> float:
    """Squared Frechet distance between N(mu1, sigma1) and N(mu2, sigma2).

    Args:
        mu1, mu2: means, shape (D,).
        sigma1, sigma2: covariances, shape (D, D), symmetric positive semi-definite.
        method: ``"eigh"`` (default, symmetric eigendecompositions) or ``"sqrtm"`` (pytorch-fid's exact code path).
        eps: diagonal offset used by ``"sqrtm"`` when the product's square root is not finite (as pytorch-fid).

    Returns:
        The distance as a Python float (FID units when the features are the FID Inception's pool3).
    """
    mu1, mu2 = np.atleast_1d(np.asarray(mu1, np.float64)), np.atleast_1d(np.asarray(mu2, np.float64))
    sigma1, sigma2 = np.atleast_2d(np.asarray(sigma1, np.float64)), np.atleast_2d(np.asarray(sigma2, np.float64))
    d = mu1.shape[0]
    for name, arr, shape in (("mu2", mu2, (d,)), ("sigma1", sigma1, (d, d)), ("sigma2", sigma2, (d, d))):
        if arr.shape != shape:
            raise EvaluationError(
                f"{name} has shape {arr.shape} but mu1 has {d} entries, so {shape} was expected; "
                "both statistics must come from the same feature network"
            )
    diff = mu1 - mu2
    if method == "eigh":
        tr_covmean = _trace_sqrt_product_eigh(sigma1, sigma2)
    elif method == "sqrtm":
        tr_covmean = _trace_sqrt_product_sqrtm(sigma1, sigma2, eps)
    else:
        raise EvaluationError(f"method must be 'eigh' or 'sqrtm', got {method!r}")
    return float(diff.dot(diff) + np.trace(sigma1) + np.trace(sigma2) - 2.0 * tr_covmean)


def fid_from_features(real: np.ndarray, fake: np.ndarray, *, method: FrechetMethod = "eigh") -> float:
    """Frechet distance between Gaussians fitted to two N x D feature arrays (rows are images)."""
    real_f, fake_f = _as_features(real, "real"), _as_features(fake, "fake")
    if real_f.shape[1] != fake_f.shape[1]:
        raise EvaluationError(
            f"real features are {real_f.shape[1]}-d but fake features are {fake_f.shape[1]}-d; "
            "extract both with the same network"
        )
    mu1, s1 = gaussian_stats(real_f)
    if method == "eigh":
        return frechet_distance_to_features(mu1, s1, fake_f)
    mu2, s2 = gaussian_stats(fake_f)
    return frechet_distance(mu1, s1, mu2, s2, method=method)


def frechet_distance_to_features(mu1: np.ndarray, sigma1: np.ndarray, features: np.ndarray) -> float:
    """Frechet distance between N(mu1, sigma1) and the Gaussian fitted to ``features`` (N x D).

    When N - 1 < D (fewer generated images than feature dimensions, e.g. 1,000 samples with 2,048-d Inception
    features, or any class-wise FID) the fitted covariance is ``X^T X`` with the centred, scaled N x D matrix X,
    and ``Tr((S1 X^T X)^{1/2}) = sum sqrt(eig(X S1 X^T))``: an N x N eigenproblem instead of two D x D ones.
    Otherwise this is ``frechet_distance`` with the fitted statistics.
    """
    feats = _as_features(features, "features")
    mu1, sigma1 = np.asarray(mu1, np.float64), np.asarray(sigma1, np.float64)
    n, d = feats.shape
    if d != mu1.shape[0] or sigma1.shape != (d, d):
        raise EvaluationError(f"features are {d}-d but the statistics are {mu1.shape[0]}-d; use the same network")
    mu2, sigma2 = gaussian_stats(feats)
    if n - 1 >= d:
        return frechet_distance(mu1, sigma1, mu2, sigma2)
    x = (feats - mu2) / np.sqrt(n - 1)
    m = x @ ((sigma1 + sigma1.T) / 2) @ x.T
    tr_covmean = float(np.sqrt(np.clip(np.linalg.eigvalsh((m + m.T) / 2), 0.0, None)).sum())
    diff = mu1 - mu2
    return float(diff.dot(diff) + np.trace(sigma1) + np.trace(sigma2) - 2.0 * tr_covmean)


def _trace_sqrt_product_eigh(sigma1: np.ndarray, sigma2: np.ndarray) -> float:
    """Tr((S1 S2)^{1/2}) = sum sqrt(eig(S1^{1/2} S2 S1^{1/2})); tiny negative eigenvalues (round-off) count as 0."""
    s1 = (sigma1 + sigma1.T) / 2
    s2 = (sigma2 + sigma2.T) / 2
    w, v = np.linalg.eigh(s1)
    sqrt_s1 = (v * np.sqrt(np.clip(w, 0.0, None))) @ v.T
    m = sqrt_s1 @ s2 @ sqrt_s1
    lam = np.linalg.eigvalsh((m + m.T) / 2)
    return float(np.sqrt(np.clip(lam, 0.0, None)).sum())


def _trace_sqrt_product_sqrtm(sigma1: np.ndarray, sigma2: np.ndarray, eps: float) -> float:
    covmean = _sqrtm(sigma1.dot(sigma2))
    if not np.isfinite(covmean).all():
        offset = np.eye(sigma1.shape[0]) * eps
        covmean = _sqrtm((sigma1 + offset).dot(sigma2 + offset))
    if np.iscomplexobj(covmean):
        if not np.allclose(np.diagonal(covmean).imag, 0, atol=1e-3):
            m = float(np.max(np.abs(covmean.imag)))
            raise EvaluationError(
                f"the matrix square root has an imaginary component of {m:.3g}; use method='eigh', "
                "which is stable for rank-deficient covariances (fewer images than feature dimensions)"
            )
        covmean = covmean.real
    return float(np.trace(covmean))


def _sqrtm(a: np.ndarray) -> np.ndarray:
    out = scipy.linalg.sqrtm(a)
    return out[0] if isinstance(out, tuple) else out


def _as_features(x: np.ndarray, name: str) -> np.ndarray:
    arr = np.asarray(x, dtype=np.float64)
    if arr.ndim != 2:
        raise EvaluationError(f"{name} features must be a 2-d N x D array, got shape {arr.shape}")
    if not np.isfinite(arr).all():
        raise EvaluationError(f"{name} features contain NaN or inf; check the images and the feature network")
    return arr
