"""Markdown tables and one figure for docs/results.md from a finished sweep (the plateau study of issue 12).

    python scripts/study_tables.py RUN_DIR [--figure docs/img/plateau_fid_vs_compute.png] > tables.md

Reads only what the report reads (``collect_run``): logged FID curves, time to target per tolerance (each arm
against the full arm of its own seed), costs with and without the reference's training, class-wise FID.
Seeds are grouped by (method, ratio): mean over the seeds, with the per-seed values where they matter.
"""
from __future__ import annotations

import argparse
import statistics
from collections import defaultdict
from pathlib import Path
from typing import Any

from diffprune.evaluation.speedup import fid_curve, plateau_change, summarise_cost
from diffprune.report.collect import FULL, ArmResult, collect_run


def _key(a: ArmResult) -> tuple[str, float]:
    return (a.method + ("+dro" if a.reweighted else ""), 1.0 if a.method == FULL else float(a.ratio))


def _groups(arms: list[ArmResult]) -> dict[tuple[str, float], list[ArmResult]]:
    groups: dict[tuple[str, float], list[ArmResult]] = defaultdict(list)
    for a in arms:
        groups[_key(a)].append(a)
    order = {m: i for i, m in enumerate(["full", "random", "gaussian", "gaussian+dro", "moderate", "kcenter"])}
    return dict(sorted(groups.items(), key=lambda kv: (kv[0][1] != 1.0, kv[0][1], order.get(kv[0][0], 99))))


def _mean(values: list[float | None], fmt: str = "{:.1f}") -> str:
    vals = [v for v in values if v is not None]
    if not vals:
        return "-"
    if len(vals) == 1:
        return fmt.format(vals[0])
    return f"{fmt.format(statistics.mean(vals))} ± {fmt.format(statistics.stdev(vals))}"


def _sci(v: float | None) -> str:
    return "-" if v is None else f"{v:.2e}"


def curves_table(arms: list[ArmResult]) -> str:
    lines = ["| arm | logged FID (step: FID) | last-quarter change |", "|---|---|---|"]
    for a in arms:
        pts = fid_curve(a.train_log)
        if not pts:
            continue
        plateau = plateau_change(pts) if a.method == FULL else None
        change = "-" if plateau is None else f"{100 * plateau['change']:+.1f}%"
        lines.append(f"| {a.arm} | " + ", ".join(f"{p['step']}: {p['fid']:.1f}" for p in pts) + f" | {change} |")
    return "\n".join(lines)


def final_table(arms: list[ArmResult]) -> str:
    lines = ["| method | ratio | FID | KID | classifier FD | train s (evaluations excluded) | overheads s (ref. available) | "
             "speed-up at fixed epochs (time, ref. available / trained) |", "|---|---|---|---|---|---|---|---|"]
    for (method, ratio), members in _groups(arms).items():
        ref = [m.reference for m in members if m.reference]
        lines.append(" | ".join([
            f"| {method}", f"{ratio:g}", _mean([m.metric("fid") for m in members]),
            _mean([m.metric("kid") for m in members], "{:.3f}"), _mean([m.metric("classifier_fd") for m in members]),
            _mean([summarise_cost({"train": m.manifests["train"]})["seconds"] for m in members
                   if "train" in m.manifests], "{:.0f}"),
            _mean([r["available"]["overheads"]["seconds"] for r in ref], "{:.0f}"),
            _mean([r["available"]["by_wall_clock"] for r in ref], "{:.2f}x") + " / "
            + _mean([r["trained"]["by_wall_clock"] for r in ref], "{:.2f}x")]) + " |")
    return "\n".join(lines)


