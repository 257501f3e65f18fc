"""Read a run directory's files (never its Python objects) into what the report shows.

Reads: ``arms.json``, ``stages.json``, each stage's ``manifest.json``, ``selection/*/selection.json``,
``reweight/*/class_weights.json``, ``train/<arm>/metrics.jsonl``, ``eval/<arm>/metrics.json`` and
``samples/<arm>/grid.png`` and ``reference_cost.json``. A missing or unreadable file becomes a note and an empty cell, never a crash.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from diffprune.evaluation import (
    DEFAULT_TOLERANCES,
    EvaluationError,
    compute_speedup,
    fid_curve,
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
    seed: int | None = None  # the arm's training seed (a sweep pairs each arm with the full arm of its seed)
    variant: str = ""  # what the arm adds to its method beyond DRO: "+minsnr" (its own Min-SNR loss weighting)
    baseline: str | None = None  # the full-data arm its speed-ups and time to target are measured against
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
    reference: dict[str, Any] | None = None  # reference_variants: speed-ups with and without the reference's training
    time_to_target: list[dict[str, Any]] | None = None  # per tolerance: {"tolerance", "available", "trained"}

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


def collect_run(run_dir: Path, tolerances: Sequence[float] = DEFAULT_TOLERANCES) -> RunSummary:
    """Everything the report needs from one run directory; time to target at each FID tolerance."""
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
    reference_cost = None
    if (root / "reference_cost.json").is_file():
        reference_cost = _read(root / "reference_cost.json", notes, "reference cost")
    _account(arms, shared, notes, reference_cost, tolerances)
    return RunSummary(root, root.name, arms, shared, notes)


def _collect_arm(root: Path, entry: dict[str, Any], stages: dict[str, str], notes: list[str]) -> ArmResult:
    name = str(entry.get("arm"))
    paths = {k: entry.get(k) for k in ("selection", "reweight", "train", "samples", "eval")}
    arm = ArmResult(run=root.name, arm=name, method=str(entry.get("method", "?")), ratio=entry.get("ratio"),
                    reweighted=bool(entry.get("reweight")), paths=paths, seed=entry.get("seed"),
                    variant="+minsnr" if entry.get("snr_gamma") is not None else "")
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


def _train_cost(manifest: dict[str, Any]) -> tuple[float, int | None, float | None]:
    """(seconds, images, FLOPs) of a training manifest, evaluation time excluded (as ``summarise_cost`` counts it)."""
    stage = summarise_cost({"train": manifest})["stages"]["train"]
    return stage["seconds"], stage["images_processed"], stage["flops"]


def _plus(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None else a + b


def _minus(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None else a - b


def _ratio(num: float | None, den: float | None) -> float | None:
    return float(num / den) if num is not None and den else None


def reference_variants(full_train: dict[str, Any], stages: dict[str, dict[str, Any]],
                       reference_cost: dict[str, Any] | None) -> dict[str, Any]:
    """The arm's cost and speed-up with the reference "already available" (its training not counted; a given
    model's load time is) and "trained for this run" (its training counted: this run's reference stage, or the
    cost ``reference_cost.json`` states for a given model; None where that unit is unknown)."""
    ref = dict(reference_cost or {"kind": "trained by this run"})
    available = dict(stages)
    if "reference" not in stages:  # no reference model in this arm: both variants are the arm's cost
        ref, training = {}, {"seconds": 0.0, "images": 0, "flops": 0.0}
    elif ref.get("kind") == "trained by this run":
        m = available.pop("reference")
        training = {"seconds": float(m["seconds"]), "images": m.get("images_processed"), "flops": m.get("flops")}
    else:
        training = {k: ref.get(k) for k in ("seconds", "images", "flops")}
    cost = summarise_cost(available)
    full = dict(zip(("seconds", "images", "flops"), _train_cost(full_train)))
    train = dict(zip(("seconds", "images", "flops"), _train_cost(stages["train"])))
    avail = {"seconds": cost["seconds"], "images": cost["images_processed"], "flops": cost["flops"]}
    trained = {u: _plus(avail[u], None if training[u] is None else float(training[u])) for u in avail}

    def variant(total: dict[str, float | None]) -> dict[str, Any]:
        return {**total, **{f"by_{'wall_clock' if u == 'seconds' else u}": _ratio(full[u], total[u]) for u in total},
                "overheads": {u: _minus(total[u], train[u]) for u in total}}

    return {"source": ref.get("source"), "kind": ref.get("kind"), "reference_training": training,
            "available": variant(avail), "trained": variant(trained)}


def _account(arms: list[ArmResult], shared: dict[str, dict[str, Any]], notes: list[str],
             reference_cost: dict[str, Any] | None = None,
             tolerances: Sequence[float] = DEFAULT_TOLERANCES) -> None:
    for arm in arms:
        cost = arm_cost(arm, shared)
        if cost:
            try:
                arm.cost = summarise_cost(cost)
            except EvaluationError as e:
                notes.append(f"cost of {arm.arm}: {e}")
    fulls = [a for a in arms if a.method == FULL and "train" in a.manifests]
    if not fulls:
        notes.append("no full-data arm with a training manifest in this run: speed-ups are not computed")
        return
    by_seed = {}
    for a in fulls:
        by_seed.setdefault(a.seed, a)
        if not fid_curve(a.train_log):
            notes.append(f"no time to target against {a.arm}: that full-data arm logged no FID during training "
                         "(train it with train.eval_every / --eval-every N)")
    for arm in arms:
        if "train" not in arm.manifests:
            continue
        full = by_seed.get(arm.seed, fulls[0])  # same seed: the seeds' spread is not counted as a speed-up
        arm.baseline = full.arm
        full_has_curve = bool(fid_curve(full.train_log))
        stages = arm_cost(arm, shared)
        try:
            arm.speedup = compute_speedup({"train": full.manifests["train"]}, stages)
            arm.reference = reference_variants(full.manifests["train"], stages,
                                               reference_cost if "reference" in stages else None)
        except EvaluationError as e:
            notes.append(f"speed-up of {arm.arm}: {e}")
            continue
        if not full_has_curve:
            continue
        if not fid_curve(arm.train_log):
            notes.append(f"no time to target for {arm.arm}: its training log has no FID entries")
            continue
        arm.time_to_target = []
        for tol in tolerances:
            entry: dict[str, Any] = {"tolerance": float(tol)}
            per_image = {}
            fpi = arm.manifests["train"].get("flops_per_image")
            if fpi and fpi == full.manifests["train"].get("flops_per_image"):  # same model: one FLOPs per image
                per_image["flops"] = float(fpi)
            for variant in ("available", "trained"):
                overheads = {k: v for k, v in arm.reference[variant]["overheads"].items() if v is not None}
                t = time_to_target(full.train_log, arm.train_log, tolerance=tol, overheads=overheads,
                                   per_image=per_image)
                for unit, value in arm.reference[variant]["overheads"].items():
                    if value is None and unit in t["speedup"]:
                        t["speedup"][unit] = None  # that overhead is unknown: no honest speed-up in this unit
                entry[variant] = t
            arm.time_to_target.append(entry)
