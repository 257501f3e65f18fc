"""ppca: probabilistic-PCA log-likelihood with the components that keep a fraction of the variance.

The component count k follows one of two rules (``components``):
    upstream (default): Instance Selection's ``PPCA``: the number of cumulative explained-variance ratios
        strictly below ``variance`` (at least 1);
    sklearn: ``PCA(n_components=variance)``: the fewest components whose cumulative ratio exceeds
        ``variance`` (searchsorted, side="right"), one more than upstream unless a ratio equals it exactly.
Given k, the scores equal ``sklearn.decomposition.PCA(n_components=k).fit(x).score_samples(x)``: noise
variance = mean of the remaining min(n, d) - k eigenvalues, covariance W^T diag(ev) W + noise (I - W^T W).
Eigenvalues come from the n x n Gram matrix when n <= d, else from the d x d covariance (float64).
"""
from __future__ import annotations

import logging
import math

import numpy as np
import torch

from diffprune.runtime import resolve_device
from diffprune.selection.errors import SelectionError
from diffprune.selection.methods._torch import as_tensor

log = logging.getLogger("diffprune.selection")


COMPONENT_RULES = ("upstream", "sklearn")


def component_count(cumulative: np.ndarray, variance: float, rule: str = "upstream") -> int:
    """Components kept for the cumulative explained-variance ratios ``cumulative`` (float, ascending to 1)."""
    if rule == "upstream":
        k = int(np.sum(cumulative < variance))
    elif rule == "sklearn":
        k = int(np.searchsorted(cumulative, variance, side="right") + 1)
    else:
        raise SelectionError(f"ppca components must be one of {', '.join(COMPONENT_RULES)}, got {rule!r}")
    return min(max(k, 1), len(cumulative))


def ppca_loglik(x: np.ndarray, variance: float = 0.95, device=None, group_name: str = "group",
                components: str = "upstream") -> np.ndarray:
    if not 0.0 < variance < 1.0:
        raise SelectionError(f"ppca variance must lie in (0, 1) (fraction of variance kept), got {variance}")
    if components not in COMPONENT_RULES:
        raise SelectionError(f"ppca components must be one of {', '.join(COMPONENT_RULES)}, got {components!r}")
    n, d = x.shape
    dev = resolve_device(device)
    Xc = as_tensor(x, dev, torch.float64)
    Xc -= Xc.mean(0, keepdim=True)
    r = min(n, d)
    if n <= d:
        evals, U = torch.linalg.eigh(Xc @ Xc.T)  # ascending
        evals, U = evals.flip(0).clamp_min(0.0), U.flip(1)
    else:
        evals, V = torch.linalg.eigh(Xc.T @ Xc)
        evals, V = evals.flip(0).clamp_min(0.0), V.flip(1)
    ev = evals[:r] / (n - 1)  # sklearn's explained_variance_
    total = ev.sum()
    if total <= 0:
        raise SelectionError(f"ppca: all features of {group_name} are constant; nothing to score")
    cum = torch.cumsum(ev / total, 0).cpu().numpy()
    k = component_count(cum, variance, components)
    noise = float(ev[k:].mean()) if k < r else 0.0
    floor = 1e-12 * float(ev[0])
    if noise <= floor:
        log.warning("ppca: %s keeps all %d components; noise variance floored at %.3g", group_name, k, floor)
        noise = floor
    if n <= d:
        W = (Xc.T @ U[:, :k]) / torch.sqrt(evals[:k]).clamp_min(1e-300)  # d x k orthonormal columns
    else:
        W = V[:, :k]
    P = Xc @ W  # n x k projections
    resid = Xc - P @ W.T
    maha = (P * P / ev[:k]).sum(1) + (resid * resid).sum(1) / noise
    logdet = torch.log(ev[:k]).sum() + (d - k) * math.log(noise)
    return (-0.5 * (d * math.log(2 * math.pi) + logdet + maha)).cpu().numpy()


def ppca_scores(x: np.ndarray, *, device=None, variance: float = 0.95, components: str = "upstream",
                group_name: str = "group", **_) -> np.ndarray:
    return ppca_loglik(x, variance=variance, device=device, group_name=group_name, components=components)
