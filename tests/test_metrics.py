"""The math of evaluation against independent oracles: pytorch-fid's scipy formula, closed forms for Gaussians,
brute-force k-NN precision/recall/density/coverage, brute-force KID and Inception Score."""
from __future__ import annotations

import itertools

import numpy as np
import pytest
import scipy.linalg
import torch

from diffprune.evaluation import (
    EvaluationError,
    fid_from_features,
    frechet_distance,
    frechet_distance_to_features,
    gaussian_stats,
    prdc,
)
from diffprune.evaluation.metrics import torchmetrics_fid, torchmetrics_inception_score, torchmetrics_kid


def pytorch_fid_formula(mu1, sigma1, mu2, sigma2, eps=1e-6):
    """Copied from pytorch-fid (mseitzer/pytorch-fid, src/pytorch_fid/fid_score.py: calculate_frechet_distance)."""
    mu1, mu2 = np.atleast_1d(mu1), np.atleast_1d(mu2)
    sigma1, sigma2 = np.atleast_2d(sigma1), np.atleast_2d(sigma2)
    diff = mu1 - mu2
    covmean = scipy.linalg.sqrtm(sigma1.dot(sigma2))
    covmean = covmean[0] if isinstance(covmean, tuple) else covmean
    if not np.isfinite(covmean).all():
        offset = np.eye(sigma1.shape[0]) * eps
        covmean = scipy.linalg.sqrtm((sigma1 + offset).dot(sigma2 + offset))
    if np.iscomplexobj(covmean):
        assert np.allclose(np.diagonal(covmean).imag, 0, atol=1e-3)
        covmean = covmean.real
    return diff.dot(diff) + np.trace(sigma1) + np.trace(sigma2) - 2 * np.trace(covmean)


def random_stats(rng, d, n):
    a = rng.normal(size=(n, d)) @ rng.normal(size=(d, d)) + rng.normal(size=d)
    return a.mean(0), np.cov(a, rowvar=False)


@pytest.mark.parametrize("method", ["eigh", "sqrtm"])
@pytest.mark.parametrize("seed,d", [(0, 8), (1, 64), (2, 128)])
def test_frechet_equals_pytorch_fid_formula(method, seed, d):
    rng = np.random.default_rng(seed)
    mu1, s1 = random_stats(rng, d, 3 * d)
    mu2, s2 = random_stats(rng, d, 3 * d)
    ours = frechet_distance(mu1, s1, mu2, s2, method=method)
    assert ours == pytest.approx(pytorch_fid_formula(mu1, s1, mu2, s2), rel=1e-6)
    assert ours > 1.0  # different Gaussians: a clearly positive distance


def test_frechet_closed_form_diagonal_gaussians():
    # For diagonal (and, generally, commuting) covariances: d^2 = |mu1-mu2|^2 + sum (sqrt(a_i) - sqrt(b_i))^2.
    mu1, mu2 = np.array([0.0, 1.0, -2.0]), np.array([3.0, 1.0, 2.0])
    a, b = np.array([1.0, 4.0, 9.0]), np.array([4.0, 4.0, 1.0])
    expected = 9 + 0 + 16 + (1 - 2) ** 2 + 0 + (3 - 1) ** 2
    assert frechet_distance(mu1, np.diag(a), mu2, np.diag(b)) == pytest.approx(expected, rel=1e-12)
    q, _ = np.linalg.qr(np.random.default_rng(0).normal(size=(3, 3)))  # rotate both: distance unchanged
    assert frechet_distance(q @ mu1, q @ np.diag(a) @ q.T, q @ mu2, q @ np.diag(b) @ q.T) == pytest.approx(
        expected, rel=1e-10)


def test_frechet_one_dimensional():
    assert frechet_distance(np.array([1.0]), np.array([[4.0]]), np.array([0.0]), np.array([[1.0]])) == pytest.approx(2.0)


