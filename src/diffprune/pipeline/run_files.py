"""The run's own files and its cost accounting: ``config.yaml``, ``command.json``, ``arms.json``, ``stages.json``
and ``reference_cost.json`` (what the report and ``export`` read), the fingerprint of a model folder, and the
FLOP fields each stage's manifest records.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Callable

import numpy as np
from rich.console import Console

from diffprune.io import atomic_write_json, atomic_write_yaml, hash_arrays, hash_file, read_json
from diffprune.pipeline.config import FULL, RunConfig
from diffprune.pipeline.layout import RunLayout
from diffprune.provenance import full_command


def model_fingerprint(path: str | Path) -> str:
    """Hash of a diffusers model folder's weights, or of the hub id when it is not a local folder."""
    weights = sorted(Path(path).glob("*.safetensors")) if Path(path).is_dir() else []
    if weights:
        return hash_file(weights[0])
    return hash_arrays(np.frombuffer(str(path).encode(), np.uint8))


def measure_flops(console: Console, measure: Callable[[], dict[str, Any]], what: str) -> dict[str, Any]:
    """A stage's FLOP fields (``pipeline.flops``); a model FlopCounterMode cannot run is recorded, not fatal."""
    try:
        return measure()
    except Exception as e:  # noqa: BLE001 - accounting must not lose a finished stage; the reason is kept
        console.print(f"[yellow]FLOPs of {what} not measured[/]: {type(e).__name__}: {e}")
        return {"flops": None, "flops_error": f"{type(e).__name__}: {e}"}


def arms_record(cfg: RunConfig, layout: RunLayout, selection_name: Callable[[Any], str]) -> list[dict[str, Any]]:
    """``arms.json``: each compared arm and its stage folders (relative to the run directory)."""
    arms = []
    for arm in cfg.arms:
        label = arm.label()
        name = None if arm.method == FULL else selection_name(arm)
        arms.append({
            "arm": label, "method": arm.method, "seed": cfg.arm_train_config(arm).seed,
            "snr_gamma": arm.snr_gamma,  # the arm's own Min-SNR (label suffix +minsnr), not the run's
            "ratio": 1.0 if arm.method == FULL else cfg.arm_select_config(arm).ratio,
            "reweight": layout.relative(layout.reweight(selection_name(arm))) if arm.reweight else None,
            "selection": None if name is None else layout.relative(layout.selection(name)),
            "train": layout.relative(layout.train(label)), "samples": layout.relative(layout.samples(label)),
            "eval": layout.relative(layout.eval(label)),
        })
    return arms


def shared_stages(cfg: RunConfig, layout: RunLayout) -> dict[str, str]:
    """``stages.json``: the stages every arm shares (speed-up accounting sums them into each pruned arm)."""
    stages = {"embed": layout.relative(layout.features(cfg.embed))}
    if cfg.latent is not None:
        stages["latents"] = "latents"
    if any(a.reweight for a in cfg.arms):
        stages["reference"] = layout.relative(layout.reference())
        if cfg.reweight.null_control:  # a diagnostic: not charged to any arm's cost
            stages["null_reference"] = layout.relative(layout.reference(null=True))
    return stages


def write_run_files(cfg: RunConfig, layout: RunLayout, selection_name: Callable[[Any], str],
                    command: list[str] | None, run_provenance: dict[str, Any]) -> None:
    """The resolved run config, the command (with where and how it ran), the arms, the shared stages and the
    reference's cost."""
    root = layout.root
    root.mkdir(parents=True, exist_ok=True)
    atomic_write_yaml(root / "config.yaml", cfg.model_dump(mode="json"))
    if command is not None:  # set by the command line; the report shows it
        argv = ["diffprune", *command]
        atomic_write_json(root / "command.json", {
            "argv": argv, "cwd": os.getcwd(), "provenance": run_provenance,
            "command": full_command(run_provenance, argv)})
    atomic_write_json(root / "arms.json", arms_record(cfg, layout, selection_name))
    atomic_write_json(root / "stages.json", shared_stages(cfg, layout))
    if any(a.reweight for a in cfg.arms):
        atomic_write_json(root / "reference_cost.json", reference_training_cost(cfg))


def reference_training_cost(cfg: RunConfig) -> dict[str, Any]:
    """What training the DRO reference cost (``reference_cost.json``, read by the report):
    trained by this run (its reference stage manifest), a diffprune train dir (its train manifest), or a
    pre-trained model whose cost the user states in ``reweight.reference_cost`` (else unknown)."""
    rc = cfg.reweight
    if rc.reference is None:
        return {"kind": "trained by this run", "source": "the reference stage's manifest"}
    for candidate in (Path(rc.reference), Path(rc.reference).parent):
        manifest = candidate / "manifest.json"
        if manifest.is_file() and read_json(manifest).get("stage") == "train":
            m = read_json(manifest)
            return {"kind": "given", "images": m.get("images_processed"),
                    "seconds": max(0.0, float(m["seconds"]) - float(m.get("eval_seconds") or 0.0)),
                    "flops": m.get("train_flops"), "source": f"diffprune train manifest {manifest}"}
    if rc.reference_cost is not None:
        return {"kind": "given", **rc.reference_cost.model_dump(mode="json")}
    return {"kind": "given", "images": None, "seconds": None, "flops": None,
            "source": "not stated: set reweight.reference_cost (images, optionally seconds and flops)"}
