"""``run_dro``: train a proxy DM with Group-DRO class weights against a frozen reference DM (METHOD.md stage 3).

The proxy trains through the one trainer, ``diffusion.train``, with a ``DROHook`` (``reweighting.hook``) as its
per-step hook, as DoReMi subclasses one Trainer: accelerate, many processes, mixed precision, checkpoints,
signals and resume are the trainer's. Every step, on one class-balanced batch:
  1. the trainer draws timesteps t and noise e (a generator seeded by (seed, step)) and runs the proxy; the hook
     computes the reference's unreduced loss on the same x0, t, e under ``torch.inference_mode``;
  2. the hook adds the per-class clipped excess sums (summed over processes) to an accumulator; every
     ``update_every`` steps it turns them into per-class excess losses and updates ``ClassDRO`` (DoReMi updates
     before the proxy step, so the step uses the new weights);
  3. the trainer steps the proxy on sum_k a_k * (mean loss of class k in the batch) (the hook's multipliers).
The output is ``ClassDRO.average`` (initial weights included), written as ``class_weights.json``. With
``rounds`` > 1 the stage iterates (``reweighting.rounds``, DoReMi's iterated variant).
"""
from __future__ import annotations

import logging
import time
from pathlib import Path

from diffprune.data import ImageDataset
from diffprune.io import read_json
from diffprune.reweighting.checks import check_dataset, check_device
from diffprune.reweighting.config import ReweightConfig
from diffprune.reweighting.null import run_null_dro, write_null_outputs
from diffprune.reweighting.outputs import write_outputs
from diffprune.reweighting.proxy import train_proxy
from diffprune.reweighting.rounds import run_rounds
from diffprune.runtime import process_state

logger = logging.getLogger("diffprune.reweighting")

_NUMBERS = ("entropy", "normalized_entropy", "max_weight", "min_weight", "collapsed", "last_weights_collapsed",
            "steps", "updates", "seconds", "final_loss")


def run_dro(
    config: ReweightConfig,
    dataset: ImageDataset,
    reference_dir: str | Path,
    out_dir: str | Path,
    progress: bool = True,
    resume: bool = True,
    null_reference_dir: str | Path | None = None,
    reference_dataset: ImageDataset | None = None,
) -> dict[str, float]:
    """Group DRO of a proxy DM against the reference in ``reference_dir``; write the stage's files.

    Runs as it is in one process or under ``accelerate launch`` (every process holds the same weights; the
    main process writes the files).

    Args:
        config: the reweight section.
        dataset: the coreset; ``labels`` are the groups (classes or clusters), ``class_names`` their names.
        reference_dir: a folder (or hub id) that ``diffprune.diffusion.load_model`` reads, e.g. the output of
            ``prepare_reference``.
        out_dir: receives ``class_weights.json`` ({name: weight}, sums to 1), ``trajectory.npz``
            (``weights`` S x K after each update, ``excess`` S x K scores used, ``present`` S x K, ``steps`` S,
            ``average`` K, ``initial`` K, ``loss`` per proxy step), ``weights.png``, ``trajectory.png``,
            ``summary.json`` and ``proxy/`` (the trainer's folder; ``proxy/state`` is the checkpoint). With
            ``config.rounds`` > 1 also ``rounds.json`` and ``round-<r>/`` per round (``reweighting.rounds``).
        progress: show a progress bar.
            SIGINT/SIGTERM checkpoint at the end of the current step and raise ``DROInterrupted``.
        resume: continue from ``out_dir/proxy/state`` when it belongs to the same run (raising when it does not);
            False starts afresh.
        null_reference_dir: the null control's second reference (``prepare_reference(..., null=True)``); when
            given, the same DRO also runs on it (``reweighting.null``) and writes ``null_weights.json``,
            ``null_trajectory.npz`` and ``null_control.json``; ``summary.json`` gets its band under ``null``.
        reference_dataset: the data the references of rounds 2.. train on (default ``dataset``); only used
            with ``config.rounds`` > 1.

    Returns:
        The numeric summary: entropy (nats), normalized_entropy, max_weight, min_weight, collapsed (0/1),
        last_weights_collapsed (0/1), steps, updates, seconds, final_loss; with a null control also
        null_band_halfwidth, signal_to_null and distinguishable_classes; with rounds > 1 also rounds_run.
    """
    check_dataset(dataset)
    out_dir = Path(out_dir)
    state = process_state()
    if state.is_main_process:
        out_dir.mkdir(parents=True, exist_ok=True)
    device = check_device(config.device)
    t0 = time.perf_counter()
    if config.rounds == 1:
        hook, extra = train_proxy(config, dataset, reference_dir, out_dir, progress, resume)
    else:
        hook, extra = run_rounds(config, dataset, reference_dir, out_dir, progress, resume,
                                 reference_dataset if reference_dataset is not None else dataset)
    extra_numbers = {"rounds_run": float(len(extra["rounds"]["rounds"]))} if "rounds" in extra else {}
    if state.is_main_process:
        if null_reference_dir is not None:
            null_dro, null_log = run_null_dro(config, dataset, reference_dir, null_reference_dir, progress, device)
            source = {"null_reference": str(null_reference_dir), "null_seed": None if config.null_reference
                      else config.null_reference_seed}
            extra["null"] = write_null_outputs(out_dir, null_dro, null_log, hook.dro.average, dataset.class_names,
                                               source)
        write_outputs(out_dir, hook.dro, hook.log, dataset.class_names, config, time.perf_counter() - t0,
                      progress, extra)
    state.wait_for_everyone()
    summary = read_json(out_dir / "summary.json")
    numbers = {k: float(summary[k]) for k in _NUMBERS}
    if "null" in summary:
        numbers.update({"null_band_halfwidth": summary["null"]["band_halfwidth"],
                        "signal_to_null": summary["null"]["signal_to_null"],
                        "distinguishable_classes": float(len(summary["null"]["distinguishable"]))})
    return {**numbers, **extra_numbers}
