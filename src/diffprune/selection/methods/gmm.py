"""gmm: log-likelihood under a Gaussian mixture fitted to the group (scikit-learn GaussianMixture)."""
from __future__ import annotations

import logging

import numpy as np

from diffprune.selection.errors import SelectionError

log = logging.getLogger("diffprune.selection")


def gmm_scores(
    x: np.ndarray,
    *,
    rng: np.random.Generator,
    components: int = 4,
    covariance_type: str = "diag",
    reg_covar: float = 1e-5,
    max_iter: int = 100,
    group_name: str = "group",
    **_,
) -> np.ndarray:
    from sklearn.mixture import GaussianMixture

    if covariance_type not in ("full", "tied", "diag", "spherical"):
        raise SelectionError(f"gmm covariance_type must be full, tied, diag or spherical, got {covariance_type!r}")
    if int(components) < 1:
        raise SelectionError(f"gmm components must be >= 1, got {components}")
    n = len(x)
    c = min(int(components), max(1, n // 2))
    if c < components:
        log.warning("gmm: %s has %d samples; fitting %d components instead of %d", group_name, n, c, components)
    gm = GaussianMixture(c, covariance_type=covariance_type, reg_covar=reg_covar, max_iter=max_iter,
                         random_state=int(rng.integers(2**31 - 1)))
    x64 = np.asarray(x, dtype=np.float64)
    return gm.fit(x64).score_samples(x64)
