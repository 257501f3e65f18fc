"""knn: minus the Euclidean distance to the k-th nearest neighbour within the group (faiss, exact search).

The row itself is excluded: the k-th neighbour is the (k+1)-th smallest distance including the row's own
zero, which stays correct with duplicate rows. Groups with k or fewer rows use k = n - 1 (logged).
"""
from __future__ import annotations

import logging

import numpy as np

from diffprune.selection.errors import SelectionError

log = logging.getLogger("diffprune.selection")

QUERY_ROWS = 8192


def knn_scores(x: np.ndarray, *, k: int = 5, group_name: str = "group", **_) -> np.ndarray:
    import faiss

    if int(k) < 1:
        raise SelectionError(f"knn k must be >= 1, got {k}")
    n, d = x.shape
    k_eff = min(int(k), n - 1)
    if k_eff < k:
        log.warning("knn: %s has only %d samples; using the %d-th neighbour instead of the %d-th",
                    group_name, n, k_eff, k)
    xs = np.ascontiguousarray(x, dtype=np.float32)
    index = faiss.IndexFlatL2(d)
    index.add(xs)
    out = np.empty(n, dtype=np.float64)
    for start in range(0, n, QUERY_ROWS):
        dist2, _ = index.search(xs[start : start + QUERY_ROWS], k_eff + 1)
        out[start : start + len(dist2)] = -np.sqrt(np.maximum(dist2[:, k_eff].astype(np.float64), 0.0))
    return out
