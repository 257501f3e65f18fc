"""How far a quality metric can be trusted: its floor and its evaluation noise, to set beside a tolerance.

- **Floor**: the metric between two disjoint sets of real images of the evaluated sizes (``n_eval`` images in
  place of the samples, ``n_ref`` as the reference): what a perfect generator would score at this sample count.
  A Frechet distance of finite samples is biased upwards, so a gap to the full arm smaller than the floor's
  spread is not a measured difference.
- **Evaluation noise**: the spread of the metric over several sample seeds at one checkpoint (the same model),
  i.e. how much two evaluations of the same weights disagree. A tolerance (e.g. 5% of the full arm's value) is
  only meaningful if it is well above this.
"""
from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from diffprune.evaluation.errors import EvaluationError
from diffprune.evaluation.frechet import fid_from_features


def disjoint_subsets(n_total: int, sizes: Sequence[int], seed: int) -> list[np.ndarray]:
    """Disjoint random index sets of the given sizes from ``range(n_total)`` (sorted within each set)."""
    if sum(sizes) > n_total:
        raise EvaluationError(f"disjoint sets of {' + '.join(map(str, sizes))} images need {sum(sizes)} real images, "
                              f"only {n_total} given; lower the evaluated size or use more real images")
    order = np.random.default_rng(seed).permutation(n_total)
    bounds = np.cumsum([0, *sizes])
    return [np.sort(order[lo:hi]) for lo, hi in zip(bounds[:-1], bounds[1:])]


def frechet_floor(real_features: np.ndarray, n_eval: int, n_ref: int, *, draws: int = 3,
                  seed: int = 0) -> dict[str, Any]:
    """The Frechet distance between disjoint real sets of ``n_eval`` and ``n_ref`` features, over ``draws``
    independent splits: ``{"values": [...], "mean", "std", "n_eval", "n_ref"}`` (std: sample std, 0 for one)."""
    values = []
    for d in range(draws):
        a, b = disjoint_subsets(len(real_features), (n_eval, n_ref), seed + d)
        values.append(fid_from_features(real_features[b], real_features[a]))
    return {**spread(values), "n_eval": int(n_eval), "n_ref": int(n_ref)}


def spread(values: Sequence[float]) -> dict[str, Any]:
    """Mean, sample standard deviation, range and relative std (std / |mean|) of ``values``."""
    vals = [float(v) for v in values]
    if not vals:
        raise EvaluationError("no values to summarise")
    mean = sum(vals) / len(vals)
    std = math.sqrt(sum((v - mean) ** 2 for v in vals) / (len(vals) - 1)) if len(vals) > 1 else 0.0
    return {"values": vals, "mean": mean, "std": std, "range": max(vals) - min(vals),
            "relative_std": std / abs(mean) if mean else math.inf}


def evaluation_noise(evaluate_with_seed: Callable[[int], Mapping[str, Any]], metrics: Sequence[str],
                     seeds: Sequence[int] = (0, 1, 2)) -> dict[str, dict[str, Any]]:
    """Each metric's spread over evaluations of one checkpoint with different sample seeds.

    ``evaluate_with_seed(seed)`` samples the model with that seed and returns the metric values (e.g. a
    ``TrainingEvaluator`` built with ``train.eval.seed = seed``, called on the final EMA model)."""
    if len(seeds) < 2:
        raise EvaluationError("the evaluation noise needs at least 2 sample seeds (3 recommended)")
    runs = [evaluate_with_seed(s) for s in seeds]
    return {m: {**spread([r[m] for r in runs]), "seeds": list(seeds)} for m in metrics
            if all(r.get(m) is not None for r in runs)}


def tolerance_check(floor: Mapping[str, Any] | None, noise: Mapping[str, Any] | None, target_value: float,
                    tolerance: float) -> dict[str, Any]:
    """Whether a tolerance on a metric is resolvable: the tolerance in metric units (``target_value`` x
    ``tolerance``) against the evaluation noise (std over seeds) and the floor's spread over splits."""
    margin = target_value * tolerance
    noise_std = None if noise is None else noise["std"]
    return {"tolerance": tolerance, "margin": margin, "noise_std": noise_std,
            "floor_mean": None if floor is None else floor["mean"],
            "floor_std": None if floor is None else floor["std"],
            "resolvable": None if noise_std is None else bool(margin >= 2.0 * noise_std)}
