"""herding: greedily pick rows whose running mean tracks the group mean (Welling 2009; DeepCore's Herding).

At step t the next row minimises || (t + 1) mu - (sum of picked + x) ||; one matrix-vector product per pick.
"""
from __future__ import annotations

import numpy as np
import torch

from diffprune.runtime import resolve_device
from diffprune.selection.methods._torch import as_tensor
from diffprune.selection.method import greedy_order_scores


def herding_order(x: np.ndarray, budget: int, device=None) -> np.ndarray:
    dev = resolve_device(device)
    X = as_tensor(x, dev, torch.float64 if dev.type == "cpu" and x.shape[0] * x.shape[1] < 4_000_000 else torch.float32)
    n = X.shape[0]
    mu = X.mean(0)
    sq = (X * X).sum(1)
    total = torch.zeros_like(mu)
    available = torch.ones(n, dtype=torch.bool, device=dev)
    picked = np.empty(budget, dtype=np.int64)
    for t in range(budget):
        target = (t + 1) * mu - total
        d = sq - 2.0 * (X @ target)  # ||target - x||^2 minus the constant ||target||^2
        d = torch.where(available, d, torch.full_like(d, float("inf")))
        j = int(torch.argmin(d))
        picked[t] = j
        available[j] = False
        total += X[j]
    return picked


def herding_scores(x: np.ndarray, *, budget: int | None, device=None, **_) -> np.ndarray:
    n = len(x)
    m = n if budget is None else min(int(budget), n)
    return greedy_order_scores(herding_order(x, m, device=device), n)
