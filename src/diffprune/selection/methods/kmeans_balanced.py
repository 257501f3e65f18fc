"""kmeans-balanced: k-means the group, then spread the budget over its clusters (after Briq et al. 2024).

Briq et al. ("Data Pruning in Generative Diffusion Models", 2024) find k-means on CLIP/DINO features a strong
pruning baseline for diffusion models and use clusters to rebalance skewed data. Their exact recipe is not
reproduced here; this is a reconstruction with both readings as options:
- ``allocation="proportional"`` (default): every cluster keeps about the same fraction of its rows;
- ``allocation="balanced"``: clusters keep equal numbers (capped by their size), which thins dense modes.
Within a cluster rows are taken in ``within`` order: "random" (seeded, default), "closest" or "farthest" to
the centroid. The result is a full ranking: any prefix honours the allocation (round-robin), so no budget
is needed and keep="bottom"/"middle" are defined.
"""
from __future__ import annotations

import numpy as np

from diffprune.selection.errors import SelectionError


def kmeans_balanced_scores(
    x: np.ndarray,
    *,
    rng: np.random.Generator,
    n_clusters: int = 10,
    allocation: str = "proportional",
    within: str = "random",
    niter: int = 25,
    **_,
) -> np.ndarray:
    import faiss

    if allocation not in ("proportional", "balanced"):
        raise SelectionError(f"kmeans-balanced allocation must be 'proportional' or 'balanced', got {allocation!r}")
    if within not in ("random", "closest", "farthest"):
        raise SelectionError(f"kmeans-balanced within must be 'random', 'closest' or 'farthest', got {within!r}")
    n, d = x.shape
    k = max(1, min(int(n_clusters), n))
    xs = np.ascontiguousarray(x, dtype=np.float32)
    km = faiss.Kmeans(d, k, niter=int(niter), seed=int(rng.integers(2**31 - 1)), verbose=False,
                      min_points_per_centroid=1)
    km.train(xs)
    dist2, assign = km.index.search(xs, 1)
    dist2, assign = dist2[:, 0].astype(np.float64), assign[:, 0]
    # position of each row inside its cluster's order, and the key ranking rows across clusters
    tiebreak = rng.random(n)
    position = np.empty(n, dtype=np.float64)
    for c in range(k):
        rows = np.flatnonzero(assign == c)
        if len(rows) == 0:
            continue
        key = {"random": tiebreak[rows], "closest": dist2[rows], "farthest": -dist2[rows]}[within]
        ordered = rows[np.lexsort((rows, key))]
        pos = np.arange(len(rows), dtype=np.float64)
        position[ordered] = (pos + 0.5) / len(rows) if allocation == "proportional" else pos
    # earlier position = kept first; equal positions (one per cluster) are broken by the random tiebreak
    rank = np.lexsort((tiebreak, position))
    scores = np.empty(n, dtype=np.float64)
    scores[rank] = np.arange(n, 0, -1, dtype=np.float64)
    return scores
