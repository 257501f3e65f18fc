"""Groups used to fit scores and split budgets: class labels, k-means clusters, or one group."""
from __future__ import annotations

import logging

import numpy as np

from diffprune.selection.errors import SelectionError
from diffprune.selection.inputs import gather_rows

log = logging.getLogger("diffprune.selection")

ASSIGN_ROWS = 1 << 15


def kmeans_clusters(features: np.ndarray, k: int, seed: int = 0, niter: int = 25,
                    max_train_points: int = 256) -> tuple[np.ndarray, np.ndarray]:
    """k-means (faiss, Lloyd) on the rows of ``features``; returns (int64 N cluster ids, float32 k x D centroids).

    Trained on a seeded sample of at most ``max_train_points * k`` rows (faiss's own cap), then every row is
    assigned to its nearest centroid in chunks, so a memory-mapped matrix is never loaded whole.
    """
    import faiss

    n, d = features.shape
    if not isinstance(k, (int, np.integer)) or k < 1:
        raise SelectionError(f"clusters must be a positive integer, got {k!r}")
    if k > n:
        raise SelectionError(f"clusters={k} exceeds the number of samples ({n}); use at most {n}")
    rng = np.random.default_rng(seed)
    n_train = min(n, max_train_points * k)
    rows = np.sort(rng.choice(n, size=n_train, replace=False)) if n_train < n else np.arange(n)
    train = np.ascontiguousarray(gather_rows(features, rows), dtype=np.float32)
    km = faiss.Kmeans(d, int(k), niter=niter, seed=int(seed) % (2**31), verbose=False,
                      max_points_per_centroid=max_train_points, min_points_per_centroid=1)
    km.train(train)
    assign = np.empty(n, dtype=np.int64)
    for start in range(0, n, ASSIGN_ROWS):
        block = np.ascontiguousarray(gather_rows(features, np.arange(start, min(n, start + ASSIGN_ROWS))),
                                     dtype=np.float32)
        _, idx = km.index.search(block, 1)
        assign[start : start + len(block)] = idx[:, 0]
    return assign, km.centroids.copy()


def resolve_groups(
    features: np.ndarray,
    labels: np.ndarray | None,
    clusters: int | None,
    seed: int,
    class_names: list[str] | None = None,
) -> tuple[np.ndarray, list[str]]:
    """int64 N group ids and names indexed by id: labels, else k-means clusters, else a single group "all"."""
    n = features.shape[0]
    if clusters is not None:
        if labels is not None:
            log.warning("clusters=%d given with labels: grouping by k-means clusters, labels ignored", clusters)
        groups, _ = kmeans_clusters(features, clusters, seed=seed)
        return groups, [f"cluster{i}" for i in range(int(clusters))]
    if labels is None:
        return np.zeros(n, dtype=np.int64), ["all"]
    k = int(labels.max()) + 1 if len(labels) else 0
    if class_names is not None:
        if len(class_names) < k:
            raise SelectionError(f"class_names has {len(class_names)} names but labels go up to {k - 1}")
        names = [str(c) for c in class_names]
    else:
        names = [str(i) for i in range(k)]
    return labels, names
