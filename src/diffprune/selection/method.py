"""The contract of a selection criterion, below the methods and the registry that lists them.

A method scores the rows of ONE group (a class, a k-means cluster, or the whole set):

    fn(x: float array n x d, *, budget: int | None, rng: np.random.Generator, device: torch.device, **opts)
        -> float64 array of n scores, higher = keep first

Ranking methods (gaussian, knn, ...) ignore ``budget``. Sequential methods (kcenter, herding) build the
subset greedily, so their scores depend on the budget: the i-th pick of m gets ``m - i + 1`` (>= 1) and the
rest get a value in [0, 1), so "top m" is exactly the greedy subset.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np

ScoreFn = Callable[..., np.ndarray]


@dataclass(frozen=True)
class Method:
    name: str
    fn: ScoreFn
    description: str
    sequential: bool = False  # greedy subset construction: needs a budget, supports keep="top" only
    full_covariance: bool = False  # fits a d x d covariance: groups with n <= d are regularised (warned)


def greedy_order_scores(order: np.ndarray, n: int, rest: np.ndarray | None = None) -> np.ndarray:
    """Scores for a greedy pick order: i-th pick of m -> m - i + 1; others -> ``rest`` scaled into [0, 1)."""
    scores = np.zeros(n, dtype=np.float64)
    if rest is not None and n > len(order):
        rest = np.asarray(rest, dtype=np.float64)
        lo, hi = rest.min(), rest.max()
        scores[:] = 0.0 if hi <= lo else 0.999 * (rest - lo) / (hi - lo)
    m = len(order)
    scores[order] = np.arange(m, 0, -1, dtype=np.float64)
    return scores
