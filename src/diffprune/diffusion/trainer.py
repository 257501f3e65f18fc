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

import errno
import json
import logging
import math
import os
import shutil
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Callable, Protocol

import numpy as np
import torch
from accelerate import Accelerator
from accelerate.state import AcceleratorState
from accelerate.utils import ProjectConfiguration, set_seed
from diffusers import DDPMScheduler
from diffusers.optimization import get_constant_schedule_with_warmup
from safetensors.torch import load_file, save_file

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
from diffprune.diffusion.config import _RESUME_MUTABLE, TrainConfig, TrainError
from diffprune.diffusion.ema import EMA
from diffprune.diffusion.loading import save_model
from diffprune.diffusion.metrics_log import append_jsonl, truncate_metrics
from diffprune.diffusion.models import count_parameters
from diffprune.diffusion.objective import diffusion_loss
from diffprune.diffusion.tracking import sample_grid, scalar_config, trackers_of
from diffprune.io import DiskSpaceError, atomic_write_json, config_hash
from diffprune.runtime import Interrupted, StopOnSignal, process_state, progress_bar

log = logging.getLogger("diffprune.train")

_STREAM_MASK = 4  # the MDT masks' random stream (batches.py uses 1-3)
STATE_FILE = "trainer_state.json"
EMA_FILE = "ema.safetensors"
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


