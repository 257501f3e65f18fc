"""FLOPs of each stage's work for its manifest: FLOPs per image of its kind x the images it processed.

Each function measures one small batch (``evaluation.flops``, FlopCounterMode) on the CPU and returns the
manifest fields ``flops_per_image`` (with its ``flops_kind``) and ``flops``. The models are measured as the
stage used them: the trained (EMA) model, the reference, a fresh proxy of the DRO preset.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from diffprune.data import ImageDataset
from diffprune.diffusion import create_scheduler, load_model
from diffprune.diffusion.batches import to_model_input
from diffprune.diffusion.models import null_class_label
from diffprune.evaluation.flops import diffusion_flops_per_image, forward_flops_per_image
from diffprune.reweighting.proxy import build_proxy

BATCH = 2  # images per measured batch (FLOPs per image do not depend on the batch size)


def _x0(data: ImageDataset) -> torch.Tensor:
    return to_model_input(torch.from_numpy(np.ascontiguousarray(data.images[:BATCH]))).float()


def _labels(model: Any) -> torch.Tensor | None:
    return None if null_class_label(model) is None else torch.zeros(BATCH, dtype=torch.long)


def _diffusion(model_path: str | Path, data: ImageDataset, backward: bool) -> float:
    model, scheduler = load_model(str(model_path), device="cpu")
    return diffusion_flops_per_image(model, scheduler, _x0(data), _labels(model), backward=backward)


def fields(kind: str, per_image: float, images: int) -> dict[str, Any]:
    return {"flops_kind": kind, "flops_per_image": float(per_image), "flops": float(per_image) * int(images)}


def training_flops(model_path: str | Path, data: ImageDataset, images: int) -> dict[str, Any]:
    """A training stage (arm or reference): forward + backward per training image."""
    return fields("training forward+backward", _diffusion(model_path, data, backward=True), images)


def encoder_flops(encoder: torch.nn.Module, data: ImageDataset, images: int) -> dict[str, Any]:
    """The embed stage: one encoder forward per image."""
    batch = torch.from_numpy(np.ascontiguousarray(data.images[:BATCH])).to(next(encoder.parameters()).device)
    return fields("encoder forward", forward_flops_per_image(encoder, batch), images)


def dro_flops(config: Any, coreset: ImageDataset, reference: str | Path, images: int) -> dict[str, Any]:
    """A DRO step per image: the reference's forward + the proxy's forward and backward."""
    with torch.random.fork_rng(devices=[]):
        proxy = build_proxy(config, coreset)
    proxy_fb = diffusion_flops_per_image(proxy, create_scheduler(config.proxy_preset), _x0(coreset), _labels(proxy))
    ref_f = _diffusion(reference, coreset, backward=False)
    return fields("reference forward + proxy forward+backward", proxy_fb + ref_f, images)


def sampling_flops(model_path: str | Path, data: ImageDataset, samples: int, steps: int,
                   guidance_scale: float) -> dict[str, Any]:
    """Sampling: one model forward per image and denoising step (two with classifier-free guidance)."""
    passes = steps * (2 if guidance_scale not in (0.0, 1.0) else 1)
    return fields("sampling forward", _diffusion(model_path, data, backward=False) * passes, samples)
