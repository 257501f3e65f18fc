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

import logging
import os
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Callable, NamedTuple, Protocol

import torch
from accelerate import Accelerator
from diffusers import DDPMScheduler

from diffprune.data import ImageDataset
from diffprune.diffusion.batches import (
    global_batch_indices,
    noise_generator,
    stream_seed,
    to_device_async,
    to_model_input,
)
from diffprune.diffusion.checkpoint import (
    STATE_FILE, load_checkpoint, refresh_model, save_checkpoint, trajectory_hash,
)
from diffprune.diffusion.config import TrainConfig, TrainError
from diffprune.diffusion.ema import EMA
from diffprune.diffusion.metrics_log import append_jsonl, truncate_metrics
from diffprune.diffusion.models import count_parameters
from diffprune.diffusion.objective import diffusion_loss, snr_loss_weights
from diffprune.diffusion.setup import TrainingRun, check_inputs, set_up
from diffprune.diffusion.tracking import sample_grid, scalar_config
from diffprune.io import config_hash
from diffprune.runtime import Interrupted, StopOnSignal, progress_bar

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
    ``mixed_precision``: set by ``train`` before the first step to the precision the model trains in ("no",
    "bf16", "fp16"), so that the hook's own forward passes match it.
    ``identity()``: JSON-able, enters the checkpoint's trajectory hash. ``save(folder)`` / ``load(folder)``:
    the hook's state, written into (read from) the trainer's ``state/`` checkpoint folder.
    """

    mixed_precision: str

    def batch_indices(self, step: int) -> torch.Tensor | None: ...
    def __call__(self, step: int, x0: torch.Tensor, labels: torch.Tensor, timesteps: torch.Tensor,
                 noise: torch.Tensor, loss: torch.Tensor) -> torch.Tensor: ...
    def identity(self) -> Mapping[str, Any]: ...
    def save(self, folder: Path) -> None: ...
    def load(self, folder: Path) -> None: ...


class TrainingInterrupted(Interrupted):
    """Raised after SIGINT/SIGTERM once the checkpoint is safely written; rerun with ``resume=True``."""


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
    steps_total = check_inputs(cfg, dataset, has_evaluator=evaluator is not None)
    run = set_up(cfg, dataset, out_dir, class_weights, step_hook, steps_total)
    accelerator = run.accelerator
    trajectory = trajectory_hash(cfg, dataset, class_weights)
    if step_hook is not None:
        trajectory = config_hash({"train": trajectory, "hook": step_hook.identity()})
    state_dir, metrics_path = out_dir / "state", out_dir / "metrics.jsonl"
    saved = _resume(run, cfg, dataset, state_dir, trajectory, steps_total, step_hook) if resume else None
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


def _resume(run: TrainingRun, cfg: TrainConfig, dataset: ImageDataset, state_dir: Path, trajectory: str,
            steps_total: int, step_hook: StepHook | None) -> dict[str, Any] | None:
    """Load the checkpoint in ``state_dir`` into ``run`` (and the hook); its trainer state, None without one.
    A checkpoint at the last step leaves nothing to train: ``model/`` must then be that checkpoint's model
    (``refresh_model`` rewrites it when its checksum differs from the one the state recorded)."""
    if not (state_dir / STATE_FILE).exists():
        return None
    saved = load_checkpoint(run.accelerator, run.ema, state_dir, trajectory)
    if int(saved["step"]) > steps_total:  # a checkpoint cannot be rewound: extending only goes forward
        raise TrainError(f"the checkpoint in {state_dir} is at step {saved['step']}, past this run's {steps_total} "
                         f"steps; raise steps (or epochs), or start afresh with resume=False (--force)")
    if step_hook is not None:
        step_hook.load(state_dir)
    if int(saved["step"]) == steps_total:
        refresh_model(run.accelerator, run.ema, cfg, dataset, state_dir.parent, saved, run.scheduler)
    return saved


# ---- one step ----------------------------------------------------------------------------------------------


class _GlobalBatch(NamedTuple):
    """One optimizer step's draws for the whole global batch, identical on every process."""

    indices: torch.Tensor  # int64 dataset rows, on ``images.device``
    timesteps: torch.Tensor
    noise: torch.Tensor
    flips: torch.Tensor  # bool: flip this example horizontally
    drops: torch.Tensor  # bool: replace this example's label by the null label


def _global_batch(run: TrainingRun, cfg: TrainConfig, step: int, step_hook: StepHook | None) -> _GlobalBatch:
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


def _micro_step(run: TrainingRun, cfg: TrainConfig, batch: _GlobalBatch, step: int, k: int,
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


def _log_line(run: TrainingRun, metrics_path: Path, step: int, batch_size: int, loss: float, ips: float,
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



def _mask_generator(cfg: TrainConfig, step: int, micro: int, rank: int,
                    device: torch.device) -> torch.Generator | None:
    """The generator of MDT token masks for one micro-batch of one process (None when masking is off).
    Seeded by (seed, step, micro-batch, process), so a resumed run draws the same masks."""
    if cfg.mask_ratio <= 0:
        return None
    index = (step * 4096 + micro) * 4096 + rank
    return torch.Generator(device=device).manual_seed(stream_seed(cfg.seed, _STREAM_MASK, index))
