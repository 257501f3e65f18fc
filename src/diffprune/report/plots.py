"""The report's figures (matplotlib, Agg backend, PNG): FID versus compute, class weights, class-wise FID."""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from diffprune.evaluation import fid_curve  # noqa: E402
from diffprune.report.collect import ArmResult  # noqa: E402

DPI = 110


def _save(fig, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=DPI, bbox_inches="tight")
    plt.close(fig)
    return path


def _name(arm: ArmResult, multi_run: bool) -> str:
    return f"{arm.run}/{arm.arm}" if multi_run else arm.arm


def fid_vs_compute(arms: Sequence[ArmResult], path: Path, multi_run: bool = False) -> Path | None:
    """Final FID against total cost (wall-clock incl. overheads; and images processed when every arm has it),
    plus each arm's FID-during-training curve shifted right by its overhead."""
    pts = [a for a in arms if a.metric("fid") is not None and a.cost is not None]
    if not pts:
        return None
    have_images = all(a.cost["images_processed"] for a in pts)
    ncols = 2 if have_images else 1
    fig, axes = plt.subplots(1, ncols, figsize=(6.2 * ncols, 4.2), squeeze=False)
    for col, unit in enumerate(["seconds", "images"][:ncols]):
        ax = axes[0][col]
        for i, a in enumerate(pts):
            color = f"C{i % 10}"
            pr = a.cost
            total = pr["seconds"] if unit == "seconds" else pr["images_processed"]
            overhead = pr["overhead_seconds"] if unit == "seconds" else (
                total - (pr["stages"].get("train", {}).get("images_processed") or 0))
            curve = [p for p in fid_curve(a.train_log) if p[unit] is not None]
            if curve:
                ax.plot([p[unit] + overhead for p in curve], [p["fid"] for p in curve], "-", color=color, alpha=0.6)
            ax.plot([total], [a.metric("fid")], "o", color=color, label=_name(a, multi_run), markersize=7)
        ax.set_xlabel("wall-clock seconds (incl. embed/select/DRO)" if unit == "seconds"
                      else "images processed (incl. embed/select/DRO)")
        ax.set_ylabel("FID (lower is better)")
        ax.grid(alpha=0.3)
    axes[0][-1].legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    fig.suptitle("FID versus compute")
    return _save(fig, path)


def class_weights_bars(arms: Sequence[ArmResult], path: Path, multi_run: bool = False) -> Path | None:
    """Grouped bars of each reweighted arm's class weights, with the uniform weight 1/K as a dashed line and,
    for arms with a null control, its band (shaded: weights inside it are indistinguishable from noise) and
    its null weights (crosses)."""
    with_w = [a for a in arms if a.class_weights]
    if not with_w:
        return None
    names = list(with_w[0].class_weights)
    k = len(names)
    width = 0.8 / len(with_w)
    fig, ax = plt.subplots(figsize=(max(6.0, 0.55 * k + 2), 3.8))
    x = np.arange(k)
    for i, a in enumerate(with_w):
        xs = x + i * width - 0.4 + width / 2
        ax.bar(xs, [a.class_weights.get(n, 0.0) for n in names], width, label=_name(a, multi_run), color=f"C{i % 10}")
        if a.null_control:
            lo, hi = a.null_control["band"]
            null = a.null_control.get("weights", {})
            ax.fill_between([-0.5, k - 0.5], lo, hi, color=f"C{i % 10}", alpha=0.12, lw=0,
                            label=f"null band of {_name(a, multi_run)}")
            ax.plot(xs, [null.get(n, np.nan) for n in names], "x", color="k", ms=5,
                    label=f"null weights of {_name(a, multi_run)}")
    ax.axhline(1.0 / k, color="k", ls="--", lw=1, label="uniform 1/K")
    ax.set_xticks(x, names, rotation=30 if max(len(n) for n in names) > 4 else 0, ha="right")
    ax.set_ylabel("class weight")
    ax.set_title("Class weights from DRO")
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    ax.grid(axis="y", alpha=0.3)
    return _save(fig, path)


