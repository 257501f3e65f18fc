"""Read a run directory's files (never its Python objects) into what the report shows.

Reads: ``arms.json``, ``stages.json``, each stage's ``manifest.json``, ``selection/*/selection.json``,
``reweight/*/class_weights.json``, ``train/<arm>/metrics.jsonl``, ``eval/<arm>/metrics.json`` and
``samples/<arm>/grid.png``. A missing or unreadable file becomes a note and an empty cell, never a crash.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from diffprune.evaluation import (
    EvaluationError,
    compute_speedup,
    read_metrics_jsonl,
    summarise_cost,
    time_to_target,
)
from diffprune.report.errors import ReportError

FULL = "full"
NO_EMBED_METHODS = ("full", "random")  # selections that do not read features: embedding is not their cost


@dataclass
class ArmResult:
    run: str
    arm: str
    method: str
    ratio: float | None
    reweighted: bool
    paths: dict[str, str | None]
    selection: dict[str, Any] | None = None
    class_weights: dict[str, float] | None = None
    null_control: dict[str, Any] | None = None  # reweight/<sel>/null_control.json: the null band and flags
    dro_summary: dict[str, Any] | None = None  # reweight/<sel>/summary.json
    metrics: dict[str, Any] | None = None
    grid: Path | None = None
    manifests: dict[str, dict[str, Any]] = field(default_factory=dict)
    train_log: list[dict[str, Any]] = field(default_factory=list)
    cost: dict[str, Any] | None = None  # summarise_cost of every stage the arm needed
    speedup: dict[str, Any] | None = None
    time_to_target: dict[str, Any] | None = None

    @property
    def label(self) -> str:
        return self.arm

    def metric(self, name: str) -> Any:
        return None if self.metrics is None else self.metrics.get(name)

    @property
    def train_images(self) -> int | None:
        m = self.manifests.get("train")
        if m is None:
            return None
        if m.get("images_processed") is not None:
            return int(m["images_processed"])
        return (m.get("summary") or {}).get("images_seen")


@dataclass
class RunSummary:
    path: Path
    name: str
    arms: list[ArmResult]
    shared: dict[str, dict[str, Any]]
    notes: list[str]


def _read(path: Path, notes: list[str], what: str) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        notes.append(f"missing {what}: `{path}`")
    except (OSError, ValueError) as e:
        notes.append(f"unreadable {what}: `{path}` ({e})")
    return None


def _manifest(root: Path, rel: str | None, notes: list[str], stage: str) -> dict[str, Any] | None:
    if not rel:
        return None
    m = _read(root / rel / "manifest.json", notes, f"{stage} manifest")
    return m if isinstance(m, dict) else None


def collect_run(run_dir: Path) -> RunSummary:
    """Everything the report needs from one run directory."""
    root = Path(run_dir)
    notes: list[str] = []
    arms_raw = _read(root / "arms.json", notes, "arms list")
    if not isinstance(arms_raw, list):
        raise ReportError(
            f"{root} has no readable arms.json, so it is not a diffprune run directory "
            "(run `diffprune run CONFIG` or pass the folder that holds arms.json)"
        )
    stages = _read(root / "stages.json", notes, "shared stages list") or {}
    shared = {}
    for name, rel in stages.items():
        if (root / rel / "manifest.json").is_file():
            shared[name] = _manifest(root, rel, notes, name)
    arms = [_collect_arm(root, entry, stages, notes) for entry in arms_raw]
    _account(arms, shared, notes)
    return RunSummary(root, root.name, arms, shared, notes)


def _collect_arm(root: Path, entry: dict[str, Any], stages: dict[str, str], notes: list[str]) -> ArmResult:
    name = str(entry.get("arm"))
    paths = {k: entry.get(k) for k in ("selection", "reweight", "train", "samples", "eval")}
    arm = ArmResult(run=root.name, arm=name, method=str(entry.get("method", "?")), ratio=entry.get("ratio"),
                    reweighted=bool(entry.get("reweight")), paths=paths)
    if paths["selection"]:
        arm.selection = _read(root / paths["selection"] / "selection.json", notes, f"selection of {name}")
        arm.manifests["select"] = _manifest(root, paths["selection"], notes, "select")
    if paths["reweight"]:
        arm.class_weights = _read(root / paths["reweight"] / "class_weights.json", notes, f"class weights of {name}")
        arm.manifests["reweight"] = _manifest(root, paths["reweight"], notes, "reweight")
        if (root / paths["reweight"] / "null_control.json").is_file():
            arm.null_control = _read(root / paths["reweight"] / "null_control.json", notes, f"null control of {name}")
        if (root / paths["reweight"] / "summary.json").is_file():
            arm.dro_summary = _read(root / paths["reweight"] / "summary.json", notes, f"DRO summary of {name}")
        ref = stages.get("reference")
        if ref and (root / ref / "manifest.json").is_file():
            arm.manifests["reference"] = _manifest(root, ref, notes, "reference")
        elif ref and paths["selection"]:
            per_sel = f"{ref}/{Path(paths['selection']).name}"
            arm.manifests["reference"] = _manifest(root, per_sel, notes, "reference")
    for stage, key in (("train", "train"), ("sample", "samples"), ("evaluate", "eval")):
        arm.manifests[stage] = _manifest(root, paths[key], notes, stage)
    if paths["train"] and (root / paths["train"] / "metrics.jsonl").is_file():
        try:
            arm.train_log = read_metrics_jsonl(root / paths["train"] / "metrics.jsonl")
        except (OSError, ValueError) as e:
            notes.append(f"unreadable training log of {name}: {e}")
    if paths["eval"]:
        arm.metrics = _read(root / paths["eval"] / "metrics.json", notes, f"metrics of {name}")
    if paths["samples"]:
        grid = root / paths["samples"] / "grid.png"
        if grid.is_file():
            arm.grid = grid
        else:
            notes.append(f"missing sample grid of {name}: `{grid}`")
    arm.manifests = {k: v for k, v in arm.manifests.items() if v is not None}
    return arm


def arm_cost(arm: ArmResult, shared: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Every manifest whose work the arm needed: shared embedding (unless the method reads no features),
    selection, reference and DRO (if reweighted), and training."""
    cost = {}
    if arm.method not in NO_EMBED_METHODS and "embed" in shared:
        cost["embed"] = shared["embed"]
    for stage in ("select", "reference", "reweight", "train"):
        if stage in arm.manifests:
            cost[stage] = arm.manifests[stage]
    return cost


