"""Speed-up accounting: what the full-data run cost against everything the pruned run needed.

    speed-up = cost(full-data training) / cost(pruned training + embed + select + reweight [+ reference])

Costs come from the stage manifests (``seconds``, optionally ``images_processed``), so a speed-up is always
computed from what actually ran, overheads included. Two units are reported: wall-clock seconds and images
processed (robust to a shared or different machine). Evaluation during training (a train manifest's
``eval_seconds``) is recorded but never counted as a cost.

``time_to_target`` is the speed-up at matched quality: the training cost at which each run's FID curve (the
``metrics.jsonl`` entries that ``train.eval_every`` / ``--eval-every`` writes) first reaches the full-data
run's final FID x (1 + tolerance), interpolated linearly between evaluations.
"""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

from diffprune.evaluation.errors import EvaluationError

TIME_KEYS = ("train_seconds", "seconds", "elapsed", "elapsed_seconds", "wall_clock", "time_s", "time")
IMAGE_KEYS = ("images_seen", "images_processed", "images", "samples_seen")


def _as_stage_map(cost: Mapping[str, Any] | Sequence[Mapping[str, Any]], side: str) -> dict[str, Mapping[str, Any]]:
    """Accept one manifest, a {stage: manifest} mapping, or a list of manifests; return {stage: manifest}."""
    if isinstance(cost, Mapping) and _is_manifest(cost):
        return {str(cost.get("stage", "train")): cost}
    if isinstance(cost, Mapping):
        out = {}
        for name, manifest in cost.items():
            if manifest is None:
                continue
            if not isinstance(manifest, Mapping) or not _is_manifest(manifest):
                raise EvaluationError(
                    f"{side} cost entry {name!r} is not a stage manifest with a numeric 'seconds' field; "
                    "pass the manifest.json contents of each stage"
                )
            out[str(name)] = manifest
        return out
    if isinstance(cost, Sequence) and not isinstance(cost, (str, bytes)):
        out = {}
        for i, manifest in enumerate(cost):
            if not isinstance(manifest, Mapping) or not _is_manifest(manifest):
                raise EvaluationError(f"{side} cost item {i} is not a stage manifest with a numeric 'seconds' field")
            name = str(manifest.get("stage", f"stage{i}"))
            out[name if name not in out else f"{name}#{i}"] = manifest
        return out
    raise EvaluationError(f"{side} cost must be a manifest, a mapping of stage name to manifest, or a list of manifests")


def _is_manifest(m: Mapping[str, Any]) -> bool:
    s = m.get("seconds")
    return isinstance(s, (int, float)) and not isinstance(s, bool) and math.isfinite(s) and s >= 0


def _summarise(stages: Mapping[str, Mapping[str, Any]]) -> dict[str, Any]:
    per_stage = {}
    missing = []
    for name, m in stages.items():
        images = m.get("images_processed")
        if images is None:
            missing.append(name)
        seconds = max(0.0, float(m["seconds"]) - float(m.get("eval_seconds") or 0.0))  # evaluation is not a cost
        flops = m.get("flops")
        if flops is None and images == 0 and "flops_error" not in m:
            flops = 0.0  # no image went through a network (selection scores features): no network FLOPs
        per_stage[name] = {"seconds": seconds, "images_processed": images, "device": m.get("device"),
                           "flops": flops, "flops_kind": m.get("flops_kind")}
    total_images = None if missing else int(sum(int(s["images_processed"]) for s in per_stage.values()))
    flops = [s["flops"] for s in per_stage.values()]
    return {
        "seconds": float(sum(s["seconds"] for s in per_stage.values())),
        "images_processed": total_images,
        "flops": None if any(f is None for f in flops) else float(sum(flops)),  # None: some stage unmeasured
        "stages": per_stage,
        "stages_without_image_counts": missing,
    }


