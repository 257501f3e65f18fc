"""The diffusion trainer: the original DDPM recipe on accelerate, resumable, with per-example class weights.

Runs unchanged in one process or under ``accelerate launch`` (CPU, one GPU, many GPUs or nodes). Several CPU
processes: ``ACCELERATE_USE_CPU=1 accelerate launch --multi_gpu --num_processes N ...`` (gloo; accelerate 1.15's
``--cpu --num_processes N`` starts a single process unless an MPI hostfile is given).
SIGINT/SIGTERM: one process acts at the next step, several at the next ``log_every`` step (the stop flag is
OR-reduced there so that all stop together).

One optimizer step:
  1. every process computes the same global batch (``batches.global_batch_indices``) and the same global
     timesteps / noise / flips / label dropout (one generator seeded by (seed, step)), and takes its slice;
  2. per-example epsilon-prediction loss, multiplied by a_y / p_y (p_y: the class's share of the examples;
     K * a_y for balanced classes) under uniform sampling ("loss" weighting) or not ("resample" weighting, where
     the batch itself was drawn with class probabilities a): either way class k gets the share a_k of the signal;
  3. backward (DDP averages gradients), clip, Adam, LR warm-up, then the EMA update from the synchronised
     weights (identical on every process, so EMA is correct under DDP without extra communication).

Files in ``out_dir``:
  model/          diffusers ``save_pretrained`` of the EMA UNet (safetensors, config.json), ``scheduler/``
                  and ``diffprune.json`` (preset, classes, null label, steps); written at every checkpoint
  state/          accelerate ``save_state`` (weights, optimizer, LR schedule, RNG of every process) plus
                  ``ema.safetensors`` and ``trainer_state.json`` (step = data position); swapped in atomically
  metrics.jsonl   one JSON line per ``log_every`` steps: step, loss, lr, img_per_s, images_seen, seconds; with
                  ``eval_every``, also one per evaluation: step, images_seen, train_seconds (cumulative over
                  resumes, evaluation time excluded), eval_seconds and the evaluator's values (fid, kid, ...)
  logs/           with ``log_with: [tensorboard]`` (or ``tensorboard: true``): accelerate's TensorBoard tracker
  samples/        with ``sample_every``: ``step-<N>.png`` grids of the EMA model's DDIM samples
"""
from __future__ import annotations

import json
import logging
import math
import os
import shutil
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, NamedTuple, Protocol

import numpy as np
import torch
from accelerate import Accelerator
from accelerate.state import AcceleratorState
from accelerate.utils import ProjectConfiguration, set_seed
from diffusers import DDPMScheduler

from diffprune.data import ImageDataset
from diffprune.diffusion.batches import (
    class_loss_multipliers,
    class_weight_vector,
    example_probabilities,
    global_batch_indices,
    latent_meta,
    noise_generator,
    stream_seed,
    to_model_input,
)
from diffprune.diffusion.build import build_training_model
from diffprune.diffusion.checkpoint import STATE_FILE, load_checkpoint, save_checkpoint, trajectory_hash
from diffprune.diffusion.config import TrainConfig, TrainError
from diffprune.diffusion.ema import EMA
from diffprune.diffusion.metrics_log import append_jsonl, truncate_metrics
from diffprune.diffusion.models import count_parameters
from diffprune.diffusion.objective import diffusion_loss, snr_loss_weights
from diffprune.diffusion.schedules import lr_schedule_for
from diffprune.diffusion.tracking import sample_grid, scalar_config, trackers_of
from diffprune.io import config_hash
from diffprune.runtime import Interrupted, StopOnSignal, process_state, progress_bar

log = logging.getLogger("diffprune.train")

_STREAM_MASK = 4  # the MDT masks' random stream (batches.py uses 1-3)
# evaluator(EMA model, noise scheduler, step) -> values for the metrics line (fid, kid, ...); see
# ``diffprune.evaluation.during_training.TrainingEvaluator``
Evaluator = Callable[[Any, DDPMScheduler, int], Mapping[str, Any]]