def _account(arms: list[ArmResult], shared: dict[str, dict[str, Any]], notes: list[str]) -> None:
    for arm in arms:
        cost = arm_cost(arm, shared)
        if cost:
            try:
                arm.cost = summarise_cost(cost)
            except EvaluationError as e:
                notes.append(f"cost of {arm.arm}: {e}")
    full = next((a for a in arms if a.method == FULL and "train" in a.manifests), None)
    if full is None:
        notes.append("no full-data arm with a training manifest in this run: speed-ups are not computed")
        return
    for arm in arms:
        if "train" not in arm.manifests:
            continue
        try:
            arm.speedup = compute_speedup({"train": full.manifests["train"]}, arm_cost(arm, shared))
        except EvaluationError as e:
            notes.append(f"speed-up of {arm.arm}: {e}")
            continue
        if full.train_log and arm.train_log:
            overhead_s = arm.speedup["pruned"]["overhead_seconds"]
            overhead_i = sum(int(s["images_processed"] or 0) for n, s in arm.speedup["pruned"]["stages"].items()
                             if n != "train")
            try:
                arm.time_to_target = time_to_target(full.train_log, arm.train_log,
                                                    pruned_overhead_seconds=overhead_s,
                                                    pruned_overhead_images=overhead_i)
            except EvaluationError:
                pass
