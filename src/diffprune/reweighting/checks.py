"""Checks of the reweight stage's inputs (device, data, reference, schedule), before any compute."""
from __future__ import annotations

import logging
from typing import Any

import torch

from diffprune.data import ImageDataset
from diffprune.diffusion import create_scheduler
from diffprune.reweighting.errors import ReweightError
from diffprune.runtime import process_state, resolve_device

logger = logging.getLogger("diffprune.reweighting")


def check_device(name: str) -> torch.device:
    """The device the proxy trains on: accelerate's (a launch's process device, else CUDA when available).
    ``device: cpu`` on a CUDA machine is not honoured inside a process accelerate already placed; say so."""
    resolve_device(name)  # a device this machine lacks: DeviceError now, before any compute
    actual = process_state().device
    if name != "auto" and torch.device(name).type != actual.type:
        logger.warning("reweight.device %s ignored: the proxy trains on accelerate's device %s; hide GPUs with "
                       "CUDA_VISIBLE_DEVICES='' (or ACCELERATE_USE_CPU=1) to train on the CPU", name, actual)
    return actual


def check_schedule(reference_scheduler: Any, proxy_preset: str, where: str) -> None:
    """The proxy (trained with its preset's schedule) and the reference must share betas: the pairing of the
    excess assumes both denoise the same x_t."""
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
