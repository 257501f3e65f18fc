"""Speed-up accounting: what the full-data run cost against everything the pruned run needed.

    speed-up = cost(full-data training) / cost(pruned training + embed + select + reweight [+ reference])

Costs come from the stage manifests (``seconds``, optionally ``images_processed``), so a speed-up is always
computed from what actually ran, overheads included. Two units are reported: wall-clock seconds and images
processed (robust to a shared or different machine). ``time_to_target`` adds the time-to-target-FID speed-up when
training logged FID during training (``metrics.jsonl`` entries with a ``fid`` key).
"""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

from diffprune.evaluation.errors import EvaluationError

TIME_KEYS = ("seconds", "elapsed", "elapsed_seconds", "wall_clock", "time_s", "time")
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
        per_stage[name] = {"seconds": float(m["seconds"]), "images_processed": images, "device": m.get("device")}
    total_images = None if missing else int(sum(int(s["images_processed"]) for s in per_stage.values()))
    return {
        "seconds": float(sum(s["seconds"] for s in per_stage.values())),
        "images_processed": total_images,
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
        ``{"by_wall_clock": float, "by_images": float | None, "full": {...}, "pruned": {...}, "notes": [...]}``;
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
    return {
        "by_wall_clock": float(by_time),
        "by_images": None if by_images is None else float(by_images),
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


def fid_curve(entries: Iterable[Mapping[str, Any]]) -> list[dict[str, float]]:
    """The (seconds, images, step, fid) points of a training log, in order; entries without ``fid`` are skipped."""
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


def _first_reaching(points: list[dict[str, float]], target: float) -> dict[str, float] | None:
    return next((p for p in points if p["fid"] <= target), None)


def time_to_target(
    full_log: Iterable[Mapping[str, Any]],
    pruned_log: Iterable[Mapping[str, Any]],
    *,
    target_fid: float | None = None,
    tolerance: float = 0.0,
    pruned_overhead_seconds: float = 0.0,
    pruned_overhead_images: float = 0.0,
) -> dict[str, Any]:
    """Speed-up to reach a target FID during training (both runs logged FID with ``--eval-every``).

    Args:
        full_log, pruned_log: ``metrics.jsonl`` entries; those with ``fid`` and an elapsed-time key count.
        target_fid: the FID to reach; default: the full run's final logged FID times ``1 + tolerance``.
        pruned_overhead_seconds / _images: embed + select + reweight cost, added to the pruned time.

    Returns:
        ``{"target_fid", "full": point | None, "pruned": point | None, "by_wall_clock", "by_images", "reached"}``;
        a point holds the step, seconds and images at which the run first reached the target.
    """
    full_pts, pruned_pts = fid_curve(full_log), fid_curve(pruned_log)
    if not full_pts:
        raise EvaluationError("the full-data training log has no FID entries; train with --eval-every to log them")
    target = float(target_fid) if target_fid is not None else full_pts[-1]["fid"] * (1.0 + tolerance)
    f_hit, p_hit = _first_reaching(full_pts, target), _first_reaching(pruned_pts, target)
    result: dict[str, Any] = {"target_fid": target, "full": f_hit, "pruned": p_hit, "reached": p_hit is not None,
                              "by_wall_clock": None, "by_images": None}
    if f_hit and p_hit:
        if f_hit["seconds"] is not None and p_hit["seconds"] is not None:
            cost = p_hit["seconds"] + pruned_overhead_seconds
            result["by_wall_clock"] = f_hit["seconds"] / cost if cost > 0 else None
        if f_hit["images"] is not None and p_hit["images"] is not None:
            cost = p_hit["images"] + pruned_overhead_images
            result["by_images"] = f_hit["images"] / cost if cost > 0 else None
    return result
