"""Sweeps: a grid of methods x ratios x seeds as the arms of one run, so every shared stage (features,
the full-data baseline, the DRO reference) is computed once and every finished cell is a cache hit.

``results.csv`` / ``results.json`` hold one row per arm; ``results.md`` groups the seeds (mean +- std).

Order: each seed's full-data arm comes first, then the methods x ratios of that seed. With
``train.stop_at_target`` a pruned arm's target is its seed's full arm's final value, so the full arm must be
trained before it; ``Pipeline.train`` guarantees that by training (or waiting on the folder lock of) the full arm
first, so the order only decides what runs first and any order is safe. To keep ``--devices N`` workers from
waiting on each other, the full arms of all seeds then come first.
Method tokens: ``gaussian+dro`` adds DRO class weights, ``gaussian+minsnr`` Min-SNR-5 loss weighting
(``train.snr_gamma`` for that arm only), ``gaussian+dro+minsnr`` both.
"""
from __future__ import annotations

import csv
import io
import math
from collections import defaultdict
from pathlib import Path
from typing import Any

from diffprune.config import ConfigError, validate_config
from diffprune.io import atomic_write_json, atomic_write_text, read_json
from diffprune.pipeline.config import FULL, RunConfig


MIN_SNR_GAMMA = 5.0  # Hang et al. 2023's gamma, for the "+minsnr" arms of a sweep
SUFFIXES = ("dro", "minsnr")


def parse_arm_token(token: str) -> dict[str, Any]:
    """``gaussian+dro`` -> {method: gaussian, reweight: True}; ``gaussian+minsnr`` adds snr_gamma 5 (Min-SNR);
    the suffixes combine (``gaussian+dro+minsnr``)."""
    method, *extras = token.strip().split("+")
    bad = [e for e in extras if e not in SUFFIXES]
    if bad or len(set(extras)) < len(extras):
        raise ConfigError(f"--methods: '{token}': the only suffixes are '+dro' and '+minsnr', each at most once "
                          "(e.g. gaussian+dro, gaussian+minsnr)")
    arm: dict[str, Any] = {"method": method, "reweight": "dro" in extras}
    if "minsnr" in extras:
        arm["snr_gamma"] = MIN_SNR_GAMMA
    return arm


def parse_method(token: str) -> tuple[str, bool]:
    """``gaussian+dro`` -> ("gaussian", True); ``random`` -> ("random", False)."""
    arm = parse_arm_token(token)
    return arm["method"], arm["reweight"]


def sweep_config(base: RunConfig, methods: list[str], ratios: list[float], seeds: list[int],
                 full: bool = True) -> RunConfig:
    """The base config with its arms replaced by the grid (plus one full-data arm per seed)."""
    if not methods or not ratios or not seeds:
        raise ConfigError("a sweep needs at least one method, one ratio and one seed")
    arms: list[dict[str, Any]] = []
    for seed in seeds:
        if full:
            arms.append({"method": FULL, "seed": seed})
        for token in methods:
            arm = parse_arm_token(token)
            if arm["method"] == FULL:
                continue
            for ratio in ratios:
                arms.append({**arm, "ratio": ratio, "seed": seed})
    if base.train.stop_at_target is not None:  # every pruned arm waits for its seed's full arm: train those first
        arms.sort(key=lambda a: a["method"] != FULL)
    data = base.model_dump(mode="json")
    data["arms"] = arms
    return validate_config(RunConfig, data, prefix="sweep")


def collect_results(run_dir: Path) -> list[dict[str, Any]]:
    """One row per arm: headline metrics, training cost, overheads and speed-up, as the report accounts them."""
    from diffprune.report import collect_run

    listed = {a["arm"]: a for a in read_json(Path(run_dir) / "arms.json")}
    rows = []
    for arm in collect_run(Path(run_dir)).arms:
        train = arm.manifests.get("train") or {}
        total = (arm.cost or {}).get("seconds")
        # the train manifest's seconds include the evaluations during training; the cost (total) does not
        train_seconds = None if "seconds" not in train else round(
            float(train["seconds"]) - float(train.get("eval_seconds") or 0.0), 3)
        rows.append({
            "arm": arm.arm, "method": arm.method + ("+dro" if arm.reweighted else "")
            + arm.variant,
            "ratio": 1.0 if arm.method == FULL else arm.ratio, "seed": (listed.get(arm.arm) or {}).get("seed"),
            **{m: arm.metric(m) for m in ("fid", "kid", "precision", "recall", "classifier_fd")},
            "train_seconds": train_seconds, "eval_seconds": train.get("eval_seconds"),
            "overhead_seconds": None if total is None else round(total - (train_seconds or 0.0), 3),
            # every stage but training, a DRO reference trained by the run included (the time-to-target overheads)
            "overhead_images": (((arm.reference or {}).get("trained") or {}).get("overheads") or {}).get("images"),
            "images_seen": arm.train_images,
            "speedup": (arm.speedup or {}).get("by_wall_clock"),
            "speedup_images": (arm.speedup or {}).get("by_images"),
        })
    return rows


def _mean_std(values: list[float]) -> str:
    vals = [v for v in values if v is not None and math.isfinite(v)]
    if not vals:
        return "-"
    mean = sum(vals) / len(vals)
    if len(vals) == 1:
        return f"{mean:.3g}"
    std = math.sqrt(sum((v - mean) ** 2 for v in vals) / (len(vals) - 1))
    return f"{mean:.3g} ± {std:.2g}"


def write_results(run_dir: Path, rows: list[dict[str, Any]]) -> Path:
    """results.csv, results.json and results.md (mean ± sample std over seeds) in ``run_dir``."""
    run_dir = Path(run_dir)
    atomic_write_json(run_dir / "results.json", rows)
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(rows[0]) if rows else ["arm"])
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_text(run_dir / "results.csv", buf.getvalue())
    groups: dict[tuple[str, float], list[dict[str, Any]]] = defaultdict(list)
    for r in rows:
        groups[(r["method"], r["ratio"])].append(r)
    cols = ["fid", "kid", "precision", "recall", "classifier_fd", "speedup", "speedup_images"]
    lines = ["| method | ratio | seeds | " + " | ".join(cols) + " |", "|" + " --- |" * (3 + len(cols))]
    for (method, ratio), rs in sorted(groups.items(), key=lambda kv: (kv[0][1], kv[0][0])):
        cells = [_mean_std([r[c] for r in rs]) for c in cols]
        lines.append(f"| {method} | {ratio:g} | {len(rs)} | " + " | ".join(cells) + " |")
    path = run_dir / "results.md"
    atomic_write_text(path, "\n".join(lines) + "\n")
    return path
