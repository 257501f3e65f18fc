"""random: uniform scores from a seeded generator (the baseline every criterion must beat)."""
from __future__ import annotations

import numpy as np



def random_scores(x: np.ndarray, *, rng: np.random.Generator, **_) -> np.ndarray:
    return rng.random(len(x))
