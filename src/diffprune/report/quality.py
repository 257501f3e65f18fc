"""The report's section for equal-budget studies (issue 24): every arm's quality curve on one axis and each
metric's floor and evaluation noise beside the tolerance.

Curves: the metric logged during training (the early-stop metric, else classifier_fd, else FID) against training
images, training seconds (evaluation excluded) and training FLOPs (images x the arm's measured FLOPs per training
image), so with ``train.eval_every_images`` every arm's points share their x values. Dashed lines: each seed's
target (the full arm's final value x (1 + tolerance)); grey band: the metric's floor (mean +- std over disjoint
real splits, ``eval/quality.json``).
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from diffprune.evaluation.quality import tolerance_check  # noqa: E402
from diffprune.report.collect import FULL, ArmResult, RunSummary  # noqa: E402
from diffprune.report.document import Heading, Image, Paragraph, Table, fmt  # noqa: E402
from diffprune.report.plots import _name, _save  # noqa: E402
from diffprune.report.targets import time_to_target_table  # noqa: E402

CURVE_METRICS = ("classifier_fd", "fid", "kid")


def curve_metric(arms: Sequence[ArmResult]) -> str | None:
    """The metric the section draws: the early-stop metric if any arm used one, else the first of
    ``CURVE_METRICS`` that some arm logged during training."""
    for a in arms:
        stop = ((a.manifests.get("train") or {}).get("summary") or {}).get("stop")
        if stop:
            return stop["metric"]
    logged = {k for a in arms for row in a.train_log for k in row if row.get(k) is not None}
    return next((m for m in CURVE_METRICS if m in logged), None)


def metric_points(arm: ArmResult, metric: str) -> list[dict[str, float]]:
    """(images, seconds, flops, value) of each evaluation during training that has ``metric``."""
    per_image = (arm.manifests.get("train") or {}).get("flops_per_image")
    points = []
    for row in arm.train_log:
        if row.get(metric) is None or "eval_seconds" not in row:
            continue
        images = float(row["images_seen"])
        points.append({"images": images, "seconds": row.get("train_seconds"), "value": float(row[metric]),
                       "flops": None if per_image is None else images * float(per_image)})
    return points


def targets_by_seed(arms: Sequence[ArmResult], metric: str, tolerance: float) -> dict[Any, float]:
    """{seed: the full arm's final logged ``metric`` x (1 + tolerance)}."""
    out = {}
    for a in arms:
        pts = metric_points(a, metric) if a.method == FULL else []
        if pts:
            out[a.seed] = pts[-1]["value"] * (1 + tolerance)
    return out


def curves_figure(arms: Sequence[ArmResult], path: Path, metric: str, tolerance: float,
                  floor: dict[str, Any] | None, multi_run: bool = False) -> Path | None:
    curves = [(a, metric_points(a, metric)) for a in arms]
    curves = [(a, p) for a, p in curves if p]
    if not curves:
        return None
    axes_x = [("images", "training images"), ("seconds", "training seconds"), ("flops", "training FLOPs")]
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.4), sharey=True)
    for ax, (key, label) in zip(axes, axes_x):
        for i, (a, pts) in enumerate(curves):
            xy = [(p[key], p["value"]) for p in pts if p[key] is not None]
            if xy:
                ax.plot(*zip(*xy), "-o" if len(xy) < 40 else "-", color=f"C{i % 10}", markersize=2.5,
                        label=_name(a, multi_run), lw=1.2 if a.method != FULL else 2.2)
        for seed, target in targets_by_seed(arms, metric, tolerance).items():
            ax.axhline(target, color="k", ls="--", lw=0.8)
        if floor:
            ax.axhspan(floor["mean"] - floor["std"], floor["mean"] + floor["std"], color="0.6", alpha=0.35, lw=0)
        ax.set_xlabel(label)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel(f"{metric} during training (lower is better)")
    axes[-1].legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    fig.suptitle(f"{metric} of every arm on one schedule; dashed: targets at {tolerance:.0%}; grey: floor")
    return _save(fig, path)


def _quality_rows(where: str, metrics: dict[str, Any], full_values: dict[str, float | None],
                  tolerances: Sequence[float]) -> list[list[str]]:
    rows = []
    for metric, q in metrics.items():
        floor, noise = q.get("floor") or {}, q.get("noise") or {}
        final = q.get("final", full_values.get(metric))
        # the report's tolerances (those of its time-to-target table), not the ones quality.json was written with
        checks = [tolerance_check(floor or None, noise or None, final, t) for t in tolerances] if final is not None \
            else [{}]
        for t in checks:
            rows.append([f"{metric} ({where})", fmt(final),
                         f"{fmt(floor.get('mean'))} ± {fmt(floor.get('std'))}" if floor else "-",
                         fmt(noise.get("std")), f"{t.get('tolerance', 0):.0%}", fmt(t.get("margin")),
                         {True: "yes", False: "no", None: "-"}[t.get("resolvable")]])
    return rows


def _quality_table(quality: dict[str, Any], arms: Sequence[ArmResult], tolerances: Sequence[float]) -> Table:
    rows = _quality_rows(f"during training, {quality['samples']} samples", quality["metrics"], {}, tolerances)
    final = quality.get("final")
    if final:
        full = [a for a in arms if a.method == FULL and a.label == quality["arm"]]
        values = {m: full[0].metric(m) if full else None for m in final["metrics"]}
        rows += _quality_rows(f"final, {final['samples']} samples", final["metrics"], values, tolerances)
    return Table(["metric", "full arm final", "floor (mean ± std)", "noise (std over 3 seeds)", "tolerance",
                  "tolerance in metric units", "resolvable (margin >= 2 x noise)"], rows,
                 caption=f"floor: the metric between disjoint real sets of the evaluated sizes (3 splits); noise: "
                         f"{quality['arm']}'s final model evaluated with sample seeds 0, 1, 2")


def quality_blocks(runs: Sequence[RunSummary], out: Path) -> list:
    """The section's blocks; empty when no arm logged a metric during training."""
    arms = [a for r in runs for a in r.arms]
    metric = curve_metric(arms)
    if metric is None:
        return []
    quality_files = [r.path / "eval" / "quality.json" for r in runs if (r.path / "eval" / "quality.json").is_file()]
    quality = json.loads(quality_files[0].read_text()) if quality_files else None
    stop = next((((a.manifests.get("train") or {}).get("summary") or {}).get("stop") for a in arms
                 if ((a.manifests.get("train") or {}).get("summary") or {}).get("stop")), None)
    tolerance = stop["tolerance"] if stop else 0.05
    floor = ((quality or {}).get("metrics", {}).get(metric) or {}).get("floor")
    blocks: list = [Heading(f"Quality during training on one schedule ({metric})", 3)]
    fig = curves_figure(arms, out / f"curves_{metric}.png", metric, tolerance, floor, len(runs) > 1)
    if fig:
        blocks.append(Image(fig, f"{metric} during training of every arm against images, seconds and FLOPs"))
    ttt = time_to_target_table(arms, metric, sorted({0.05, 0.10, tolerance}))
    if ttt is not None:
        blocks.append(ttt)
    if quality:
        blocks.append(_quality_table(quality, arms, sorted({0.05, 0.10, tolerance})))
    else:
        blocks.append(Paragraph("No floor or noise measured: run `python -m diffprune.pipeline.quality CONFIG "
                                "--name NAME` after the sweep (writes eval/quality.json)."))
    return blocks