class StepHook(Protocol):
    """A per-step hook of ``train`` (e.g. ``diffprune.reweighting.hook.DROHook``, DoReMi's proxy step).

    ``batch_indices(step)``: int64 global-batch dataset indices of ``step`` (None: the trainer's own sampler).
    ``__call__(step, x0, labels, timesteps, noise, loss)``: this process' micro-batch as the trainer drew it and
    its unreduced loss (B x C x H x W, with autograd); returns float B multipliers of the per-example losses.
    ``identity()``: JSON-able, enters the checkpoint's trajectory hash. ``save(folder)`` / ``load(folder)``:
    the hook's state, written into (read from) the trainer's ``state/`` checkpoint folder.
    """

    def batch_indices(self, step: int) -> torch.Tensor | None: ...
    def __call__(self, step: int, x0: torch.Tensor, labels: torch.Tensor, timesteps: torch.Tensor,
                 noise: torch.Tensor, loss: torch.Tensor) -> torch.Tensor: ...
    def identity(self) -> Mapping[str, Any]: ...
    def save(self, folder: Path) -> None: ...
    def load(self, folder: Path) -> None: ...


class TrainingInterrupted(Interrupted):
    """Raised after SIGINT/SIGTERM once the checkpoint is safely written; rerun with ``resume=True``."""


def total_steps(config: TrainConfig, num_examples: int) -> int:
    """Optimizer steps of the budget (``config`` resolved)."""
    if config.steps is not None:
        return config.steps
    return max(1, math.ceil(config.epochs * num_examples / config.batch_size))