def classwise_bars(series: Sequence[tuple[str, list[dict]]], path: Path, title: str,
                   ylabel: str = "class-wise FID") -> Path | None:
    """Grouped bars per class: one series per arm (e.g. before and after reweighting)."""
    series = [(n, rows) for n, rows in series if rows]
    if not series:
        return None
    classes = [r["class"] for r in series[0][1]]
    width = 0.8 / len(series)
    fig, ax = plt.subplots(figsize=(max(6.0, 0.6 * len(classes) + 2), 3.8))
    x = np.arange(len(classes))
    for i, (name, rows) in enumerate(series):
        vals = [r.get("value") if r.get("value") is not None else np.nan for r in rows]
        ax.bar(x + i * width - 0.4 + width / 2, vals, width, label=name, color=f"C{i % 10}")
    ax.set_xticks(x, classes, rotation=30 if max(len(c) for c in classes) > 4 else 0, ha="right")
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    ax.grid(axis="y", alpha=0.3)
    return _save(fig, path)


def fid_vs_training_compute(arms: Sequence[ArmResult], path: Path, multi_run: bool = False,
                            targets: Sequence[float] = ()) -> Path | None:
    """FID during training of every arm on one axis against images processed (log x): each curve starts at
    its overheads (embedding, selection, reference, DRO: the "reference trained" count where it is known),
    marked by a bar, so a pruned curve's offset is what it paid before its first training image. Dotted
    horizontal lines: the time-to-target FIDs."""
    curves = []
    for a in arms:
        pts = [p for p in fid_curve(a.train_log) if p["images"] is not None]
        if not pts:
            continue
        ref = a.reference or {}
        offset = (ref.get("trained", {}).get("overheads", {}).get("images")
                  if ref.get("trained", {}).get("overheads", {}).get("images") is not None
                  else ref.get("available", {}).get("overheads", {}).get("images")) or 0
        curves.append((a, pts, float(offset)))
    if not curves:
        return None
    fig, ax = plt.subplots(figsize=(7.5, 4.6))
    for i, (a, pts, offset) in enumerate(curves):
        color = f"C{i % 10}"
        xs = [offset + p["images"] for p in pts]
        ax.plot(xs, [p["fid"] for p in pts], "-o", color=color, markersize=3, label=_name(a, multi_run))
        if offset > 0:
            ax.plot([offset, xs[0]], [pts[0]["fid"]] * 2, ":", color=color, alpha=0.7)
            ax.plot([offset], [pts[0]["fid"]], "|", color=color, markersize=12, markeredgewidth=2)
    for t in targets:
        ax.axhline(t, color="k", ls=":", lw=0.8)
    ax.set_xscale("log")
    ax.set_xlabel("images processed: overheads (bar) + training images")
    ax.set_ylabel("FID during training (lower is better)")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    ax.set_title("FID against training compute")
    return _save(fig, path)


def loss_curves(arms: Sequence[ArmResult], path: Path, multi_run: bool = False) -> Path | None:
    """Training loss (``metrics.jsonl``: the mean epsilon loss of each ``log_every`` window) against step."""
    logged = [a for a in arms if any("loss" in r for r in a.train_log)]
    if not logged:
        return None
    fig, ax = plt.subplots(figsize=(6.2, 3.8))
    for i, a in enumerate(logged):
        rows = [r for r in a.train_log if "loss" in r and "step" in r]
        ax.plot([r["step"] for r in rows], [r["loss"] for r in rows], color=f"C{i % 10}", label=_name(a, multi_run),
                marker="o" if len(rows) < 3 else None)  # a line through one point draws nothing
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("training loss (weighted epsilon MSE)")
    ax.set_yscale("log")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.suptitle("Training loss")
    return _save(fig, path)
