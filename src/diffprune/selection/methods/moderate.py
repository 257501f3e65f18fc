"""moderate: keep the band around the median distance to the group centre (Xia et al., Moderate Coreset).

Score = -| ||x - mean|| - median ||x - mean|| |, so keep="top" keeps the rows closest to the median distance.
"""
from __future__ import annotations

import numpy as np



def moderate_scores(x: np.ndarray, **_) -> np.ndarray:
    x64 = np.asarray(x, dtype=np.float64)
    dist = np.linalg.norm(x64 - x64.mean(0), axis=1)
    return -np.abs(dist - np.median(dist))