def train(
    config: TrainConfig,
    dataset: ImageDataset,
    out_dir: str | os.PathLike,
    class_weights: Mapping[str, float] | None = None,
    resume: bool = False,
    progress: bool = True,
    evaluator: Evaluator | None = None,
    step_hook: StepHook | None = None,
) -> dict[str, Any]:
    """Train a DDPM on ``dataset`` (uint8 N x C x H x W, mapped to [-1, 1]) and write ``out_dir``.

    ``class_weights`` ({class name: a_k}, summing to 1) apply per ``config.weighting``: "loss" multiplies each
    example's loss by a_y / p_y (p_y = n_y / N; K * a_y for balanced classes) under uniform sampling, "resample"
    draws class k with probability a_k. Both give class k the expected share a_k of the loss mass, for
    imbalanced groups (clusters, long-tailed classes) too.
    ``resume=True`` continues from ``out_dir/state`` if present (exactly: same weights as an uninterrupted run);
    ``resume=False`` starts from scratch and overwrites ``out_dir``'s training files.
    ``evaluator`` runs at every ``eval_every`` steps and at the last one (needed when ``eval_every`` > 0), on
    every process, with the torch RNG forked so that it never changes the training trajectory.
    ``step_hook`` (``StepHook``) may choose each step's batch and multiplies each example's loss by what it
    returns; its state travels with the checkpoint (needs grad_accum 1).

    Returns a summary: steps, images_seen, seconds (this call), train_seconds (cumulative over resumes, without
    evaluation), eval_seconds (this call), img_per_s, final_loss, params, resumed_from.
    Raises ``TrainingInterrupted`` after checkpointing on SIGINT/SIGTERM.
    """
    cfg = config.resolved()
    out_dir = Path(out_dir)
    steps_total = _check_inputs(cfg, dataset, evaluator)
    run = _set_up(cfg, dataset, out_dir, class_weights, step_hook, steps_total)
    accelerator = run.accelerator
    trajectory = trajectory_hash(cfg, dataset, class_weights)
    if step_hook is not None:
        trajectory = config_hash({"train": trajectory, "hook": step_hook.identity()})
    state_dir, metrics_path = out_dir / "state", out_dir / "metrics.jsonl"
    saved = _resume(run, state_dir, trajectory, steps_total, step_hook) if resume else None
    start_step = 0 if saved is None else int(saved["step"])
    if accelerator.is_main_process:
        out_dir.mkdir(parents=True, exist_ok=True)
        truncate_metrics(metrics_path, keep_through_step=start_step)
    accelerator.wait_for_everyone()
    if run.trackers:
        accelerator.init_trackers("diffprune", config=scalar_config(cfg))  # TensorBoard: logs/diffprune/

    # the metrics line in progress at the checkpoint and the training clock travel with it
    step = start_step
    step_log = start_step if saved is None else int(saved.get("log_window_start", start_step))
    run_loss = torch.full((), 0.0 if saved is None else float(saved.get("log_window_loss", 0.0)),
                          device=accelerator.device)
    seconds_before = 0.0 if saved is None else float(saved.get("train_seconds", 0.0))
    last_loss, eval_seconds = float("nan"), 0.0
    t_start = t_log = time.perf_counter()

    def train_seconds() -> float:  # training time of the whole run so far, evaluation excluded
        return seconds_before + time.perf_counter() - t_start - eval_seconds

    def checkpoint(at_step: int) -> None:
        save_checkpoint(accelerator, run.ema, cfg, dataset, out_dir, at_step, trajectory, run.scheduler,
                        log_window=(step_log, accelerator.reduce(run_loss, "mean").item()),
                        train_seconds=train_seconds(), hook=step_hook)

    saved_step = -1 if saved is None else start_step
    stop = StopOnSignal()
    bar = progress_bar("loss {task.fields[loss]:.4f}", "{task.fields[ips]:.1f} img/s",
                       enabled=progress and accelerator.is_local_main_process)
    task = bar.add_task("train", total=steps_total, completed=start_step, loss=float("nan"), ips=0.0)
    run.model.train()
    try:
        with stop, bar:
            while step < steps_total:
                batch = _global_batch(run, cfg, step, step_hook)
                for k in range(cfg.grad_accum):
                    run_loss += _micro_step(run, cfg, batch, step, k, step_hook) / cfg.grad_accum
                run.lr_schedule.step()
                run.ema.update()
                step += 1
                if evaluator is not None and cfg.eval_every and (step % cfg.eval_every == 0 or step == steps_total):
                    eval_seconds += _evaluate_during_training(evaluator, run.ema, run.scheduler, step, cfg,
                                                              accelerator, metrics_path, train_seconds())
                if step % cfg.log_every == 0 or step == steps_total:  # the only host sync of a step
                    last_loss = accelerator.reduce(run_loss, "mean").item() / (step - step_log)
                    now = time.perf_counter()
                    ips = cfg.batch_size * (step - step_log) / max(now - t_log, 1e-9)
                    _log_line(run, metrics_path, step, cfg.batch_size, last_loss, ips, now - t_start)
                    run_loss.zero_()
                    t_log, step_log = now, step
                    bar.update(task, loss=last_loss, ips=ips)
                if cfg.sample_every and step % cfg.sample_every == 0:
                    sample_grid(accelerator, run.ema.module, run.scheduler, cfg, out_dir, step, run.trackers)
                bar.update(task, completed=step)
                interrupted = stop.requested_by_any(accelerator, sync=step % cfg.log_every == 0)
                if (cfg.checkpoint_every and step % cfg.checkpoint_every == 0) or interrupted:
                    checkpoint(step)
                    saved_step = step
                if interrupted:
                    raise TrainingInterrupted(
                        f"training stopped by signal at step {step}/{steps_total}; checkpoint saved in {state_dir}; "
                        f"rerun with resume=True to continue"
                    )
            if saved_step != step:
                checkpoint(step)
    finally:
        if run.trackers:
            accelerator.end_training()
    seconds = time.perf_counter() - t_start
    return {
        "steps": step,
        "images_seen": step * cfg.batch_size,
        "seconds": seconds,
        "train_seconds": train_seconds(),
        "eval_seconds": eval_seconds,
        "img_per_s": (step - start_step) * cfg.batch_size / max(seconds, 1e-9),
        "final_loss": last_loss,
        "params": count_parameters(run.ema.module),
        "resumed_from": None if saved is None else start_step,
        "processes": accelerator.num_processes,
        "mixed_precision": accelerator.mixed_precision,
        "compiled": run.forward_model is not run.model,
    }


