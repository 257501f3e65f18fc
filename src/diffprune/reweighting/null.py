"""The null control of the DRO stage: the weights the estimator produces from noise alone.

A second reference of the same recipe and another seed stands in for the proxy: both models are frozen and
equally good, so every class's true excess is zero. The same DRO (estimator, eta, smoothing, ``update_every``,
the very same batches, timesteps and noise) runs on their paired losses; how far its averaged weights move from
uniform is the noise floor of the real weights:

    band half-width  d = max_k |a_null_k - 1/K|
    a real weight a_k is indistinguishable from noise when |a_k - 1/K| <= d

Files (next to the real ``class_weights.json``, which keeps its plain {class: weight} contract):
    null_weights.json     {class: weight} of the null DRO (sums to 1)
    null_trajectory.npz   ``weights`` S x K, ``excess`` S x K, ``steps`` S, ``average`` K
    null_control.json     the band, the flags and where the null reference came from
"""
from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from diffprune.data import ImageDataset
from diffprune.diffusion import diffusion_loss, load_model
from diffprune.io import atomic_save_npz, atomic_write_json
from diffprune.reweighting.checkpoint import RunLog
from diffprune.reweighting.checks import check_reference
from diffprune.reweighting.config import ReweightConfig
from diffprune.reweighting.dro import ClassDRO
from diffprune.reweighting.errors import ReweightError
from diffprune.reweighting.excess import ExcessAccumulator, TimestepNormaliser, per_class_excess_sums
from diffprune.reweighting.hook import accumulate_and_update, class_labels_for
from diffprune.reweighting.sampling import PairedBatches
from diffprune.reweighting.weights import save_class_weights, weights_to_dict
from diffprune.runtime import progress_bar

logger = logging.getLogger("diffprune.reweighting")

NULL_WEIGHTS = "null_weights.json"
NULL_CONTROL = "null_control.json"


def null_band(real: np.ndarray, null: np.ndarray, class_names: Sequence[str]) -> dict[str, Any]:
    """Compare real weights (float K) with null weights (float K): the band half-width d and, per class,
    whether the real weight's distance from uniform exceeds it."""
    real, null = np.asarray(real, dtype=np.float64), np.asarray(null, dtype=np.float64)
    uniform = 1.0 / len(real)
    d = float(np.abs(null - uniform).max())
    signal = np.abs(real - uniform) > d
    return {
        "uniform": uniform,
        "band_halfwidth": d,
        "band": [uniform - d, uniform + d],
        "distinguishable": [str(n) for n, s in zip(class_names, signal) if s],
        "indistinguishable": [str(n) for n, s in zip(class_names, signal) if not s],
        "real_max_deviation": float(np.abs(real - uniform).max()),
        "signal_to_null": float(np.abs(real - uniform).max() / d) if d > 0 else float("inf"),
    }


def run_null_dro(
    config: ReweightConfig,
    dataset: ImageDataset,
    reference_dir: str | Path,
    null_reference_dir: str | Path,
    progress: bool = True,
    device: torch.device | str = "cpu",
) -> tuple[ClassDRO, RunLog]:
    """The DRO of ``config`` driven by the paired excess of the null reference over the reference (both frozen,
    forward passes only, on ``device``; no checkpoints: it costs about two reference forwards per step). The
    batches, timesteps and noise are those of the real DRO (``PairedBatches``)."""
    device = torch.device(device)
    reference, scheduler = load_model(str(reference_dir))
    check_reference(reference, scheduler, dataset, str(reference_dir))
    other, _ = load_model(str(null_reference_dir))
    check_reference(other, scheduler, dataset, str(null_reference_dir))
    reference, other = (m.to(device).eval().requires_grad_(False) for m in (reference, other))
    k, t_max = dataset.num_classes, int(scheduler.config.num_train_timesteps)
    batches = PairedBatches(config, dataset, t_max, device)
    dro = ClassDRO(k, eta=config.eta, smoothing=config.smoothing)
    acc, normaliser = ExcessAccumulator(k), TimestepNormaliser()
    log = RunLog([], [], [], acc.sums, acc.counts, 0)
    with progress_bar(enabled=progress) as bar, torch.inference_mode():
        task = bar.add_task("null control", total=config.steps)
        for step in range(config.steps):
            x0, y, t, noise = batches(step)
            ref_loss = diffusion_loss(reference, scheduler, x0, t, noise, class_labels_for(reference, y, k))
            null_loss = diffusion_loss(other, scheduler, x0, t, noise, class_labels_for(other, y, k))
            sums, counts = per_class_excess_sums(null_loss, ref_loss, y, k, mode=config.estimator, timesteps=t,
                                                 num_timesteps=t_max, normaliser=normaliser)
            accumulate_and_update(acc, dro, log, step, sums, counts, config.update_every)
            bar.update(task, advance=1)
    if not log.update_steps:
        raise ReweightError(f"no null DRO update happened: steps ({config.steps}) < update_every "
                            f"({config.update_every})")
    return dro, log


def write_null_outputs(out_dir: Path, dro: ClassDRO, log: RunLog, real: np.ndarray, class_names: Sequence[str],
                       source: dict[str, Any]) -> dict[str, Any]:
    """Write null_weights.json, null_trajectory.npz and null_control.json; return the null_control record."""
    save_class_weights(out_dir / NULL_WEIGHTS, dro.average, class_names)
    atomic_save_npz(out_dir / "null_trajectory.npz", weights=dro.history, excess=dro.score_history,
                    steps=np.asarray(log.update_steps, dtype=np.int64), average=dro.average,
                    class_names=np.asarray(list(class_names), dtype=str))
    record = {**null_band(real, dro.average, class_names), "weights": weights_to_dict(dro.average, class_names),
              **source}
    atomic_write_json(out_dir / NULL_CONTROL, record)
    logger.info("null control: band 1/K +- %.4f; %d of %d classes outside it", record["band_halfwidth"],
                len(record["distinguishable"]), len(class_names))
    return record
