"""Recompute the time-to-target study's numbers (docs/results.md, issue 24) from its shipped raw curves.

Reads ``benchmarks/results/fm-budget/`` (``curves/<arm>.jsonl``: every arm's ``metrics.jsonl``;
``results.json``: the sweep's per-arm rows; ``quality.json``: the metric's floor and noise; and any sub-folder
with its own ``results.json`` and ``curves/``, e.g. ``full-minsnr/``: arms of another run compared against this
folder's full arms) and prints, per (method, ratio) and tolerance, over seeds (speed-ups: geometric mean and the
Student-t 95% interval of the log; the rest: mean and Student-t 95% interval):
- reached: seeds whose arm came within the tolerance of its seed's full arm (target = the full arm's final value
  x (1 + tolerance), the rule of ``train.stop_at_target``);
- training images to target, and the speed-up in images (the full arm's images to the same target / the arm's;
  exact, machine-independent) and in training seconds, each without and with the arm's overheads (results.json's
  ``overhead_images`` / ``overhead_seconds``: embedding, selection, and for DRO the reference trained by the run
  and the proxy: the report's "reference trained" accounting);
- the arm's last value relative to its seed's full-arm final (an arm stopped at the target ends near 1 - tol;
  one that ran the whole budget shows its quality at the equal budget), and the evaluations before the target;
- the arm's value / its baseline's at the same step (the last step both evaluated; baseline: the full arm, or for
  a ``+minsnr`` arm the full-data Min-SNR arm of its seed when one is in the folder): what pruning adds at equal
  training, Min-SNR or not;
and the full arms' change over their last quarter (the < 2% convergence criterion).
Writes ``analysis.json`` beside the inputs.

    python benchmarks/fm_budget.py [--dir benchmarks/results/fm-budget]
"""
from __future__ import annotations

import argparse
import json
from collections import defaultdict
from pathlib import Path

from diffprune.evaluation.speedup import plateau_change, time_to_target
from diffprune.report.targets import mean_interval, ratio_interval

METRIC = "classifier_fd"
TOLERANCES = (0.05, 0.10)


def evaluations(path: Path) -> list[dict]:
    """The evaluations during training of one arm's metrics.jsonl, the metric renamed ``fid`` (what the
    speed-up helpers read)."""
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return [{**r, "fid": r[METRIC]} for r in rows if "eval_seconds" in r and r.get(METRIC) is not None]


def interval(values: list[float], digits: int = 2) -> str:
    if not values:
        return "-"
    mean, half = mean_interval(values)
    return f"{mean:.{digits}f}" + ("" if half is None else f" [{mean - half:.{digits}f}, {mean + half:.{digits}f}]")


def speedup_interval(values: list[float]) -> str:
    if not values:
        return "-"
    mean, low, high = ratio_interval(values)
    return f"{mean:.2f}x" + ("" if low is None else f" [{low:.2f}, {high:.2f}]")


def read_arms(folder: Path) -> tuple[dict[str, dict], dict[str, list[dict]]]:
    """A study folder's rows by arm and its curves; sub-folders with their own results.json join in."""
    arms = {row["arm"]: row for row in json.loads((folder / "results.json").read_text())}
    curves = {p.stem: evaluations(p) for p in sorted((folder / "curves").glob("*.jsonl"))}
    for sub in sorted(p.parent for p in folder.glob("*/results.json")):
        more_arms, more_curves = read_arms(sub)
        arms.update(more_arms)
        curves.update(more_curves)
    return arms, curves


def same_step_ratio(curve: list[dict], baseline: list[dict] | None) -> float | None:
    """The arm's value / the baseline's at the last step both evaluated (one LR schedule, so the same step is the
    same point of training); None without a baseline or a shared step."""
    base = {p["step"]: p["fid"] for p in baseline or []}
    shared = [p for p in curve if p["step"] in base]
    return shared[-1]["fid"] / base[shared[-1]["step"]] if shared else None


def baseline_name(method: str) -> str:
    """A +minsnr arm's own baseline is the full-data Min-SNR arm (does pruning add to Min-SNR?); others: full."""
    return "full+minsnr" if method.endswith("+minsnr") and method != "full+minsnr" else "full"