def summarise_cost(cost: Mapping[str, Any] | Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Total seconds and images processed of some stage manifests (a manifest, {stage: manifest} or a list), with
    ``overhead_seconds`` / ``overhead_fraction`` = everything but training."""
    summary = _summarise(_as_stage_map(cost, "cost"))
    overhead = sum(s["seconds"] for name, s in summary["stages"].items() if not name.startswith("train"))
    summary["overhead_seconds"] = float(overhead)
    summary["overhead_fraction"] = float(overhead / summary["seconds"]) if summary["seconds"] > 0 else 0.0
    return summary


def compute_speedup(
    full: Mapping[str, Any] | Sequence[Mapping[str, Any]],
    pruned: Mapping[str, Any] | Sequence[Mapping[str, Any]],
) -> dict[str, Any]:
    """Speed-up of a pruned arm over the full-data arm, by wall-clock seconds and by images processed.

    Args:
        full: the full-data arm's cost: its ``train`` manifest, or ``{stage: manifest}``.
        pruned: every manifest the pruned arm needed, e.g.
            ``{"embed": ..., "select": ..., "reweight": ..., "reference": ..., "train": ...}``
            (shared stages included: the caller passes them, nothing is assumed free).

    Returns:
        ``{"by_wall_clock": float, "by_images": float | None, "by_flops": float | None, "full": {...},
        "pruned": {...}, "notes": [...]}`` (``by_flops`` when every stage's manifest has ``flops``);
        ``pruned`` also has ``overhead_seconds`` (all stages but ``train``) and ``overhead_fraction``.
        ``by_images`` is None when some stage's manifest lacks ``images_processed`` (listed in the notes).
    """
    full_s = _summarise(_as_stage_map(full, "full"))
    pruned_s = summarise_cost(pruned)
    notes: list[str] = []
    if pruned_s["seconds"] <= 0:
        raise EvaluationError("the pruned arm's manifests add up to 0 seconds; a speed-up cannot be computed")
    by_time = full_s["seconds"] / pruned_s["seconds"]
    by_images = None
    if full_s["images_processed"] is not None and pruned_s["images_processed"]:
        by_images = full_s["images_processed"] / pruned_s["images_processed"]
    else:
        lacking = [f"full:{s}" for s in full_s["stages_without_image_counts"]]
        lacking += [f"pruned:{s}" for s in pruned_s["stages_without_image_counts"]]
        notes.append(f"no speed-up by images: manifests without images_processed: {', '.join(lacking) or 'none'}")
    devices = {s["device"] for s in [*full_s["stages"].values(), *pruned_s["stages"].values()] if s["device"]}
    if len(devices) > 1:
        notes.append(f"stages ran on different devices ({'; '.join(sorted(devices))}): compare wall-clock with care")
    by_flops = full_s["flops"] / pruned_s["flops"] if full_s["flops"] and pruned_s["flops"] else None
    return {
        "by_wall_clock": float(by_time),
        "by_images": None if by_images is None else float(by_images),
        "by_flops": by_flops,
        "full": full_s,
        "pruned": pruned_s,
        "notes": notes,
    }


def read_metrics_jsonl(path: str | Path) -> list[dict[str, Any]]:
    """Entries of a training ``metrics.jsonl``; a truncated last line (crash mid-write) is ignored."""
    lines = Path(path).read_text(encoding="utf-8").splitlines()
    out = []
    for i, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            if i == len(lines) - 1:
                break
            raise EvaluationError(f"{path}: line {i + 1} is not valid JSON; the file is corrupt") from None
    return out


DEFAULT_TOLERANCES = (0.05, 0.15)
UNITS = ("seconds", "images")


def fid_curve(entries: Iterable[Mapping[str, Any]]) -> list[dict[str, float]]:
    """The (step, seconds, images, fid) points of a training log, in order; entries without ``fid`` are skipped.
    ``seconds`` is the training time (``train_seconds``: evaluation excluded, cumulative over resumes)."""
    points = []
    for e in entries:
        fid = e.get("fid")
        if not isinstance(fid, (int, float)) or not math.isfinite(fid):
            continue
        point = {"fid": float(fid), "step": e.get("step")}
        point["seconds"] = next((float(e[k]) for k in TIME_KEYS if isinstance(e.get(k), (int, float))), None)
        point["images"] = next((float(e[k]) for k in IMAGE_KEYS if isinstance(e.get(k), (int, float))), None)
        points.append(point)
    return points


def cost_to_reach(points: Sequence[Mapping[str, Any]], target: float, unit: str) -> float | None:
    """The ``unit`` cost (seconds, images, step) at which a FID curve first reaches ``target``, interpolated
    linearly between the last evaluation above the target and the first at or below it; None if never reached.
    A curve already at the target at its first evaluation reaches it there (nothing is assumed before it)."""
    prev = None
    for p in points:
        if p.get(unit) is None:
            continue
        if p["fid"] <= target:
            if prev is None:
                return float(p[unit])
            frac = (prev["fid"] - target) / (prev["fid"] - p["fid"])
            return float(prev[unit] + frac * (p[unit] - prev[unit]))
        prev = p
    return None


def plateau_change(points: Sequence[Mapping[str, Any]], fraction: float = 0.25) -> dict[str, float] | None:
    """How much a FID curve still moved over its last ``fraction`` of training steps: is the run converged?

    FID at step ``(1 - fraction) x last step`` is interpolated linearly between the evaluations around it;
    ``change`` = (final FID - that FID) / that FID (-0.05: 5% better over the last quarter). None when the
    curve has fewer than two evaluations or does not reach back that far.

    Returns:
        ``{"fraction", "from_step", "to_step", "fid_from", "fid_to", "change"}``.
    """
    if not 0 < fraction < 1:
        raise EvaluationError(f"fraction must be in (0, 1) (0.25 = the last quarter), got {fraction}")
    pts = [p for p in points if isinstance(p.get("step"), (int, float))]
    if len(pts) < 2:
        return None
    last = pts[-1]
    start = (1.0 - fraction) * float(last["step"])
    if start < pts[0]["step"]:
        return None
    fid_from = None
    for prev, cur in zip(pts, pts[1:]):
        if prev["step"] <= start <= cur["step"]:
            frac = (start - prev["step"]) / (cur["step"] - prev["step"])
            fid_from = prev["fid"] + frac * (cur["fid"] - prev["fid"])
            break
    if fid_from is None:
        return None
    return {"fraction": float(fraction), "from_step": start, "to_step": float(last["step"]),
            "fid_from": float(fid_from), "fid_to": float(last["fid"]),
            "change": (float(last["fid"]) - fid_from) / fid_from}


def time_to_target(
    full_log: Iterable[Mapping[str, Any]],
    pruned_log: Iterable[Mapping[str, Any]],
    *,
    tolerance: float = DEFAULT_TOLERANCES[0],
    target_fid: float | None = None,
    overheads: Mapping[str, float] | None = None,
    per_image: Mapping[str, float] | None = None,
) -> dict[str, Any]:
    """Speed-up at matched quality of an arm over the full-data arm, from their FID-during-training curves.

    target = ``target_fid``, or the full run's final logged FID x (1 + ``tolerance``). For each unit the arm's
    cost to target is interpolated between evaluations (``cost_to_reach``), and

        speed-up = full run's cost to target / (arm's cost to target + the arm's overheads in that unit).

    Args:
        full_log, pruned_log: ``metrics.jsonl`` entries; those with ``fid`` count.
        tolerance: relative slack on the full run's final FID (0.05 = within 5%).
        overheads: {unit: cost of the arm's other stages} (embedding, selection, reference, DRO), e.g.
            ``{"seconds": 120.0, "images": 64000, "flops": 3.1e13}``; missing units count 0.
        per_image: {unit: cost per training image} for units derived from ``images`` (e.g. ``{"flops": 2e9}``:
            FLOPs of one training forward+backward per image); each adds that unit.

    Returns:
        ``{"tolerance", "target_fid", "reached", "full": {unit: cost}, "pruned": {"step", unit: cost} | None,
        "speedup": {unit: x | None}, "best": {"fid", "step", "seconds", "images"} (the arm's best evaluation),
        "by_wall_clock", "by_images"}``.
    """
    full_pts, pruned_pts = fid_curve(full_log), fid_curve(pruned_log)
    if not full_pts:
        raise EvaluationError("the full-data training log has no FID entries; train it with train.eval_every "
                              "(--eval-every N) to log them")
    if not pruned_pts:
        raise EvaluationError("the arm's training log has no FID entries; train it with train.eval_every "
                              "(--eval-every N) to log them")
    if not (tolerance >= 0 and math.isfinite(tolerance)):
        raise EvaluationError(f"tolerance must be a number >= 0 (0.05 = within 5%), got {tolerance}")
    for pts in (full_pts, pruned_pts):
        for p in pts:
            for unit, cost in (per_image or {}).items():
                p[unit] = None if p["images"] is None else p["images"] * float(cost)
    target = float(target_fid) if target_fid is not None else full_pts[-1]["fid"] * (1.0 + tolerance)
    units = [*UNITS, *(per_image or {})]
    full_cost = {u: cost_to_reach(full_pts, target, u) for u in units}
    pruned_cost = {u: cost_to_reach(pruned_pts, target, u) for u in ("step", *units)}
    reached = any(v is not None for v in pruned_cost.values())
    speedup: dict[str, float | None] = {}
    for u in units:
        total = None if pruned_cost[u] is None else pruned_cost[u] + float((overheads or {}).get(u, 0.0))
        speedup[u] = full_cost[u] / total if full_cost[u] is not None and total else None
    best = min(pruned_pts, key=lambda p: p["fid"])
    return {
        "tolerance": float(tolerance), "target_fid": target, "reached": reached,
        "full": full_cost, "pruned": pruned_cost if reached else None, "speedup": speedup,
        "best": {k: best.get(k) for k in ("fid", "step", "seconds", "images")},
        "by_wall_clock": speedup["seconds"], "by_images": speedup["images"],
    }