def test_fid_of_a_set_against_itself_is_zero_and_of_shifted_set_is_the_shift():
    x = np.random.default_rng(0).normal(size=(300, 16))
    assert abs(fid_from_features(x, x)) < 1e-9
    shift = np.zeros(16)
    shift[3] = 2.5
    assert fid_from_features(x, x + shift) == pytest.approx(2.5**2, rel=1e-9)


def test_rank_deficient_covariances_match_torchmetrics_eigvals_formula():
    # Fewer images than dimensions (as in class-wise FID with 2048-d features): eigh stays real and agrees with
    # torchmetrics' independent eigvals-of-product implementation.
    from torchmetrics.image.fid import _compute_fid

    rng = np.random.default_rng(3)
    a, b = rng.normal(size=(20, 64)), rng.normal(size=(25, 64)) + 0.3
    (mu1, s1), (mu2, s2) = gaussian_stats(a), gaussian_stats(b)
    tm = float(_compute_fid(*(torch.as_tensor(v) for v in (mu1, s1, mu2, s2))))
    assert frechet_distance(mu1, s1, mu2, s2) == pytest.approx(tm, rel=1e-6)


@pytest.mark.parametrize("n", [10, 63, 64, 65, 200])
def test_low_rank_route_equals_the_full_eigendecomposition(n):
    # N - 1 < D uses an N x N eigenproblem; it must give the D x D result (and the switch point must be right).
    # rel 1e-7: in the D x D route, the ~D - N zero eigenvalues come out as +-1e-14 whose square roots add ~1e-7
    # each; the N x N route has no such round-off, so the two differ slightly when N << D.
    rng = np.random.default_rng(n)
    real, fake = rng.normal(size=(300, 64)), rng.normal(size=(n, 64)) * 0.8 + 0.1
    mu1, s1 = gaussian_stats(real)
    mu2, s2 = gaussian_stats(fake)
    assert frechet_distance_to_features(mu1, s1, fake) == pytest.approx(frechet_distance(mu1, s1, mu2, s2), rel=1e-7)
    assert fid_from_features(real, fake) == pytest.approx(pytorch_fid_formula(mu1, s1, mu2, s2), rel=1e-6)


def test_gaussian_stats_matches_numpy():
    x = np.random.default_rng(1).normal(size=(50, 4))
    mu, sigma = gaussian_stats(x)
    np.testing.assert_allclose(mu, x.mean(0))
    np.testing.assert_allclose(sigma, (x - x.mean(0)).T @ (x - x.mean(0)) / 49)


def test_torchmetrics_fid_from_cached_statistics_equals_fid_from_features():
    rng = np.random.default_rng(4)
    real, fake = rng.normal(size=(120, 10)), rng.normal(size=(90, 10)) * 1.3 + 0.2
    mu, sigma = gaussian_stats(real)
    assert torchmetrics_fid((mu, sigma, len(real)), fake) == pytest.approx(fid_from_features(real, fake), rel=1e-6)


def test_bad_shapes_raise_clear_errors():
    with pytest.raises(EvaluationError, match="same feature network"):
        frechet_distance(np.zeros(3), np.eye(3), np.zeros(4), np.eye(4))
    with pytest.raises(EvaluationError, match="extract both with the same network"):
        fid_from_features(np.zeros((5, 3)), np.zeros((5, 4)))
    with pytest.raises(EvaluationError, match="at least 2"):
        fid_from_features(np.zeros((1, 3)), np.zeros((5, 3)))
    with pytest.raises(EvaluationError, match="NaN"):
        fid_from_features(np.full((4, 3), np.nan), np.zeros((5, 3)))