def analyse(folder: Path) -> dict:
    arms, curves = read_arms(folder)
    by_seed = {(arms[a]["method"], arms[a]["seed"]): a for a in curves}
    full = {seed: a for (method, seed), a in by_seed.items() if method == "full"}
    convergence = {a: plateau_change(curves[a]) for a in full.values()}
    groups: dict[tuple[str, float, float], list[dict]] = defaultdict(list)
    for arm, curve in curves.items():
        row = arms[arm]
        if row["method"] == "full":
            continue
        full_curve = curves[full[row["seed"]]]
        own = by_seed.get((baseline_name(row["method"]), row["seed"]))
        overheads = {"images": row.get("overhead_images") or 0.0, "seconds": row.get("overhead_seconds") or 0.0}
        for tol in TOLERANCES:
            t = time_to_target(full_curve, curve, tolerance=tol)
            with_overheads = time_to_target(full_curve, curve, tolerance=tol, overheads=overheads)["speedup"]
            groups[(row["method"], row["ratio"], tol)].append({
                "arm": arm, "seed": row["seed"], "reached": t["reached"], "target": t["target_fid"],
                "images_to_target": (t["pruned"] or {}).get("images"),
                "full_images_to_target": t["full"]["images"],
                "speedup_images": t["speedup"]["images"], "speedup_seconds": t["speedup"]["seconds"],
                "overheads": overheads, "speedup_images_with_overheads": with_overheads["images"],
                "speedup_seconds_with_overheads": with_overheads["seconds"],
                "final_relative": curve[-1]["fid"] / full_curve[-1]["fid"], "final_step": curve[-1]["step"],
                "same_step_baseline": own, "same_step_ratio": same_step_ratio(curve, curves.get(own)),
                "evaluations_before_target": sum(1 for p in curve if p["fid"] > t["target_fid"]
                                                 and (t["pruned"] is None or p["step"] < t["pruned"]["step"])),
            })
    table = []
    for (method, ratio, tol), entries in sorted(groups.items(), key=lambda kv: (kv[0][2], kv[0][1], kv[0][0])):
        hit = [e for e in entries if e["reached"]]
        same_step = [e["same_step_ratio"] for e in entries if e["same_step_ratio"] is not None]
        table.append({
            "method": method, "ratio": ratio, "tolerance": tol, "reached": f"{len(hit)}/{len(entries)}",
            "images_to_target": interval([e["images_to_target"] for e in hit], 0),
            "speedup_images": speedup_interval([e["speedup_images"] for e in hit]),
            "speedup_seconds": speedup_interval([e["speedup_seconds"] for e in hit if e["speedup_seconds"]]),
            "speedup_images_with_overheads": speedup_interval([e["speedup_images_with_overheads"] for e in hit]),
            "speedup_seconds_with_overheads": speedup_interval([e["speedup_seconds_with_overheads"] for e in hit
                                                                if e["speedup_seconds_with_overheads"]]),
            "final_relative": interval([e["final_relative"] for e in entries], 3),
            "same_step_ratio": f"{interval(same_step, 3)} ({len(same_step)} seeds, vs {baseline_name(method)})",
            "evaluations_before_target": "/".join(str(e["evaluations_before_target"]) for e in entries),
            "arms": entries,
        })
    return {"metric": METRIC, "convergence": convergence, "table": table,
            "quality": json.loads((folder / "quality.json").read_text())
            if (folder / "quality.json").is_file() else None}


def figure(folder: Path, path: Path) -> None:
    """One panel per keep ratio: each method's mean curve over seeds (to the last step every seed logged; each
    seed's points faint), the full-data arms (black: plain) in every panel, the seeds' 5% targets as a band."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    arms, curves = read_arms(folder)
    ratios = sorted({r["ratio"] for a, r in arms.items() if a in curves and not r["method"].startswith("full")})
    full = [curves[a] for a in curves if arms[a]["method"] == "full"]
    targets = [c[-1]["fid"] * 1.05 for c in full]
    fig, axes = plt.subplots(1, len(ratios), figsize=(5.5 * len(ratios), 4.2), sharey=True, squeeze=False)
    for ax, ratio in zip(axes[0], ratios):
        groups: dict[str, list[list[dict]]] = defaultdict(list)
        for arm, curve in curves.items():
            row = arms[arm]
            if row["method"].startswith("full") or row["ratio"] == ratio:  # full-data arms in every panel
                groups[row["method"]].append(curve)
        for method, members in sorted(groups.items(), key=lambda kv: kv[0] != "full"):
            colour = "black" if method == "full" else None
            n = min(len(c) for c in members)
            xs = [members[0][i]["images_seen"] for i in range(n)]
            mean = [sum(c[i]["fid"] for c in members) / len(members) for i in range(n)]
            line, = ax.plot(xs, mean, marker="o", ms=3, lw=2.2 if method == "full" else 1.4, color=colour,
                            label=f"{method} ({len(members)} seeds)")
            for c in members:
                ax.plot([p["images_seen"] for p in c], [p["fid"] for p in c], lw=0.6, alpha=0.3,
                        color=line.get_color())
        ax.axhspan(min(targets), max(targets), color="grey", alpha=0.2, label="5% targets of the 3 seeds")
        ax.set_title(f"keep ratio {ratio:g}")
        ax.set_xlabel("training images")
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel(f"{METRIC} during training (1,000 samples)")
    for ax in axes[0]:
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dir", type=Path, default=Path("benchmarks/results/fm-budget"))
    parser.add_argument("--figure", type=Path, default=None, help="also draw the mean curves to this PNG")
    args = parser.parse_args()
    folder = args.dir
    result = analyse(folder)
    if args.figure:
        figure(folder, args.figure)
    print("full arms, change over the last quarter:")
    for arm, c in result["convergence"].items():
        print(f"  {arm}: {c['fid_from']:.3f} -> {c['fid_to']:.3f} ({c['change']:+.1%})" if c else f"  {arm}: -")
    cols = ["method", "ratio", "tolerance", "reached", "images_to_target", "speedup_images",
            "speedup_images_with_overheads", "speedup_seconds", "speedup_seconds_with_overheads", "final_relative",
            "same_step_ratio", "evaluations_before_target"]
    print("| " + " | ".join(cols) + " |\n|" + "---|" * len(cols))
    for row in result["table"]:
        print("| " + " | ".join(f"{row[c]:.0%}" if c == "tolerance" else str(row[c]) for c in cols) + " |")
    (folder / "analysis.json").write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {folder / 'analysis.json'}")


if __name__ == "__main__":
    main()
