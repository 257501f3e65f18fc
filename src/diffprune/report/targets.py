"""Time to target on any metric logged during training, with 95% intervals over seeds (issue 24's study).

The report's "Time to target FID" table reads FID curves; an equal-budget study stops and compares on the metric
of ``train.stop_at_target`` (e.g. the classifier Frechet distance, whose noise is below the tolerance). Here the
same accounting (``evaluation.speedup.time_to_target``: cost interpolated between evaluations, speed-up = the full
arm's cost to target / (the arm's cost + its overheads), paired by seed) runs on that metric's curve, and each
(method, ratio, tolerance) gets the geometric mean speed-up over the seeds that reached the target with a
Student-t 95% interval of the log speed-up (a ratio: the interval stays positive and 0.5x is as far from 1x as
2x). The overheads are the "reference trained" ones (a trained DRO reference counted in full).
"""
from __future__ import annotations

import math
from collections import defaultdict
from typing import Any, Sequence

from scipy import stats

from diffprune.evaluation.speedup import time_to_target
from diffprune.report.collect import FULL, ArmResult
from diffprune.report.document import Table

UNITS = (("images", "images"), ("seconds", "time"), ("flops", "FLOPs"))


def metric_log(arm: ArmResult, metric: str) -> list[dict[str, Any]]:
    """The arm's evaluations during training with ``metric`` renamed ``fid`` (what ``time_to_target`` reads)."""
    return [{**row, "fid": float(row[metric])} for row in arm.train_log
            if row.get(metric) is not None and "eval_seconds" in row]


def mean_interval(values: Sequence[float], level: float = 0.95) -> tuple[float, float | None]:
    """(mean, half-width of the Student-t interval at ``level``); None for fewer than 2 values."""
    n = len(values)
    mean = sum(values) / n
    if n < 2:
        return mean, None
    sd = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1))
    return mean, float(stats.t.ppf(0.5 + level / 2, n - 1)) * sd / math.sqrt(n)


def ratio_interval(values: Sequence[float], level: float = 0.95) -> tuple[float, float | None, float | None]:
    """(geometric mean, low, high): ``mean_interval`` of the logs, mapped back; no interval for one value."""
    mean, half = mean_interval([math.log(v) for v in values], level)
    if half is None:
        return math.exp(mean), None, None
    return math.exp(mean), math.exp(mean - half), math.exp(mean + half)


def paired_speedups(arms: Sequence[ArmResult], metric: str, tolerance: float) -> list[dict[str, Any]]:
    """One entry per pruned arm with a full arm of its seed: its ``time_to_target`` on ``metric``."""
    full = {a.seed: a for a in arms if a.method == FULL and metric_log(a, metric)}
    out = []
    for a in arms:
        if a.method == FULL or a.seed not in full or not metric_log(a, metric):
            continue
        fpi = (a.manifests.get("train") or {}).get("flops_per_image")
        same_model = fpi and fpi == (full[a.seed].manifests.get("train") or {}).get("flops_per_image")
        trained = ((a.reference or {}).get("trained") or {}).get("overheads") or {}
        t = time_to_target(metric_log(full[a.seed], metric), metric_log(a, metric), tolerance=tolerance,
                           overheads={k: v for k, v in trained.items() if v is not None},
                           per_image={"flops": float(fpi)} if same_model else None)
        out.append({"arm": a, "group": (a.method + ("+dro" if a.reweighted else "") + a.variant, a.ratio), **t})
    return out


def _cell(values: list[float]) -> str:
    if not values:
        return "-"
    mean, low, high = ratio_interval(values)
    return f"{mean:.2f}x" + ("" if low is None else f" [{low:.2f}, {high:.2f}]")


def time_to_target_table(arms: Sequence[ArmResult], metric: str, tolerances: Sequence[float]) -> Table | None:
    rows = []
    for tol in tolerances:
        groups: dict[tuple[str, Any], list[dict[str, Any]]] = defaultdict(list)
        for entry in paired_speedups(arms, metric, tol):
            groups[entry["group"]].append(entry)
        for (method, ratio), entries in sorted(groups.items(), key=lambda kv: (kv[0][1] or 0, kv[0][0])):
            hit = [e for e in entries if e["reached"]]
            cells = [_cell([e["speedup"][u] for e in hit if e["speedup"].get(u) is not None]) for u, _ in UNITS]
            rows.append([method, f"{ratio:g}", f"{tol:.0%}", f"{len(hit)}/{len(entries)}", *cells])
    if not rows:
        return None
    return Table(["method", "ratio", "tolerance", "reached", *[f"speed-up: {name}" for _, name in UNITS]], rows,
                 caption=f"Time to target on {metric} (target: the full arm's final value x (1 + tolerance), same "
                         "seed); geometric mean over the seeds that reached it [Student-t 95% interval of the log]; overheads with the "
                         "DRO reference's training counted")