# ------------------------------------------------------------------ precision / recall / density / coverage
def brute_force_prdc(real, fake, k):
    """Naeem et al. 2020, written with explicit loops over points."""
    def dist(a, b):
        return float(np.sqrt(((a - b) ** 2).sum()))

    def radius(points, i):
        return sorted(dist(points[i], p) for p in points)[k]  # index 0 is the point itself

    r_real = [radius(real, i) for i in range(len(real))]
    r_fake = [radius(fake, j) for j in range(len(fake))]
    precision = np.mean([any(dist(real[i], y) < r_real[i] for i in range(len(real))) for y in fake])
    recall = np.mean([any(dist(x, fake[j]) < r_fake[j] for j in range(len(fake))) for x in real])
    density = np.mean([sum(dist(real[i], y) < r_real[i] for i in range(len(real))) for y in fake]) / k
    coverage = np.mean([min(dist(real[i], y) for y in fake) < r_real[i] for i in range(len(real))])
    return precision, recall, density, coverage


@pytest.mark.parametrize("k,chunk,seed", [(5, 1024, 0), (3, 7, 1), (1, 4, 2)])
def test_prdc_equals_brute_force(k, chunk, seed):
    rng = np.random.default_rng(seed)
    real = rng.normal(size=(40, 5))
    fake = rng.normal(size=(33, 5)) * 1.4 + 0.5
    got = prdc(real, fake, k=k, chunk=chunk)
    want = brute_force_prdc(real, fake, k)
    for name, w in zip(("precision", "recall", "density", "coverage"), want):
        assert got[name] == pytest.approx(w, abs=1e-12), name
    assert 0 < got["precision"] < 1 and 0 < got["coverage"] < 1  # the case is not degenerate


def test_prdc_of_identical_sets_and_of_far_sets():
    x = np.random.default_rng(0).normal(size=(30, 4))
    same = prdc(x, x, k=5)
    assert same["precision"] == 1 and same["recall"] == 1 and same["coverage"] == 1
    far = prdc(x, x + 100.0, k=5)
    assert far["precision"] == 0 and far["recall"] == 0 and far["density"] == 0 and far["coverage"] == 0


def test_prdc_needs_more_points_than_k():
    with pytest.raises(EvaluationError, match="more than 5"):
        prdc(np.zeros((5, 2)), np.zeros((10, 2)), k=5)


# ------------------------------------------------------------------ KID and Inception Score
def test_kid_equals_brute_force_unbiased_mmd_when_the_subset_is_the_whole_set():
    rng = np.random.default_rng(5)
    x, y = rng.normal(size=(12, 6)), rng.normal(size=(12, 6)) + 0.4
    d = x.shape[1]

    def kern(a, b):
        return (a @ b / d + 1.0) ** 3

    m = len(x)
    kxx = sum(kern(x[i], x[j]) for i, j in itertools.permutations(range(m), 2)) / (m * (m - 1))
    kyy = sum(kern(y[i], y[j]) for i, j in itertools.permutations(range(m), 2)) / (m * (m - 1))
    kxy = sum(kern(x[i], y[j]) for i in range(m) for j in range(m)) / (m * m)
    got = torchmetrics_kid(x, y, subsets=3, subset_size=m, seed=0)
    assert got["value"] == pytest.approx(kxx + kyy - 2 * kxy, rel=1e-9)
    assert got["subset_size"] == m


def test_kid_caps_subset_size_and_is_reproducible():
    rng = np.random.default_rng(6)
    x, y = rng.normal(size=(30, 4)), rng.normal(size=(20, 4))
    a = torchmetrics_kid(x, y, subsets=5, subset_size=1000, seed=1)
    b = torchmetrics_kid(x, y, subsets=5, subset_size=1000, seed=1)
    assert a == b and a["subset_size"] == 20


@pytest.mark.filterwarnings(r"ignore:std\(\)")
def test_inception_score_equals_formula_with_one_split():
    logits = np.random.default_rng(7).normal(size=(40, 5)) * 3
    p = np.exp(logits - logits.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    marginal = p.mean(0)
    expected = np.exp(np.mean((p * (np.log(p) - np.log(marginal))).sum(1)))
    assert torchmetrics_inception_score(logits, splits=1)["value"] == pytest.approx(expected, rel=1e-9)
