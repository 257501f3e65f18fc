"""``select``: turn scores into a subset with exact per-group budgets, and the ``Selection`` record."""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from diffprune.io import atomic_save_npz, atomic_write_json, read_json
from diffprune.selection.config import SelectConfig
from diffprune.selection.errors import SelectionError
from diffprune.selection.grouping import resolve_groups
from diffprune.selection.inputs import check_features, check_labels, check_ratio, group_index
from diffprune.selection.registry import get_method
from diffprune.selection.scoring import round_half_up, score_groups

log = logging.getLogger("diffprune.selection")

KEEP_MODES = ("top", "bottom", "middle")


@dataclass
class Selection:
    """A selected subset and how it was chosen.

    Attributes:
        indices: sorted int64 row indices of the kept samples.
        scores: float64 N scores (higher = more typical/kept first under keep="top").
        groups: int64 N group ids (class labels, or k-means clusters when unlabelled).
        group_names: names indexed by group id.
        counts: {group name: kept samples}; sizes: {group name: samples in the group}.
    """

    indices: np.ndarray
    scores: np.ndarray
    groups: np.ndarray
    group_names: list[str]
    counts: dict[str, int]
    sizes: dict[str, int]
    method: str
    ratio: float
    keep: str = "top"
    per_class: bool = True
    seed: int = 0
    clusters: int | None = None
    options: dict[str, Any] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.indices)

    def metadata(self) -> dict[str, Any]:
        return {
            "method": self.method,
            "ratio": self.ratio,
            "keep": self.keep,
            "per_class": self.per_class,
            "seed": self.seed,
            "clusters": self.clusters,
            "options": self.options,
            "num_samples": int(len(self.scores)),
            "num_selected": int(len(self.indices)),
            "group_names": list(self.group_names),
            "counts": dict(self.counts),
            "sizes": dict(self.sizes),
            "rounding": "per group: max(1, floor(ratio * n_k + 0.5)); ties broken by lower index",
        }

    def save(self, out_dir: str | Path) -> Path:
        """Write ``selection.npz`` (indices, scores, groups) then ``selection.json``, each atomically."""
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        atomic_save_npz(out / "selection.npz", indices=self.indices, scores=self.scores, groups=self.groups)
        atomic_write_json(out / "selection.json", self.metadata())
        return out

    @classmethod
    def load(cls, out_dir: str | Path) -> "Selection":
        out = Path(out_dir)
        meta = read_json(out / "selection.json")
        with np.load(out / "selection.npz", allow_pickle=False) as z:
            indices, scores, groups = z["indices"], z["scores"], z["groups"]
        return cls(
            indices=indices.astype(np.int64), scores=scores.astype(np.float64), groups=groups.astype(np.int64),
            group_names=list(meta["group_names"]), counts={k: int(v) for k, v in meta["counts"].items()},
            sizes={k: int(v) for k, v in meta.get("sizes", {}).items()}, method=meta["method"],
            ratio=float(meta["ratio"]), keep=meta["keep"], per_class=bool(meta["per_class"]),
            seed=int(meta.get("seed", 0)), clusters=meta.get("clusters"), options=dict(meta.get("options", {})),
        )


def order_within(scores: np.ndarray, rows: np.ndarray, m: int, keep: str) -> np.ndarray:
    """The ``m`` rows to keep among ``rows`` by ``keep``; equal scores are broken by lower row index."""
    s = scores[rows]
    if keep == "top":
        order = np.lexsort((rows, -s))
        return rows[order[:m]]
    ascending = rows[np.lexsort((rows, s))]
    if keep == "bottom":
        return ascending[:m]
    start = (len(rows) - m) // 2
    return ascending[start : start + m]


def select(
    features: np.ndarray,
    labels: np.ndarray | None,
    method: str = "gaussian",
    ratio: float = 0.5,
    per_class: bool = True,
    keep: str = "top",
    seed: int = 0,
    clusters: int | None = None,
    *,
    device: str | None = None,
    class_names: list[str] | None = None,
    progress: bool = False,
    **opts: Any,
) -> Selection:
    """Score the rows and keep a fraction ``ratio`` of them.

    Per-class mode keeps exactly ``max(1, floor(ratio * n_k + 0.5))`` rows of every group k; global mode
    (``per_class=False``) keeps ``max(1, floor(ratio * N + 0.5))`` rows overall, ranked on scores that are
    still fitted per group (sequential methods then run once over all rows). ``keep`` picks the highest
    scores ("top"), the lowest ("bottom"), or the band around the median ("middle"). Ties go to the lower index.
    Unlabelled data (``labels=None``) is grouped by k-means with ``clusters`` centres, or kept as one group.
    """
    m = get_method(method)
    if keep not in KEEP_MODES:
        raise SelectionError(f"keep must be one of {KEEP_MODES}, got {keep!r}")
    if m.sequential and keep != "top":
        raise SelectionError(f"{method} builds its subset greedily, so only keep='top' is defined for it")
    ratio = check_ratio(ratio)
    features = check_features(features)
    labels = check_labels(labels, features.shape[0])
    groups, names = resolve_groups(features, labels, clusters, seed, class_names)
    ids, members = group_index(groups)
    n = features.shape[0]
    dev = None if device in (None, "auto") else device

    if m.sequential and not per_class:
        fit_groups = np.zeros(n, dtype=np.int64)
        budgets: dict[int, int] | None = {0: max(1, round_half_up(ratio * n))}
        scores = score_groups(features, fit_groups, ["all"], m, budgets, seed, dev, opts, progress)
    else:
        budgets = {int(g): max(1, round_half_up(ratio * len(r))) for g, r in zip(ids, members)} if m.sequential else None
        scores = score_groups(features, groups, names, m, budgets, seed, dev, opts, progress)

    if per_class:
        kept = [order_within(scores, rows, max(1, round_half_up(ratio * len(rows))), keep) for rows in members]
        indices = np.sort(np.concatenate(kept)) if kept else np.zeros(0, dtype=np.int64)
    else:
        indices = np.sort(order_within(scores, np.arange(n), max(1, round_half_up(ratio * n)), keep))
    indices = indices.astype(np.int64)

    sizes_arr = np.bincount(groups, minlength=len(names))
    kept_arr = np.bincount(groups[indices], minlength=len(names))
    return Selection(
        indices=indices, scores=scores, groups=groups.astype(np.int64), group_names=list(names),
        counts={names[i]: int(kept_arr[i]) for i in range(len(names))},
        sizes={names[i]: int(sizes_arr[i]) for i in range(len(names))},
        method=method, ratio=ratio, keep=keep, per_class=per_class, seed=seed, clusters=clusters,
        options=dict(opts),
    )


def select_from_config(
    features: np.ndarray, labels: np.ndarray | None, config: SelectConfig,
    class_names: list[str] | None = None, progress: bool = True,
) -> Selection:
    """``select`` driven by a validated ``SelectConfig``."""
    return select(
        features, labels, config.method, config.ratio, config.per_class, config.keep, config.seed,
        config.clusters, device=config.device, class_names=class_names, progress=progress, **config.options,
    )