# ---- set-up ------------------------------------------------------------------------------------------------


@dataclass
class _Run:
    """What the training loop works with, built once by ``_set_up``."""

    accelerator: Accelerator
    model: torch.nn.Module  # as prepared by accelerate (DDP-wrapped under several processes)
    forward_model: Callable[..., Any]  # ``model``, compiled when asked
    params: list[torch.nn.Parameter]
    optimizer: Any
    lr_schedule: Any
    ema: EMA
    scheduler: DDPMScheduler
    images: torch.Tensor  # uint8 (or float latents) on the device, or pinned host memory when too large
    labels: torch.Tensor | None  # on ``images.device`` when the step needs them
    loss_multiplier: torch.Tensor | None  # float32 K, a_k / p_k on the device
    sample_probs: torch.Tensor | None  # float64 N, class-resampling probabilities
    null_label: int | None  # the label of the unconditional class (conditional models)
    micro: int  # images per process per forward pass
    trackers: list[str]


def _check_inputs(cfg: TrainConfig, dataset: ImageDataset, evaluator: Evaluator | None) -> int:
    """Every check that needs no accelerator; the number of optimizer steps."""
    n = len(dataset)
    if n == 0:
        raise TrainError("the dataset is empty; nothing to train on")
    steps_total = total_steps(cfg, n)
    if cfg.eval_every and evaluator is None:
        raise TrainError("train.eval_every needs an evaluator (diffprune.evaluation.during_training."
                         "TrainingEvaluator; `diffprune train/run` pass one); set eval_every: 0 to train without")
    if cfg.ema_decay and not cfg.ema_warmup and cfg.ema_decay**steps_total > 0.1:
        # constant-decay EMA starts at the initial weights: after S steps they still weigh decay**S
        log.warning(
            "ema_decay %.4g averages over ~%d steps but this run has %d: the saved EMA weights keep %.0f%% of the "
            "random initialisation; set train.ema_warmup=true or lower train.ema_decay (e.g. %.3g) for short runs",
            cfg.ema_decay, round(1 / (1 - cfg.ema_decay)), steps_total, 100 * cfg.ema_decay**steps_total,
            max(0.0, 1 - 3.0 / steps_total),
        )
    if cfg.conditional and dataset.labels is None:
        raise TrainError("conditional=True needs a labelled dataset; set conditional=False or provide labels")
    latent = latent_meta(dataset)
    if latent is not None and cfg.hflip:
        raise TrainError("hflip flips training tensors, and these are VAE latents, not images; set hflip: false")
    if latent is not None and cfg.sample_every:
        raise TrainError("sample_every draws pixel grids during training; latent runs decode in `diffprune sample` "
                         "instead: set sample_every: 0")
    return steps_total


