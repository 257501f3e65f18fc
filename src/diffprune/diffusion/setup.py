"""The trainer's set-up: the checks of config against data, the accelerator, class weighting, model, EMA,
optimizer, LR schedule and the data on the device, gathered in one ``TrainingRun`` for the loop."""
from __future__ import annotations

import logging
import math
import shutil
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from accelerate import Accelerator
from accelerate.utils import ProjectConfiguration, set_seed
from diffusers import DDPMScheduler

from diffprune.data import ImageDataset
from diffprune.diffusion.batches import class_loss_multipliers, class_weight_vector, example_probabilities, latent_meta
from diffprune.diffusion.build import build_training_model
from diffprune.diffusion.config import TrainConfig, TrainError
from diffprune.diffusion.ema import EMA
from diffprune.diffusion.precision import allow_precision_change
from diffprune.diffusion.schedules import lr_schedule_for
from diffprune.diffusion.tracking import trackers_of

log = logging.getLogger("diffprune.train")


def total_steps(config: TrainConfig, num_examples: int) -> int:
    """Optimizer steps of the budget (``config`` resolved)."""
    if config.steps is not None:
        return config.steps
    return max(1, math.ceil(config.epochs * num_examples / config.batch_size))




@dataclass
class TrainingRun:
    """What the training loop works with, built once by ``set_up``."""

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


def check_inputs(cfg: TrainConfig, dataset: ImageDataset, has_evaluator: bool) -> int:
    """Every check of the config against the data that needs no accelerator; the number of optimizer steps."""
    n = len(dataset)
    if n == 0:
        raise TrainError("the dataset is empty; nothing to train on")
    steps_total = total_steps(cfg, n)
    if cfg.eval_every and not has_evaluator:
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


def set_up(cfg: TrainConfig, dataset: ImageDataset, out_dir: Path, class_weights: Mapping[str, float] | None,
            step_hook: object | None, steps_total: int) -> TrainingRun:
    """The accelerator, class weighting, model, EMA, optimizer, LR schedule and the data on the device."""
    allow_precision_change(cfg.mixed_precision)
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
    if step_hook is not None:
        step_hook.mixed_precision = accelerator.mixed_precision  # the hook's own forwards match the model's
    device = accelerator.device
    set_seed(cfg.seed)  # model init and dropout; data order and noise come from batches.py streams
    loss_multiplier, sample_probs = class_weighting(cfg, dataset, class_weights, device)

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
    return TrainingRun(
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


def class_weighting(cfg: TrainConfig, dataset: ImageDataset, class_weights: Mapping[str, float] | None,
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
