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
from typing import Any

import numpy as np
import torch

from diffprune.data import ImageDataset
from diffprune.diffusion.batches import noise_generator, to_model_input
from diffprune.diffusion.trainer import TrainingInterrupted
from diffprune.io import config_hash, hash_state_dict, read_json
from diffprune.reweighting.checkpoint import CheckpointMismatchError
from diffprune.reweighting.config import ReweightConfig
from diffprune.reweighting.sampling import ClassBalancedBatches

logger = logging.getLogger("diffprune.reweighting")

# Fields that do not change what one proxy run computes: its checkpoint stays valid when only these differ. The
# pipeline extends a finished stage for RESUME_MUTABLE only; a change of rounds reruns the stage, whose rounds
# then resume from their own checkpoints.
_RESUMABLE_FIELDS = ReweightConfig.RESUME_MUTABLE | {"rounds", "rounds_tol"}
PROXY_DIR = "proxy"  # the trainer's folder of the proxy run (state/ is its checkpoint) inside the stage folder
_NUMBERS = ("entropy", "normalized_entropy", "max_weight", "min_weight", "collapsed", "last_weights_collapsed",
            "steps", "updates", "seconds", "final_loss")


class ReweightError(ValueError):
    """The reweight stage cannot run on these inputs; the message names the problem and the fix."""


class DROInterrupted(TrainingInterrupted):
    """SIGINT/SIGTERM stopped ``run_dro`` after the trainer checkpointed; rerun with ``resume=True`` to continue."""


def check_device(name: str) -> torch.device:
    """The device the proxy trains on: accelerate's (a launch's process device, else CUDA when available).
    ``device: cpu`` on a CUDA machine is not honoured inside a process accelerate already placed; say so."""
    from diffprune.runtime import process_state, resolve_device

    resolve_device(name)  # a device this machine lacks: DeviceError now, before any compute
    actual = process_state().device
    if name != "auto" and torch.device(name).type != actual.type:
        logger.warning("reweight.device %s ignored: the proxy trains on accelerate's device %s; hide GPUs with "
                       "CUDA_VISIBLE_DEVICES='' (or ACCELERATE_USE_CPU=1) to train on the CPU", name, actual)
    return actual


def check_schedule(reference_scheduler: Any, proxy_preset: str, where: str) -> None:
    """The proxy (trained with its preset's schedule) and the reference must share betas: the pairing of the
    excess assumes both denoise the same x_t."""
    from diffprune.diffusion import create_scheduler

    proxy = create_scheduler(proxy_preset)
    ref_betas = torch.as_tensor(reference_scheduler.betas, dtype=torch.float64)
    if len(ref_betas) != len(proxy.betas) or not torch.allclose(ref_betas, proxy.betas.double(), rtol=1e-5):
        raise ReweightError(
            f"reference '{where}' has another noise schedule ({reference_scheduler.config.beta_schedule}, "
            f"T={len(ref_betas)}) than proxy preset {proxy_preset!r} ({proxy.config.beta_schedule}, T={len(proxy.betas)}); "
            "the excess compares both on the same noisy images: pick a proxy_preset with the reference's schedule"
        )


def check_dataset(dataset: ImageDataset) -> None:
    if dataset.labels is None or dataset.num_classes == 0:
        raise ReweightError(
            f"dataset '{dataset.name}' has no labels; DRO needs groups. For unlabelled data pass the selection "
            "stage's clusters as labels (ImageDataset(images, groups, group_names))"
        )
    if len(dataset) == 0:
        raise ReweightError(f"dataset '{dataset.name}' is empty")


def check_reference(model: Any, scheduler: Any, dataset: ImageDataset, where: str) -> None:
    cfg = model.config
    size = cfg.sample_size if isinstance(cfg.sample_size, int) else cfg.sample_size[0]
    if size != dataset.resolution or cfg.in_channels != dataset.channels:
        raise ReweightError(
            f"reference '{where}' models {cfg.in_channels} x {size} x {size} images but the dataset holds "
            f"{dataset.channels} x {dataset.resolution} x {dataset.resolution}; load the data at the reference's "
            "resolution and channels (data.resolution, data.channels) or train a reference (unset reference)"
        )
    if scheduler.config.prediction_type != "epsilon":
        raise ReweightError(
            f"reference '{where}' predicts {scheduler.config.prediction_type!r}; the DRO excess loss is defined "
            "for epsilon-prediction models"
        )


def build_proxy(config: ReweightConfig, dataset: ImageDataset) -> torch.nn.Module:
    """A fresh proxy of ``config.proxy_preset`` sized for the dataset, initialised from ``config.seed``."""
    from diffprune.diffusion import create_model

    overrides = {
        "sample_size": dataset.resolution,
        "in_channels": dataset.channels,
        "out_channels": dataset.channels,
        **config.model_overrides,
    }
    torch.manual_seed(config.seed)
    return create_model(config.proxy_preset, **overrides)


def _identity(config: ReweightConfig, dataset: ImageDataset, reference: torch.nn.Module) -> dict[str, Any]:
    """What a checkpoint must match to be resumed: the config (but ``_RESUMABLE_FIELDS``), the data and the
    reference's weights (a retrained or replaced reference invalidates the checkpoint)."""
    stable = config.model_dump(mode="json", exclude=set(_RESUMABLE_FIELDS))
    return {
        "config_hash": config_hash(stable),
        "dataset": dataset.fingerprint,
        "reference_weights": hash_state_dict(reference.state_dict()),
    }



