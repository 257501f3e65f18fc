"""Class-wise Frechet distances: real images of class k against generated images of class k.

Generated images get their class from the conditioning label (conditional models) or from a classifier trained
on real images (unconditional models). Every row records both counts: FID from a few hundred images per class is
biased upward, so only compare class-wise values computed with the same counts.
"""
from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from diffprune.evaluation.frechet import fid_from_features


def classwise_frechet(
    real_features: np.ndarray,
    real_labels: np.ndarray,
    fake_features: np.ndarray,
    fake_labels: np.ndarray,
    class_names: Sequence[str],
    *,
    min_per_class: int = 2,
) -> list[dict[str, Any]]:
    """One row per class: ``{"index", "class", "num_real", "num_fake", "value"}`` (``value`` None with a
    ``reason`` when a side has fewer than ``min_per_class`` images)."""
    rows = []
    for k, name in enumerate(class_names):
        r = real_features[real_labels == k]
        f = fake_features[fake_labels == k]
        row: dict[str, Any] = {"index": k, "class": str(name), "num_real": int(len(r)), "num_fake": int(len(f))}
        if len(r) < min_per_class or len(f) < min_per_class:
            row["value"] = None
            row["reason"] = f"fewer than {min_per_class} real or generated images of this class"
        else:
            row["value"] = fid_from_features(r, f)
        rows.append(row)
    return rows


def mean_of_rows(rows: Sequence[dict[str, Any]]) -> float | None:
    """Mean of the defined per-class values (None when no class has one)."""
    vals = [r["value"] for r in rows if r.get("value") is not None]
    return float(np.mean(vals)) if vals else None