def _set_up(cfg: TrainConfig, dataset: ImageDataset, out_dir: Path, class_weights: Mapping[str, float] | None,
            step_hook: StepHook | None, steps_total: int) -> _Run:
    """The accelerator, class weighting, model, EMA, optimizer, LR schedule and the data on the device."""
    _allow_precision_change(cfg.mixed_precision)
    trackers = trackers_of(cfg)
    accelerator = Accelerator(
        mixed_precision=cfg.mixed_precision,  # None: accelerate's launch flag / config / environment decides
        gradient_accumulation_steps=cfg.grad_accum,
        step_scheduler_with_optimizer=False,  # we step it once per optimizer step (batch_size is global)
        log_with=trackers or None,
        project_config=ProjectConfiguration(project_dir=str(out_dir), logging_dir=str(out_dir / "logs")),
    )
    world = accelerator.num_processes
    if cfg.batch_size % (world * cfg.grad_accum):
        raise TrainError(
            f"batch_size {cfg.batch_size} (global) must be divisible by processes x grad_accum = "
            f"{world} x {cfg.grad_accum}; pick a multiple of {world * cfg.grad_accum}"
        )
    if step_hook is not None and cfg.grad_accum != 1:
        raise TrainError("a step hook (DRO) sees one micro-batch per optimizer step: set grad_accum: 1")
    device = accelerator.device
    set_seed(cfg.seed)  # model init and dropout; data order and noise come from batches.py streams
    loss_multiplier, sample_probs = _class_weighting(cfg, dataset, class_weights, device)

    overrides = {"sample_size": dataset.resolution, "in_channels": dataset.channels,
                 "out_channels": dataset.channels}
    if cfg.conditional:
        overrides["num_class_embeds"] = dataset.num_classes + 1  # the last index is the null (unconditional) label
    if cfg.mask_ratio > 0:
        overrides["side_interpolater_depth"] = 2  # MDT's side-interpolater (model_overrides may change it)
    overrides.update(cfg.model_overrides)
    model, scheduler = build_training_model(cfg, dataset, overrides, device)
    if model.config.sample_size != dataset.resolution or model.config.in_channels != dataset.channels:
        raise TrainError(
            f"model expects {model.config.in_channels} x {model.config.sample_size} px images but the dataset has "
            f"{dataset.channels} x {dataset.resolution}; drop the sample_size/in_channels overrides or resize the data"
        )
    if cfg.channels_last:
        model = model.to(memory_format=torch.channels_last)
    model.to(device)
    ema = EMA(model, cfg.ema_decay, warmup=cfg.ema_warmup)  # starts at the initial weights
    params = list(model.parameters())  # collected once: walking the module tree every step is measurable
    optimizer = torch.optim.Adam(params, lr=cfg.lr, fused=device.type in ("cuda", "cpu"))  # fused: 5x faster step
    lr_schedule = lr_schedule_for(optimizer, cfg, steps_total)
    model, optimizer, lr_schedule = accelerator.prepare(model, optimizer, lr_schedule)

    images = torch.from_numpy(np.ascontiguousarray(dataset.images))  # ~150 MB of uint8 for CIFAR-10
    if device.type != "cpu":
        images = images.to(device) if images.numel() < (1 << 31) else images.pin_memory()
    need_labels = cfg.conditional or loss_multiplier is not None or step_hook is not None
    labels = torch.from_numpy(dataset.labels).to(images.device) if need_labels else None
    return _Run(
        accelerator=accelerator, model=model,
        forward_model=torch.compile(model) if should_compile(cfg.compile, device, steps_total) else model,
        params=params, optimizer=optimizer, lr_schedule=lr_schedule, ema=ema, scheduler=scheduler,
        images=images, labels=labels, loss_multiplier=loss_multiplier, sample_probs=sample_probs,
        null_label=dataset.num_classes if cfg.conditional else None,
        micro=cfg.batch_size // (world * cfg.grad_accum), trackers=trackers,
    )


# ``compile: auto`` compiles runs of at least this many steps, where compiling (minutes, once per process and
# model shape; inductor caches it on disk) costs little next to the steps it speeds up (docs/benchmarks.md)
AUTO_COMPILE_MIN_STEPS = {"cuda": 10_000, "cpu": 20_000}


def should_compile(setting: bool | str, device: torch.device, steps: int) -> bool:
    """Whether ``train.compile`` (True, False or "auto") compiles a run of ``steps`` steps on ``device``."""
    if setting != "auto":
        return bool(setting)
    min_steps = AUTO_COMPILE_MIN_STEPS.get(device.type)
    has_compiler = device.type != "cpu" or shutil.which("c++") is not None  # inductor builds C++ on a CPU
    return min_steps is not None and steps >= min_steps and has_compiler


