"""kcenter: greedy farthest-point (k-center) coverage with one running-minimum distance vector.

Memory is O(n d) (the group's features) plus O(n) for the running minimum, unlike DeepCore's budget x n
distance matrix; each pick costs one matrix-vector product, on GPU when present. The first centre is a
seeded random row (DeepCore) or, with ``start="mean"``, the row nearest the group mean.
"""
from __future__ import annotations

import numpy as np
import torch

from diffprune.runtime import resolve_device
from diffprune.selection.errors import SelectionError
from diffprune.selection.methods._torch import as_tensor
from diffprune.selection.method import greedy_order_scores

DTYPES = {"float32": torch.float32, "float64": torch.float64}


def kcenter_greedy(x: np.ndarray, budget: int, first: int, device=None,
                   precision: str = "float32") -> tuple[np.ndarray, np.ndarray]:
    """Greedy k-center order of ``budget`` rows; returns (picked indices, final min squared distance n)."""
    if precision not in DTYPES:
        raise SelectionError(f"kcenter precision must be one of {sorted(DTYPES)}, got {precision!r}")
    dev = resolve_device(device)
    X = as_tensor(x, dev, DTYPES[precision])
    n = X.shape[0]
    sq = (X * X).sum(1)
    picked = torch.empty(budget, dtype=torch.long, device=dev)
    j = int(first)
    min_d = torch.full((n,), float("inf"), device=dev, dtype=X.dtype)
    for i in range(budget):
        picked[i] = j
        d = (sq - 2.0 * (X @ X[j]) + sq[j]).clamp_min_(0.0)
        torch.minimum(min_d, d, out=min_d)
        min_d[j] = 0.0  # exact zero for the centre itself, whatever the rounding
        if i + 1 < budget:
            j = int(torch.argmax(min_d))
    return picked.cpu().numpy(), min_d.double().cpu().numpy()


def kcenter_scores(x: np.ndarray, *, budget: int | None, rng: np.random.Generator, device=None,
                   start: str = "random", precision: str = "float32", **_) -> np.ndarray:
    n = len(x)
    m = n if budget is None else min(int(budget), n)
    if start == "random":
        first = int(rng.integers(n))
    elif start == "mean":
        x64 = np.asarray(x, dtype=np.float64)
        first = int(np.argmin(((x64 - x64.mean(0)) ** 2).sum(1)))
    else:
        raise SelectionError(f"kcenter start must be 'random' or 'mean', got {start!r}")
    order, min_d = kcenter_greedy(x, m, first, device=device, precision=precision)
    return greedy_order_scores(order, n, rest=np.sqrt(min_d))
