"""``score``: per-group scores of any registered method over a (memory-mapped) feature matrix."""
from __future__ import annotations

import inspect
import logging
from typing import Any

import numpy as np

from diffprune.runtime import progress_bar
from diffprune.selection.errors import SelectionError
from diffprune.selection.grouping import resolve_groups
from diffprune.selection.inputs import check_features, check_labels, check_ratio, group_index, iter_groups
from diffprune.selection.method import Method
from diffprune.selection.registry import get_method

log = logging.getLogger("diffprune.selection")

COMMON_ARGS = {"x", "budget", "rng", "device", "group_name"}


def method_options(method: Method) -> list[str]:
    """Names of the options ``method`` accepts (besides the common arguments)."""
    params = inspect.signature(method.fn).parameters.values()
    return [p.name for p in params if p.name not in COMMON_ARGS and p.kind is not p.VAR_KEYWORD]


def check_options(method: Method, opts: dict[str, Any]) -> None:
    allowed = method_options(method)
    unknown = sorted(set(opts) - set(allowed))
    if unknown:
        raise SelectionError(
            f"unknown option(s) {unknown} for method {method.name!r}; allowed: {allowed or 'none'}"
        )


def group_rng(seed: int, group_id: int) -> np.random.Generator:
    """Independent, reproducible stream per (seed, group)."""
    return np.random.default_rng(np.random.SeedSequence([int(seed) & 0xFFFFFFFF, int(group_id)]))


def score_groups(
    features: np.ndarray,
    groups: np.ndarray,
    group_names: list[str],
    method: Method,
    budgets: dict[int, int] | None,
    seed: int,
    device: str | None,
    opts: dict[str, Any],
    progress: bool = False,
) -> np.ndarray:
    """Run ``method`` on each group; returns float64 N scores (checked finite)."""
    check_options(method, opts)
    ids, members = group_index(groups)
    sizes = np.array([len(m) for m in members])
    min_size = 1 if method.name == "random" else 2
    small = [(group_names[g] if g < len(group_names) else str(g), int(s)) for g, s in zip(ids, sizes) if s < min_size]
    if small:
        shown = ", ".join(f"{name!r} ({s})" for name, s in small[:10])
        raise SelectionError(
            f"method {method.name!r} fits each group and needs at least {min_size} samples per group; "
            f"too small: {shown}{' ...' if len(small) > 10 else ''}. Drop or merge these classes, "
            "or use fewer clusters"
        )
    d = features.shape[1]
    if method.full_covariance:
        under = int((sizes <= d).sum())
        if under:
            log.warning(
                "%s: %d of %d groups have no more samples than feature dims (%d); their covariance is "
                "singular and is regularised by reg_covar * I (plus shrinkage if given), as Instance Selection does",
                method.name, under, len(ids), d,
            )
    scores = np.empty(features.shape[0], dtype=np.float64)
    bar = progress_bar(enabled=progress and len(ids) > 1, transient=True)
    task = bar.add_task(f"scoring ({method.name})", total=len(ids))
    bar.start()
    try:
        for pos, x in iter_groups(features, members):
            gid = int(ids[pos])
            rows = members[pos]
            name = group_names[gid] if gid < len(group_names) else str(gid)
            budget = None if budgets is None else budgets.get(gid)
            s = method.fn(x, budget=budget, rng=group_rng(seed, gid), device=device, group_name=repr(name), **opts)
            s = np.asarray(s, dtype=np.float64)
            if s.shape != (len(rows),):
                raise RuntimeError(f"method {method.name} returned shape {s.shape} for a group of {len(rows)}")
            if not np.isfinite(s).all():
                raise SelectionError(
                    f"method {method.name!r} produced non-finite scores for group {name!r} "
                    f"({int((~np.isfinite(s)).sum())} rows); check the features of that group "
                    "(constant or duplicated rows) or raise the method's regularisation"
                )
            scores[rows] = s
            bar.advance(task)
    finally:
        bar.stop()
    return scores


def score(
    features: np.ndarray,
    labels: np.ndarray | None = None,
    method: str = "gaussian",
    *,
    clusters: int | None = None,
    ratio: float | None = None,
    seed: int = 0,
    device: str | None = None,
    class_names: list[str] | None = None,
    progress: bool = False,
    **opts: Any,
) -> np.ndarray:
    """Score every row; higher = keep first under ``keep="top"``. Returns float64 N.

    Args:
        features: float N x D (an array or ``np.load(..., mmap_mode="r")``); NaN/inf rows are an error.
        labels: int N class indices, or None (then ``clusters`` k-means groups, or one group).
        method: a name from ``available_methods()``.
        ratio: for sequential methods (kcenter, herding) the kept fraction per group that the greedy
            order is built for; None builds the full order (slow: quadratic in the group size).
        seed: seeds random, kcenter's first pick, k-means and gmm.
        device: torch device for the torch methods ("cuda", "cpu"; None = CUDA when present).
        **opts: method options, e.g. ``reg_covar`` (gaussian), ``k`` (knn), ``variance`` (ppca).
    """
    m = get_method(method)
    features = check_features(features)
    labels = check_labels(labels, features.shape[0])
    groups, names = resolve_groups(features, labels, clusters, seed, class_names)
    budgets = None
    if m.sequential:
        ids, members = group_index(groups)
        r = 1.0 if ratio is None else check_ratio(ratio)
        budgets = {int(g): round_half_up(r * len(mm)) for g, mm in zip(ids, members)}
    return score_groups(features, groups, names, m, budgets, seed, device, opts, progress)


def round_half_up(x: float) -> int:
    """round(r * n) with halves rounded up (Python's round() rounds halves to even)."""
    return int(np.floor(x + 0.5 + 1e-9))