def _class_weighting(cfg: TrainConfig, dataset: ImageDataset, class_weights: Mapping[str, float] | None,
                     device: torch.device) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """Class weights as per-class loss multipliers a_k / p_k ("loss") or per-example probabilities ("resample")."""
    if class_weights is None:
        return None, None
    if dataset.labels is None:
        raise TrainError("class_weights need a labelled dataset (labels or cluster ids); this one has none")
    a = class_weight_vector(class_weights, dataset.class_names)
    if cfg.weighting == "loss":
        return torch.tensor(class_loss_multipliers(dataset.labels, a), dtype=torch.float32, device=device), None
    return None, torch.from_numpy(example_probabilities(dataset.labels, a))


def _resume(run: _Run, state_dir: Path, trajectory: str, steps_total: int,
            step_hook: StepHook | None) -> dict[str, Any] | None:
    """Load the checkpoint in ``state_dir`` into ``run`` (and the hook); its trainer state, None without one."""
    if not (state_dir / STATE_FILE).exists():
        return None
    saved = load_checkpoint(run.accelerator, run.ema, state_dir, trajectory)
    if int(saved["step"]) > steps_total:  # a checkpoint cannot be rewound: extending only goes forward
        raise TrainError(f"the checkpoint in {state_dir} is at step {saved['step']}, past this run's {steps_total} "
                         f"steps; raise steps (or epochs), or start afresh with resume=False (--force)")
    if step_hook is not None:
        step_hook.load(state_dir)
    return saved


# ---- one step ----------------------------------------------------------------------------------------------


class _GlobalBatch(NamedTuple):
    """One optimizer step's draws for the whole global batch, identical on every process."""

    indices: torch.Tensor  # int64 dataset rows, on ``images.device``
    timesteps: torch.Tensor
    noise: torch.Tensor
    flips: torch.Tensor  # bool: flip this example horizontally
    drops: torch.Tensor  # bool: replace this example's label by the null label


def _global_batch(run: _Run, cfg: TrainConfig, step: int, step_hook: StepHook | None) -> _GlobalBatch:
    idx = None if step_hook is None else step_hook.batch_indices(step)
    if idx is None:
        idx = global_batch_indices(step, cfg.batch_size, len(run.images), cfg.seed, run.sample_probs)
    device = run.accelerator.device
    g = noise_generator(cfg.seed, step, device)
    timesteps = torch.randint(0, run.scheduler.config.num_train_timesteps, (cfg.batch_size,), device=device,
                              generator=g)
    noise = torch.randn((cfg.batch_size, *run.images.shape[1:]), device=device, generator=g)
    flips = torch.rand(cfg.batch_size, device=device, generator=g) < 0.5
    drops = torch.rand(cfg.batch_size, device=device, generator=g) < cfg.cfg_dropout
    return _GlobalBatch(to_device_async(idx, run.images.device), timesteps, noise, flips, drops)


def _micro_step(run: _Run, cfg: TrainConfig, batch: _GlobalBatch, step: int, k: int,
                step_hook: StepHook | None) -> torch.Tensor:
    """Forward, backward and (at the last micro-batch) the optimizer step of this process' micro-batch ``k``.
    Returns its loss, detached and left on the device: nothing here waits for the device."""
    accelerator, device = run.accelerator, run.accelerator.device
    lo = (k * accelerator.num_processes + accelerator.process_index) * run.micro
    sl = slice(lo, lo + run.micro)
    x0 = to_model_input(to_device_async(run.images[batch.indices[sl]], device))
    if cfg.hflip:
        x0 = torch.where(batch.flips[sl, None, None, None], x0.flip(3), x0)
    if cfg.channels_last:
        x0 = x0.contiguous(memory_format=torch.channels_last)
    y = None if run.labels is None else to_device_async(run.labels[batch.indices[sl]], device)
    cond = None if not cfg.conditional else torch.where(batch.drops[sl], torch.full_like(y, run.null_label), y)
    with accelerator.accumulate(run.model):
        unreduced = diffusion_loss(
            run.forward_model, run.scheduler, x0, batch.timesteps[sl], batch.noise[sl], cond,
            mask_ratio=cfg.mask_ratio, mask_generator=_mask_generator(cfg, step, k, accelerator.process_index, device),
        )
        per_example = unreduced.mean((1, 2, 3)) * snr_loss_weights(batch.timesteps[sl], run.scheduler, cfg.snr_gamma)
        if step_hook is not None:
            per_example = per_example * step_hook(step, x0, y, batch.timesteps[sl], batch.noise[sl], unreduced)
        if run.loss_multiplier is not None:
            per_example = per_example * run.loss_multiplier[y]
        loss = per_example.mean()
        accelerator.backward(loss)
        if accelerator.sync_gradients and cfg.grad_clip is not None:
            accelerator.clip_grad_norm_(run.params, cfg.grad_clip)
        run.optimizer.step()
        run.optimizer.zero_grad(set_to_none=True)
    return loss.detach()