def ttt_table(arms: list[ArmResult]) -> str:
    lines = ["| method | ratio | tolerance | target FID (per seed) | reached | to target: train s, images, FLOPs | "
             "speed-up time (ref. avail. / trained) | images | FLOPs | best FID if not reached |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for (method, ratio), members in _groups(arms).items():
        members = [m for m in members if m.time_to_target]
        if not members:
            continue
        for i, tol in enumerate(t["tolerance"] for t in members[0].time_to_target):
            avail = [m.time_to_target[i]["available"] for m in members]
            trained = [m.time_to_target[i]["trained"] for m in members]
            hit = [t for t in avail if t["reached"]]
            cost = "-" if not hit else ", ".join([
                _mean([t["pruned"]["seconds"] for t in hit], "{:.0f}"),
                _mean([t["pruned"]["images"] for t in hit], "{:.0f}"),
                _sci(statistics.mean(t["pruned"]["flops"] for t in hit) if all(
                    t["pruned"].get("flops") is not None for t in hit) else None)])

            def sp(ts: list[dict[str, Any]], unit: str) -> str:
                return _mean([t["speedup"].get(unit) for t in ts if t["reached"]], "{:.2f}x")

            best = [t["best"]["fid"] for t in avail if not t["reached"]]
            lines.append(" | ".join([
                f"| {method}", f"{ratio:g}", f"{100 * tol:g}%", " / ".join(f"{t['target_fid']:.1f}" for t in avail),
                f"{len(hit)}/{len(avail)}", cost, f"{sp(avail, 'seconds')} / {sp(trained, 'seconds')}",
                f"{sp(avail, 'images')} / {sp(trained, 'images')}", f"{sp(avail, 'flops')} / {sp(trained, 'flops')}",
                _mean(best) if best else "-"]) + " |")
    return "\n".join(lines)


def classwise_table(arms: list[ArmResult], ratio: float) -> str:
    """Class-wise FID (mean over seeds; in brackets the generated samples the classifier assigns to the class)."""
    cols = [("full", 1.0), ("gaussian", ratio), ("gaussian+dro", ratio)]
    groups = _groups(arms)
    rows: dict[str, list[str]] = {}
    weights: dict[str, list[float]] = defaultdict(list)
    for m in groups.get(("gaussian+dro", ratio), []):
        for c, w in (m.class_weights or {}).items():
            weights[c].append(w)
    for col in cols:
        per_class: dict[str, list[tuple[float | None, int]]] = defaultdict(list)
        for m in groups.get(col, []):
            for r in ((m.metrics or {}).get("classwise") or {}).get("fid") or []:
                per_class[r["class"]].append((r["value"], r["num_fake"]))
        for c, vals in per_class.items():
            fids = [v for v, _ in vals if v is not None]
            n = "/".join(str(k) for _, k in vals)
            rows.setdefault(c, []).append(f"{_mean(fids) if fids else '-'} ({n})")
    lines = [f"| class | DRO weight (mean of seeds) | full | gaussian {ratio:g} | gaussian+dro {ratio:g} |",
             "|---|---|---|---|---|"]
    for c, cells in rows.items():
        lines.append(f"| {c} | {_mean(weights.get(c, []), '{:.3f}')} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def figure(arms: list[ArmResult], path: Path) -> None:
    """FID during training against training FLOPs + overhead FLOPs (reference available), log x; one panel per
    ratio, each method's seeds averaged at equal steps, the full arm on every panel."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    groups = _groups(arms)
    ratios = sorted({r for (_, r) in groups if r != 1.0})
    colors = {"full": "k", "random": "C1", "gaussian": "C2", "gaussian+dro": "C3", "moderate": "C4", "kcenter": "C5"}
    fig, axes = plt.subplots(1, len(ratios), figsize=(5.2 * len(ratios), 4.0), sharex=True, sharey=True,
                             squeeze=False)
    for ax, ratio in zip(axes[0], ratios):
        for method, r in (k for k in groups if k[1] in (1.0, ratio)):
            curves = []
            for m in groups[(method, r)]:
                fpi = (m.manifests.get("train") or {}).get("flops_per_image")
                off = ((m.reference or {}).get("available", {}).get("overheads", {}).get("flops")) or 0.0
                curves.append([(p["images"] * fpi + off, p["fid"]) for p in fid_curve(m.train_log)
                               if fpi and p["images"] is not None])
            n = min(len(c) for c in curves)
            if n == 0:
                continue
            xs = [statistics.mean(c[j][0] for c in curves) for j in range(n)]
            ys = [statistics.mean(c[j][1] for c in curves) for j in range(n)]
            ax.plot(xs, ys, "o-", color=colors.get(method, "C9"), label=method, markersize=4)
        ax.set_xscale("log")
        ax.set_title(f"keep ratio {ratio:g} (full data in black)")
        ax.legend(fontsize=8)
        ax.set_xlabel("training FLOPs + overheads (reference available)")
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("FID during training (EMA samples)")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run_dir", type=Path)
    ap.add_argument("--figure", type=Path, default=None, help="write the FID-vs-compute figure here (PNG)")
    ap.add_argument("--classwise-ratio", type=float, action="append", default=None)
    args = ap.parse_args()
    run = collect_run(args.run_dir)
    print("### Logged FID during training\n\n" + curves_table(run.arms))
    print("\n### Final evaluation (evaluate stage) at fixed epochs\n\n" + final_table(run.arms))
    print("\n### Time to target\n\n" + ttt_table(run.arms))
    for ratio in args.classwise_ratio or [0.5]:
        print(f"\n### Class-wise FID at ratio {ratio:g}\n\n" + classwise_table(run.arms, ratio))
    if run.notes:
        print("\nNotes:\n" + "\n".join(f"- {n}" for n in run.notes))
    if args.figure:
        figure(run.arms, args.figure)


if __name__ == "__main__":
    main()