def checkpoint_step(out_dir: str | os.PathLike) -> int | None:
    """The step of the checkpoint in ``out_dir/state`` (None when there is none or it is unreadable)."""
    try:
        return int(json.loads((Path(out_dir) / "state" / STATE_FILE).read_text())["step"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


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
    micro = cfg.batch_size // (world * cfg.grad_accum)  # images per process per forward pass
    device = accelerator.device
    set_seed(cfg.seed)  # model init and dropout; data order and noise come from batches.py streams

    # ---- class weights -> per-example loss multipliers or sampling probabilities --------------------------
    labels = None if dataset.labels is None else torch.from_numpy(dataset.labels)
    num_classes = dataset.num_classes
    loss_multiplier = None  # float32 K, a_k / p_k
    sample_probs = None  # float64 N
    if class_weights is not None:
        if labels is None:
            raise TrainError("class_weights need a labelled dataset (labels or cluster ids); this one has none")
        a = class_weight_vector(class_weights, dataset.class_names)
        if cfg.weighting == "loss":
            loss_multiplier = torch.tensor(class_loss_multipliers(dataset.labels, a), dtype=torch.float32,
                                           device=device)
        else:
            sample_probs = torch.from_numpy(example_probabilities(dataset.labels, a))
    if cfg.conditional and labels is None:
        raise TrainError("conditional=True needs a labelled dataset; set conditional=False or provide labels")
    latent = latent_meta(dataset)
    if latent is not None and cfg.hflip:
        raise TrainError("hflip flips training tensors, and these are VAE latents, not images; set hflip: false")
    if latent is not None and cfg.sample_every:
        raise TrainError("sample_every draws pixel grids during training; latent runs decode in `diffprune sample` "
                         "instead: set sample_every: 0")

    # ---- model, EMA, optimizer, LR schedule -------------------------------------------------------------
    overrides = {"sample_size": dataset.resolution, "in_channels": dataset.channels,
                 "out_channels": dataset.channels}
    if cfg.conditional:
        overrides["num_class_embeds"] = num_classes + 1  # the last index is the null (unconditional) label
    if cfg.mask_ratio > 0:
        overrides["side_interpolater_depth"] = 2  # MDT's side-interpolater (model_overrides may change it)
    overrides.update(cfg.model_overrides)
    model, scheduler = build_training_model(cfg, dataset, overrides, device)
    if model.config.sample_size != dataset.resolution or model.config.in_channels != dataset.channels:
        raise TrainError(
            f"model expects {model.config.in_channels} x {model.config.sample_size} px images but the dataset has "
            f"{dataset.channels} x {dataset.resolution}; drop the sample_size/in_channels overrides or resize the data"
        )
    null_label = num_classes if cfg.conditional else None
    if cfg.channels_last:
        model = model.to(memory_format=torch.channels_last)
    model.to(device)
    ema = EMA(model, cfg.ema_decay, warmup=cfg.ema_warmup)  # starts at the initial weights
    params = list(model.parameters())  # collected once: walking the module tree every step is measurable
    optimizer = torch.optim.Adam(params, lr=cfg.lr, fused=device.type in ("cuda", "cpu"))  # fused: 5x faster step
    lr_schedule = get_constant_schedule_with_warmup(optimizer, cfg.warmup_steps)
    model, optimizer, lr_schedule = accelerator.prepare(model, optimizer, lr_schedule)
    forward_model = torch.compile(model) if cfg.compile else model

    # ---- resume ------------------------------------------------------------------------------------------
    state_dir, metrics_path = out_dir / "state", out_dir / "metrics.jsonl"
    trajectory_hash = _trajectory_hash(cfg, dataset, class_weights)
    if step_hook is not None:
        trajectory_hash = config_hash({"train": trajectory_hash, "hook": step_hook.identity()})
    start_step, resumed_from, seconds_before = 0, None, 0.0
    log_window = (0, 0.0)  # (first step, loss sum) of the metrics line in progress at the checkpoint
    if resume and (state_dir / STATE_FILE).exists():
        saved = _load_checkpoint(accelerator, ema, state_dir, trajectory_hash)
        start_step = resumed_from = int(saved["step"])
        if start_step > steps_total:  # a checkpoint cannot be rewound: extending only goes forward
            raise TrainError(f"the checkpoint in {state_dir} is at step {start_step}, past this run's {steps_total} "
                             f"steps; raise steps (or epochs), or start afresh with resume=False (--force)")
        log_window = (int(saved.get("log_window_start", start_step)), float(saved.get("log_window_loss", 0.0)))
        seconds_before = float(saved.get("train_seconds", 0.0))
        if step_hook is not None:
            step_hook.load(state_dir)
    if accelerator.is_main_process:
        out_dir.mkdir(parents=True, exist_ok=True)
        truncate_metrics(metrics_path, keep_through_step=start_step)
    accelerator.wait_for_everyone()

    # ---- data on device (uint8 images, ~150 MB for CIFAR-10; or float latents) or pinned host memory ----------
    images = torch.from_numpy(np.ascontiguousarray(dataset.images))
    if device.type != "cpu":
        images = images.to(device) if images.numel() < (1 << 31) else images.pin_memory()
    need_labels = cfg.conditional or loss_multiplier is not None or step_hook is not None
    labels_dev = labels.to(images.device) if need_labels else None
    shape = dataset.images.shape[1:]

    if trackers:
        accelerator.init_trackers("diffprune", config=scalar_config(cfg))  # TensorBoard: logs/diffprune/
    stop = StopOnSignal()
    run_loss = torch.zeros((), device=device)
    last_loss = float("nan")
    t_start = t_log = time.perf_counter()
    eval_seconds = 0.0

    def train_seconds() -> float:  # training time of the whole run so far, evaluation excluded
        return seconds_before + time.perf_counter() - t_start - eval_seconds
    def checkpoint(at_step: int) -> None:  # the metrics line in progress and the clock travel with it
        _save_checkpoint(accelerator, ema, cfg, dataset, out_dir, at_step, trajectory_hash, scheduler,
                         log_window=(step_log, accelerator.reduce(run_loss, "mean").item()),
                         train_seconds=train_seconds(), hook=step_hook)

    step = start_step
    step_log = log_window[0] if resumed_from is not None else start_step
    run_loss.fill_(log_window[1])  # so a resumed metrics line averages the same steps as an uninterrupted one
    saved_step = start_step if resumed_from is not None else -1
    bar = progress_bar("loss {task.fields[loss]:.4f}", "{task.fields[ips]:.1f} img/s",
                       enabled=progress and accelerator.is_local_main_process)
    task = bar.add_task("train", total=steps_total, completed=start_step, loss=float("nan"), ips=0.0)
    model.train()
    try:
        with stop, bar:
            while step < steps_total:
                # -- the global batch of this step, identical on every process --------------------------
                idx = None if step_hook is None else step_hook.batch_indices(step)
                if idx is None:
                    idx = global_batch_indices(step, cfg.batch_size, n, cfg.seed, sample_probs)
                g = noise_generator(cfg.seed, step, device)
                t_all = torch.randint(0, scheduler.config.num_train_timesteps, (cfg.batch_size,), device=device,
                                      generator=g)
                noise_all = torch.randn((cfg.batch_size, *shape), device=device, generator=g)
                flip_all = torch.rand(cfg.batch_size, device=device, generator=g) < 0.5
                drop_all = torch.rand(cfg.batch_size, device=device, generator=g) < cfg.cfg_dropout
                for k in range(cfg.grad_accum):
                    lo = (k * world + accelerator.process_index) * micro  # this process' micro-batch
                    sl = slice(lo, lo + micro)
                    x0 = to_model_input(images[idx[sl].to(images.device)].to(device, non_blocking=True))
                    if cfg.hflip:
                        x0 = torch.where(flip_all[sl, None, None, None], x0.flip(3), x0)
                    if cfg.channels_last:
                        x0 = x0.contiguous(memory_format=torch.channels_last)
                    y = None if labels_dev is None else labels_dev[idx[sl].to(labels_dev.device)].to(device)
                    cond = None
                    if cfg.conditional:
                        cond = torch.where(drop_all[sl], torch.full_like(y, null_label), y)
                    with accelerator.accumulate(model):
                        unreduced = diffusion_loss(
                            forward_model, scheduler, x0, t_all[sl], noise_all[sl], cond, mask_ratio=cfg.mask_ratio,
                            mask_generator=_mask_generator(cfg, step, k, accelerator.process_index, device),
                        )
                        per_example = unreduced.mean(dim=(1, 2, 3))
                        if step_hook is not None:
                            per_example = per_example * step_hook(step, x0, y, t_all[sl], noise_all[sl], unreduced)
                        if loss_multiplier is not None:
                            per_example = per_example * loss_multiplier[y]
                        loss = per_example.mean()
                        accelerator.backward(loss)
                        if accelerator.sync_gradients and cfg.grad_clip is not None:
                            accelerator.clip_grad_norm_(params, cfg.grad_clip)
                        optimizer.step()
                        optimizer.zero_grad(set_to_none=True)
                    run_loss += loss.detach() / cfg.grad_accum
                lr_schedule.step()
                ema.update()
                step += 1
                if evaluator is not None and cfg.eval_every and (step % cfg.eval_every == 0 or step == steps_total):
                    eval_seconds += _evaluate_during_training(evaluator, ema, scheduler, step, cfg, accelerator,
                                                              metrics_path, train_seconds())

                # -- logging, checkpoints, interruption ------------------------------------------------
                if step % cfg.log_every == 0 or step == steps_total:
                    last_loss = accelerator.reduce(run_loss, "mean").item() / (step - step_log)
                    now = time.perf_counter()
                    ips = cfg.batch_size * (step - step_log) / max(now - t_log, 1e-9)
                    row = {"step": step, "loss": last_loss, "lr": lr_schedule.get_last_lr()[0],
                           "img_per_s": ips, "images_seen": step * cfg.batch_size, "seconds": now - t_start}
                    if accelerator.is_main_process:
                        append_jsonl(metrics_path, row)
                    if trackers:
                        accelerator.log({f"train/{key}": row[key] for key in ("loss", "lr", "img_per_s")}, step=step)
                    run_loss.zero_()
                    t_log, step_log = now, step
                    bar.update(task, loss=last_loss, ips=ips)
                if cfg.sample_every and step % cfg.sample_every == 0:
                    sample_grid(accelerator, ema.module, scheduler, cfg, out_dir, step, trackers)
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
        if trackers:
            accelerator.end_training()
    seconds = time.perf_counter() - t_start
    done = step - start_step
    return {
        "steps": step,
        "images_seen": step * cfg.batch_size,
        "seconds": seconds,
        "train_seconds": train_seconds(),
        "eval_seconds": eval_seconds,
        "img_per_s": done * cfg.batch_size / max(seconds, 1e-9),
        "final_loss": last_loss,
        "params": count_parameters(ema.module),
        "resumed_from": resumed_from,
        "processes": world,
        "mixed_precision": accelerator.mixed_precision,
    }


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


# ---- checkpoints ------------------------------------------------------------------------------------------


def _load_checkpoint(accelerator: Accelerator, ema: EMA, state_dir: Path, trajectory_hash: str) -> dict[str, Any]:
    """Restore ``state_dir`` (written by ``_save_checkpoint``) into the accelerator and EMA; its trainer state.

    A damaged checkpoint (truncated safetensors, corrupt JSON, a pickle that weights-only loading refuses)
    raises ``TrainError`` naming the file and how to start over, instead of the library's bare message."""
    try:
        saved = json.loads((state_dir / STATE_FILE).read_text())
    except (ValueError, UnicodeDecodeError) as e:
        raise TrainError(f"checkpoint file {state_dir / STATE_FILE} is corrupt ({e}); delete {state_dir} to "
                         f"restart this training from step 0, or rerun with --force") from None
    if saved.get("trajectory_hash") != trajectory_hash:
        raise TrainError(
            f"{state_dir} was written with a different config or dataset (only {sorted(_RESUME_MUTABLE)} may "
            f"change on resume); saved config: {saved.get('config')}"
        )
    try:
        accelerator.load_state(str(state_dir))
        ema.load_state_dict(load_file(state_dir / EMA_FILE, device="cpu"), saved["ema_updates"])  # copied to device
    except Exception as e:  # safetensors, pickle refusal, torch's RuntimeError on a short file, KeyError
        first = " ".join(str(e).split())[:200] or type(e).__name__
        raise TrainError(f"checkpoint {state_dir} cannot be loaded ({type(e).__name__}: {first}); delete "
                         f"{state_dir} to restart this training from step 0, or rerun with --force") from None
    return saved


def _save_checkpoint(accelerator: Accelerator, ema: EMA, cfg: TrainConfig, dataset: ImageDataset,
                     out_dir: Path, step: int, trajectory_hash: str, scheduler: DDPMScheduler,
                     log_window: tuple[int, float] = (0, 0.0), train_seconds: float = 0.0,
                     hook: StepHook | None = None) -> None:
    """accelerate ``save_state`` + EMA + trainer state into ``state.tmp``, then swapped onto ``state``;
    and the EMA UNet exported to ``model/``. Every process takes part (each saves its own RNG state);
    ``hook`` saves its state into the same folder (main process).

    ``log_window``: first step and loss sum of the metrics line in progress, restored on resume. A failed
    save (a full disk) removes ``.state.tmp`` and says how much space is free."""
    state_dir, tmp = out_dir / "state", out_dir / ".state.tmp"
    if accelerator.is_main_process and tmp.exists():
        shutil.rmtree(tmp)
    accelerator.wait_for_everyone()
    try:
        accelerator.save_state(str(tmp))
        if accelerator.is_main_process:
            save_file({k: v.contiguous() for k, v in ema.state_dict().items()}, tmp / EMA_FILE)
            atomic_write_json(tmp / STATE_FILE, {
                "step": step, "ema_updates": ema.updates, "images_seen": step * cfg.batch_size,
                "trajectory_hash": trajectory_hash, "config": cfg.model_dump(mode="json"),
                "dataset_fingerprint": dataset.fingerprint, "processes": accelerator.num_processes,
                "log_window_start": int(log_window[0]), "log_window_loss": float(log_window[1]),
                "train_seconds": train_seconds,
            })
            if hook is not None:
                hook.save(tmp)
    except Exception as e:
        shutil.rmtree(tmp, ignore_errors=True)
        free = shutil.disk_usage(out_dir).free
        if isinstance(e, OSError) or free < (64 << 20):  # torch reports a full disk as "unexpected pos N vs M"
            raise DiskSpaceError(errno.ENOSPC, f"cannot save the checkpoint of step {step} in {out_dir} "
                                 f"({type(e).__name__}: {' '.join(str(e).split())[:120]}; {free / 1e6:.1f} MB "
                                 f"free); free some space or move runs_dir (--set runs_dir=...), then rerun "
                                 f"to resume from the last checkpoint", str(tmp)) from e
        raise
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        old = out_dir / ".state.old"
        shutil.rmtree(old, ignore_errors=True)
        if state_dir.exists():
            os.replace(state_dir, old)
        os.replace(tmp, state_dir)
        shutil.rmtree(old, ignore_errors=True)
        save_model(out_dir / "model", ema.module, scheduler, meta={
            "preset": cfg.preset, "steps": step, "images_seen": step * cfg.batch_size, "weights": "ema",
            "ema_decay": cfg.ema_decay, "class_names": list(dataset.class_names),
            "null_class_label": dataset.num_classes if cfg.conditional else None,
            "dataset_fingerprint": dataset.fingerprint, "latent": latent_meta(dataset),
        })
    accelerator.wait_for_everyone()


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


def _trajectory_hash(cfg: TrainConfig, dataset: ImageDataset, class_weights: Mapping[str, float] | None) -> str:
    fixed = {k: v for k, v in cfg.model_dump(mode="json").items() if k not in _RESUME_MUTABLE}
    weights = None if class_weights is None else {k: float(v) for k, v in sorted(class_weights.items())}
    return config_hash({"config": fixed, "data": dataset.fingerprint, "class_weights": weights})


def _mask_generator(cfg: TrainConfig, step: int, micro: int, rank: int,
                    device: torch.device) -> torch.Generator | None:
    """The generator of MDT token masks for one micro-batch of one process (None when masking is off).
    Seeded by (seed, step, micro-batch, process), so a resumed run draws the same masks."""
    if cfg.mask_ratio <= 0:
        return None
    index = (step * 4096 + micro) * 4096 + rank
    return torch.Generator(device=device).manual_seed(stream_seed(cfg.seed, _STREAM_MASK, index))
