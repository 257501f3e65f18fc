"""random: uniform scores from a seeded generator (the baseline every criterion must beat)."""
from __future__ import annotations

import numpy as np

from diffprune.selection.registry import register


@register("random", "uniform random scores (seeded); the baseline")
def random_scores(x: np.ndarray, *, rng: np.random.Generator, **_) -> np.ndarray:
    return rng.random(len(x))