class PairedBatches:
    """``batches(step)`` = (x0, labels, timesteps, noise) of a DRO step: the class-balanced batch of the hook and
    the timesteps and noise the trainer draws for it (``noise_generator(seed, step)``: t first, then the noise),
    so the null control's two references see what the proxy and the reference saw."""

    def __init__(self, config: ReweightConfig, dataset: ImageDataset, num_timesteps: int,
                 device: torch.device) -> None:
        self.seed, self.device, self.num_timesteps = config.seed, device, num_timesteps
        self.images = torch.from_numpy(np.ascontiguousarray(dataset.images)).to(device)  # uint8 images or latents
        self.labels = torch.from_numpy(dataset.labels).to(device)
        self.sampler = ClassBalancedBatches(dataset.labels, dataset.num_classes, config.batch_size, config.seed)

    def __call__(self, step: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        idx = torch.from_numpy(self.sampler.indices_at(step)).to(self.device)
        x0, y = to_model_input(self.images[idx]), self.labels[idx]
        g = noise_generator(self.seed, step, self.device)
        t = torch.randint(0, self.num_timesteps, (len(idx),), device=self.device, generator=g)
        noise = torch.randn(x0.shape, device=self.device, generator=g)
        return x0, y, t, noise


def proxy_train_config(config: ReweightConfig):
    """The ``diffusion.TrainConfig`` of the proxy: its preset and overrides, Adam at ``proxy_lr`` with
    ``proxy_warmup_steps`` of linear warm-up, ``grad_clip``, no flips (the null control pairs on the same x0),
    unconditional, one metrics line (and a cross-process stop check) per step."""
    from diffprune.diffusion import TrainConfig

    return TrainConfig(preset=config.proxy_preset, model_overrides=dict(config.model_overrides), steps=config.steps,
                       batch_size=config.batch_size, lr=config.proxy_lr(), warmup_steps=config.proxy_warmup_steps(),
                       grad_clip=config.grad_clip, hflip=False, conditional=False, seed=config.seed, ema_warmup=True,
                       checkpoint_every=config.checkpoint_every, log_every=1, mixed_precision=config.mixed_precision)


def _check_resumable(state_dir: Path, identity: dict[str, Any], steps: int) -> None:
    trainer_state = state_dir / "trainer_state.json"
    if not trainer_state.is_file():
        return
    from diffprune.reweighting.hook import saved_identity

    saved = saved_identity(state_dir) or {}
    diffs = [k for k in identity if saved.get(k) != identity[k]]
    if diffs:
        raise CheckpointMismatchError(
            f"the checkpoint in '{state_dir}' belongs to another run ({', '.join(diffs)} differ); "
            "delete that folder or write to another output folder to start afresh"
        )
    step = int(read_json(trainer_state)["step"])
    if step > steps:
        raise CheckpointMismatchError(
            f"the checkpoint in '{state_dir}' is at step {step}, beyond the requested {steps} steps; "
            "raise steps or write to another folder"
        )


def train_proxy(config: ReweightConfig, dataset: ImageDataset, reference_dir: str | Path, out_dir: Path,
                progress: bool, resume: bool):
    """One DRO run: the proxy trained by ``diffusion.train`` in ``out_dir/proxy`` with a ``DROHook`` against
    the reference in ``reference_dir``. Returns (the hook, with the run's final DRO state and log; the
    proxy/reference setting for the summary)."""
    from diffprune.diffusion import count_parameters, load_model, train
    from diffprune.reweighting.hook import DROHook
    from diffprune.reweighting.reference import reference_setting

    reference, scheduler = load_model(str(reference_dir))
    check_reference(reference, scheduler, dataset, str(reference_dir))
    check_schedule(scheduler, config.proxy_preset, str(reference_dir))
    identity = _identity(config, dataset, reference)
    proxy_dir = Path(out_dir) / PROXY_DIR
    if resume:
        _check_resumable(proxy_dir / "state", identity, config.steps)
    hook = DROHook(config, dataset, reference, scheduler, identity)
    try:
        summary = train(proxy_train_config(config), dataset, proxy_dir, resume=resume, progress=progress,
                        step_hook=hook)
    except TrainingInterrupted:
        raise DROInterrupted(
            f"DRO stopped by a signal after step {len(hook.log.losses)}/{config.steps}; the checkpoint is in "
            f"'{proxy_dir / 'state'}'; rerun to continue"
        ) from None
    if not hook.log.update_steps:
        raise ReweightError(
            f"no DRO update happened: steps ({config.steps}) < update_every ({config.update_every}); "
            "raise steps or lower update_every"
        )
    setting = reference_setting(config, count_parameters(reference), int(summary["params"]))
    if setting["setting"] != "doremi":
        logger.info("proxy and reference differ from DoReMi's setting: %s", "; ".join(setting["notes"]))
    return hook, {"proxy_reference": setting, "processes": summary["processes"],
                  "mixed_precision": summary["mixed_precision"]}


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
    from diffprune.runtime import process_state
    from diffprune.reweighting.outputs import write_outputs

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
        from diffprune.reweighting.rounds import run_rounds

        hook, extra = run_rounds(config, dataset, reference_dir, out_dir, progress, resume,
                                 reference_dataset if reference_dataset is not None else dataset)
    extra_numbers = {"rounds_run": float(len(extra["rounds"]["rounds"]))} if "rounds" in extra else {}
    if state.is_main_process:
        if null_reference_dir is not None:
            from diffprune.reweighting.null import run_null_dro, write_null_outputs

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
