"""Iterated DoReMi (``reweight.rounds`` > 1): each round's reference trains on the previous round's weights.

DoReMi (Xie et al. 2023, sec. 3, "Iterated DoReMi"): round 1 is the plain method (reference trained with
uniform domain weights, proxy DRO against it, output the averaged weights a_1); round r + 1 trains a fresh
reference with the domain weights a_r, then runs the same DRO against it and outputs a_(r+1); iterate until the
weights stop moving. Here the reference of round r + 1 is ``reference_train_config`` (the proxy's recipe and
budget, seed ``seed``) trained with class weights a_r (the trainer's ``weighting: loss``); the proxy and its
class-balanced batches are the same in every round, so round 1 is exactly the non-iterated run. Rounds stop
after ``rounds`` or when a round's weights differ from those its reference trained with by less than
``rounds_tol`` (max_k |a_r,k - a_(r-1),k|, with a_0 uniform: round 1's reference trains with uniform weights).

With ``null_control`` the null band comes from round 1's reference pair (uniform weights) and is drawn around the
last round's weights; the later rounds' references have no second seed. Each round costs one reference training
and one DRO run (the pipeline's cost accounting counts round 1 only).

Files (inside the stage folder; the top-level ``class_weights.json``, ``trajectory.npz`` and ``summary.json``
are the last round's):
    round-<r>/            the round's ``class_weights.json``, ``trajectory.npz``, plots, ``summary.json``,
                          ``proxy/`` and (r >= 2) ``reference/`` (the trainer's folder of its reference)
    rounds.json           {"rounds": [{round, reference, reference_weights, weights, max_change, trajectory}], "tol",
                          "max_rounds", "converged", "rounds_run"}
"""
from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import numpy as np

from diffprune.data import ImageDataset
from diffprune.diffusion import train
from diffprune.io import atomic_write_json
from diffprune.reweighting.config import ReweightConfig
from diffprune.reweighting.errors import ReweightError
from diffprune.reweighting.outputs import write_outputs
from diffprune.reweighting.proxy import train_proxy
from diffprune.reweighting.reference import MODEL_DIR, reference_train_config
from diffprune.reweighting.weights import weights_to_dict
from diffprune.runtime import process_state

logger = logging.getLogger("diffprune.reweighting")

ROUNDS_FILE = "rounds.json"


def round_dir(out_dir: Path, r: int) -> Path:
    return Path(out_dir) / f"round-{r}"


def round_reference(config: ReweightConfig, dataset: ImageDataset, out_dir: Path, weights: np.ndarray,
                    progress: bool) -> Path:
    """Train (or resume) the reference of a round on ``dataset`` with class weights ``weights`` (float K);
    return its model folder."""
    train(reference_train_config(config, dataset), dataset, out_dir,
          class_weights=weights_to_dict(weights, dataset.class_names), resume=True, progress=progress)
    return Path(out_dir) / MODEL_DIR


def run_rounds(config: ReweightConfig, dataset: ImageDataset, reference_dir: str | Path, out_dir: Path,
               progress: bool, resume: bool, reference_dataset: ImageDataset) -> tuple[Any, dict[str, Any]]:
    """Run up to ``config.rounds`` DRO rounds; write ``round-<r>/`` and ``rounds.json`` (main process).

    Returns (the last round's ``DROHook``, the summary extras of the last round plus ``rounds``: the record
    of ``rounds.json``)."""
    if list(reference_dataset.class_names) != list(dataset.class_names):
        raise ReweightError("the reference data of iterated DoReMi must have the coreset's classes, in order: "
                            f"{list(reference_dataset.class_names)[:5]} vs {list(dataset.class_names)[:5]}")
    main = process_state().is_main_process
    k = dataset.num_classes
    previous = np.full(k, 1.0 / k)  # round 1's reference trained with uniform weights
    reference: str | Path = reference_dir
    records: list[dict[str, Any]] = []
    converged = False
    for r in range(1, config.rounds + 1):
        folder = round_dir(out_dir, r)
        t0 = time.perf_counter()
        if r > 1:
            reference = round_reference(config, reference_dataset, folder / "reference", previous, progress)
        hook, extra = train_proxy(config, dataset, reference, folder, progress, resume)
        average = hook.dro.average
        change = float(np.abs(average - previous).max())
        records.append({"round": r, "reference": str(reference),
                        "reference_weights": weights_to_dict(previous, dataset.class_names),
                        "weights": weights_to_dict(average, dataset.class_names),
                        "max_change": change,
                        "trajectory": f"{folder.name}/trajectory.npz"})
        converged = change < config.rounds_tol  # the weights reproduce their reference's: a fixed point
        record = {"rounds": records, "tol": config.rounds_tol, "max_rounds": config.rounds,
                  "converged": converged, "rounds_run": r}
        if main:
            write_outputs(folder, hook.dro, hook.log, dataset.class_names, config, time.perf_counter() - t0,
                          progress=False, extra={**extra, "round": r})
            atomic_write_json(Path(out_dir) / ROUNDS_FILE, record)
        logger.info("DRO round %d: max |a - a_prev| = %.2e (tol %.0e)", r, change, config.rounds_tol)
        if converged:
            break
        previous = average
    return hook, {**extra, "rounds": record}
