"""Metrics computed from features that were extracted once: torchmetrics' FID, KID and Inception Score.

torchmetrics' metrics run their own network inside ``update``. Here they receive a pass-through module, so they
accumulate features we already have: the FID Inception runs once per image set, and the cached real statistics
(mu, sigma, count) are loaded into the FID state instead of re-embedding the reference set for every arm.
Every process already holds all features (gathered by ``extract_features``), so the metrics compute locally
(``sync_on_compute=False``): torchmetrics' default all-reduce would count each image once per process.
"""
from __future__ import annotations

import warnings

import numpy as np
import torch
from torchmetrics.image.fid import FrechetInceptionDistance
from torchmetrics.image.inception import InceptionScore
from torchmetrics.image.kid import KernelInceptionDistance

from diffprune.evaluation.errors import EvaluationError
from diffprune.evaluation.frechet import frechet_distance_to_features


class PrecomputedFeatures(torch.nn.Module):
    """Identity ``feature`` module for torchmetrics: ``update(features, ...)`` stores the given N x D rows."""

    def __init__(self, num_features: int) -> None:
        super().__init__()
        self.num_features = int(num_features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x


def torchmetrics_fid(
    real_stats: tuple[np.ndarray, np.ndarray, int], fake_features: np.ndarray
) -> float:
    """FID by ``torchmetrics.image.fid.FrechetInceptionDistance`` (float64 sums, eigenvalue square root).

    ``real_stats`` = (mu (D,), sigma (D x D), count): the real state is rebuilt from cached statistics exactly
    (sum = count * mu, sum of outer products = (count - 1) * sigma + count * mu mu^T).
    """
    mu, sigma, count = real_stats
    d = mu.shape[0]
    if fake_features.shape[1] != d:
        raise EvaluationError(f"fake features are {fake_features.shape[1]}-d but real statistics are {d}-d")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        metric = FrechetInceptionDistance(feature=PrecomputedFeatures(d), reset_real_features=False,
                                          sync_on_compute=False)
    mu_t = torch.as_tensor(mu, dtype=torch.float64)
    metric.real_features_sum = mu_t * count
    metric.real_features_cov_sum = torch.as_tensor(sigma, dtype=torch.float64) * (count - 1) + count * torch.outer(
        mu_t, mu_t
    )
    metric.real_features_num_samples = torch.tensor(int(count), dtype=torch.long)
    metric.update(torch.as_tensor(fake_features, dtype=torch.float64), real=False)
    return float(metric.compute())


def torchmetrics_kid(
    real_features: np.ndarray, fake_features: np.ndarray, subsets: int = 100, subset_size: int = 1000, seed: int = 0
) -> dict[str, float | int]:
    """KID (polynomial-kernel MMD^2, unbiased) by torchmetrics, mean and std over random subsets.

    ``subset_size`` is capped at the smaller set's size (torchmetrics would raise), and the subsets are drawn from
    a seeded generator so the value is reproducible.
    """
    size = int(min(subset_size, len(real_features), len(fake_features)))
    if size < 2:
        raise EvaluationError("KID needs at least 2 real and 2 generated images")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        metric = KernelInceptionDistance(
            feature=PrecomputedFeatures(real_features.shape[1]), subsets=subsets, subset_size=size,
            sync_on_compute=False,
        )
    metric.update(torch.as_tensor(real_features, dtype=torch.float64), real=True)
    metric.update(torch.as_tensor(fake_features, dtype=torch.float64), real=False)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        mean, std = metric.compute()
    return {"value": float(mean), "std": float(std), "subsets": int(subsets), "subset_size": size}


def torchmetrics_inception_score(logits: np.ndarray, splits: int = 10, seed: int = 0) -> dict[str, float | int]:
    """Inception Score (exp E KL(p(y|x) || p(y))) by torchmetrics from N x K classifier logits."""
    if len(logits) < splits:
        raise EvaluationError(f"the Inception Score with {splits} splits needs at least {splits} images")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        metric = InceptionScore(feature=PrecomputedFeatures(logits.shape[1]), splits=splits, sync_on_compute=False)
    metric.update(torch.as_tensor(logits, dtype=torch.float64))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        mean, std = metric.compute()
    return {"value": float(mean), "std": float(std), "splits": int(splits)}


IMPLEMENTATIONS = {
    "torchmetrics": "torchmetrics.image.fid.FrechetInceptionDistance (float64 state, eigvals of S1 S2)",
    "diffprune": "diffprune.evaluation.frechet (symmetric eigendecomposition; N x N route when N <= D)",
}


def fid_with_check(
    real_stats: tuple[np.ndarray, np.ndarray, int],
    fake_features: np.ndarray,
    cross_check: bool = True,
    backend: str = "torchmetrics",
) -> dict[str, object]:
    """FID by ``backend`` and, with ``cross_check``, the other implementation's value and the difference."""
    def compute(name: str) -> float:
        if name == "torchmetrics":
            return torchmetrics_fid(real_stats, fake_features)
        return frechet_distance_to_features(real_stats[0], real_stats[1], fake_features)

    value = compute(backend)
    out: dict[str, object] = {"value": value, "implementation": IMPLEMENTATIONS[backend]}
    if cross_check:
        other = "diffprune" if backend == "torchmetrics" else "torchmetrics"
        check = compute(other)
        out["check"] = {"implementation": IMPLEMENTATIONS[other], "value": check, "abs_diff": abs(check - value)}
    return out