def to_device_async(tensor: torch.Tensor, device: torch.device) -> torch.Tensor:
    """``tensor`` on ``device`` without making the host wait: a host tensor bound for an accelerator is pinned
    first, so the copy is asynchronous (a pageable copy synchronises the stream with the host)."""
    if tensor.device == device:
        return tensor
    if tensor.device.type == "cpu" and device.type == "cuda":
        return tensor.pin_memory().to(device, non_blocking=True)
    return tensor.to(device)


def _log_line(run: _Run, metrics_path: Path, step: int, batch_size: int, loss: float, ips: float,
              seconds: float) -> None:
    row = {"step": step, "loss": loss, "lr": run.lr_schedule.get_last_lr()[0], "img_per_s": ips,
           "images_seen": step * batch_size, "seconds": seconds}
    if run.accelerator.is_main_process:
        append_jsonl(metrics_path, row)
    if run.trackers:
        run.accelerator.log({f"train/{key}": row[key] for key in ("loss", "lr", "img_per_s")}, step=step)


def _evaluate_during_training(evaluator: Evaluator, ema: EMA, scheduler: DDPMScheduler, step: int,
                              cfg: TrainConfig, accelerator: Accelerator, metrics_path: Path,
                              train_seconds: float) -> float:
    """Run ``evaluator`` on the EMA model (every process, RNG forked), append its line; return its seconds."""
    t0 = time.perf_counter()
    devices = [accelerator.device] if accelerator.device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        values = dict(evaluator(ema.module, scheduler, step))
    accelerator.wait_for_everyone()
    seconds = time.perf_counter() - t0
    if accelerator.is_main_process:
        append_jsonl(metrics_path, {"step": step, "images_seen": step * cfg.batch_size,
                                     "train_seconds": train_seconds, "eval_seconds": seconds, **values})
    return seconds



def _allow_precision_change(mixed_precision: str | None) -> None:
    """accelerate fixes the precision once per process. A single (non-launched) process may run several
    trainings with different precisions (e.g. a reference model then the arms), so reset its state then;
    under ``accelerate launch`` a change is an error, as accelerate would raise."""
    state = AcceleratorState._shared_state
    if not state or (mixed_precision is not None and state.get("_mixed_precision") in (None, mixed_precision)):
        return
    if process_state().num_processes > 1:
        if mixed_precision is None:  # the launch's precision stays
            return
        raise TrainError(
            f"this launched process already trains with mixed_precision={state.get('_mixed_precision')!r}; "
            f"use the same precision for every training in one `accelerate launch`, or launch separately"
        )
    AcceleratorState._reset_state()


def _mask_generator(cfg: TrainConfig, step: int, micro: int, rank: int,
                    device: torch.device) -> torch.Generator | None:
    """The generator of MDT token masks for one micro-batch of one process (None when masking is off).
    Seeded by (seed, step, micro-batch, process), so a resumed run draws the same masks."""
    if cfg.mask_ratio <= 0:
        return None
    index = (step * 4096 + micro) * 4096 + rank
    return torch.Generator(device=device).manual_seed(stream_seed(cfg.seed, _STREAM_MASK, index))
