"""Precision, recall, density and coverage of generated features against real ones (Naeem et al., ICML 2020).

Definitions (k-nearest-neighbour balls, strict ``<`` as in the authors' ``prdc`` package):
    r_i  = distance of real i to its k-th nearest real neighbour (self excluded); r_j likewise for fakes.
    precision = mean over fakes j of  [exists real i: d(i, j) < r_i]
    recall    = mean over reals i of  [exists fake j: d(i, j) < r_j]
    density   = mean over fakes j of  (1/k) * #{real i: d(i, j) < r_i}
    coverage  = mean over reals i of  [min_j d(i, j) < r_i]

The authors' code builds full N x N distance matrices (50k x 50k float64 = 20 GB). Here everything is computed
in row chunks on the feature device, so memory stays ``chunk x N``, and one pass over real chunks yields all four.
"""
from __future__ import annotations

import numpy as np
import torch

from diffprune.evaluation.errors import EvaluationError


def knn_radii(features: torch.Tensor, k: int, chunk: int = 1024) -> torch.Tensor:
    """Distance of each row to its k-th nearest other row (the self-distance 0 is the 0-th neighbour). Shape (N,)."""
    n = features.shape[0]
    if n <= k:
        raise EvaluationError(f"k-NN radii with k={k} need more than {k} feature vectors, got {n}")
    out = torch.empty(n, dtype=features.dtype, device=features.device)
    for start in range(0, n, chunk):
        d = torch.cdist(features[start : start + chunk], features)
        out[start : start + chunk] = torch.topk(d, k + 1, dim=1, largest=False).values[:, -1]
    return out


def prdc(
    real: np.ndarray | torch.Tensor,
    fake: np.ndarray | torch.Tensor,
    k: int = 5,
    *,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float64,
    chunk: int = 1024,
) -> dict[str, float]:
    """Precision, recall, density, coverage of ``fake`` (M x D) against ``real`` (N x D) with k-NN balls.

    Returns a dict with the four values (floats in [0, 1], density may exceed 1) plus ``k``.
    """
    r = torch.as_tensor(np.asarray(real) if not isinstance(real, torch.Tensor) else real).to(device, dtype)
    f = torch.as_tensor(np.asarray(fake) if not isinstance(fake, torch.Tensor) else fake).to(device, dtype)
    if r.ndim != 2 or f.ndim != 2 or r.shape[1] != f.shape[1]:
        raise EvaluationError(
            f"real and fake features must be N x D and M x D with the same D, got {tuple(r.shape)} and {tuple(f.shape)}"
        )
    radius_real = knn_radii(r, k, chunk)
    radius_fake = knn_radii(f, k, chunk)

    fake_hit = torch.zeros(f.shape[0], dtype=torch.bool, device=r.device)
    fake_count = torch.zeros(f.shape[0], dtype=torch.float64, device=r.device)
    real_recalled = torch.zeros(r.shape[0], dtype=torch.bool, device=r.device)
    real_covered = torch.zeros(r.shape[0], dtype=torch.bool, device=r.device)
    for start in range(0, r.shape[0], chunk):
        d = torch.cdist(r[start : start + chunk], f)  # chunk x M
        inside_real_ball = d < radius_real[start : start + chunk, None]
        fake_hit |= inside_real_ball.any(dim=0)
        fake_count += inside_real_ball.sum(dim=0, dtype=torch.float64)
        real_recalled[start : start + chunk] = (d < radius_fake[None, :]).any(dim=1)
        real_covered[start : start + chunk] = d.min(dim=1).values < radius_real[start : start + chunk]
    return {
        "precision": float(fake_hit.double().mean()),
        "recall": float(real_recalled.double().mean()),
        "density": float(fake_count.mean() / k),
        "coverage": float(real_covered.double().mean()),
        "k": int(k),
    }
