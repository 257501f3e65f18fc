"""The model a training run starts from: a fresh preset, ``init_from`` weights (a pre-trained DiT gets MDT's
side-interpolater when masking is on), or (preset ``sd``) the Stable Diffusion UNet of ``init_from`` conditioned on
one text prompt per class. The training loop itself is in ``trainer.py``."""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from diffusers import DDPMScheduler, UNet2DModel

from diffprune.data import ImageDataset
from diffprune.diffusion.config import TrainConfig, TrainError
from diffprune.diffusion.init import ho_init_
from diffprune.diffusion.loading import load_model
from diffprune.diffusion.models import SD_PRESET, create_model, create_scheduler
from diffprune.diffusion.sd import build_class_prompt_unet, load_sd_scheduler


def build_training_model(cfg: TrainConfig, dataset: ImageDataset, overrides: dict[str, Any],
                 device: torch.device) -> tuple[Any, DDPMScheduler]:
    """The model to train and its noise schedule: a fresh preset, ``init_from`` weights, or (preset "sd") the
    Stable Diffusion UNet of ``init_from`` conditioned on one prompt per class."""
    if cfg.preset == SD_PRESET:
        # sample_size follows the data (SD 1.5's config says 64 = 512 px; the UNet itself is size-agnostic)
        names = [cfg.prompt_names.get(name, name) for name in dataset.class_names]
        model = build_class_prompt_unet(cfg.init_from, names, template=cfg.prompt_template,
                                        device=device, sample_size=dataset.resolution)
        return model, load_sd_scheduler(cfg.init_from)
    if cfg.init_from:
        model, _ = load_model(cfg.init_from)
        _check_init_model(model, overrides)
        if cfg.mask_ratio > 0 and getattr(model.config, "side_interpolater_depth", None) == 0:
            model = with_side_interpolater(model, overrides["side_interpolater_depth"])
    else:
        model = create_model(cfg.preset, **overrides)
        if cfg.init == "ho":
            ho_init_(model)
    return model, create_scheduler(cfg.preset)


def with_side_interpolater(model: Any, depth: int) -> Any:
    """A pre-trained plain DiT with MDT's side-interpolater added (fresh), for masked fine-tuning."""
    config = {k: v for k, v in dict(model.config).items() if not k.startswith("_")}
    masked = type(model)(**{**config, "side_interpolater_depth": depth})
    missing, unexpected = masked.load_state_dict(model.state_dict(), strict=False)
    if unexpected or any("side" not in k and "mask" not in k and "decoder_pos" not in k for k in missing):
        raise TrainError(f"cannot add a side-interpolater to {type(model).__name__}: unmatched weights "
                         f"{sorted(unexpected)[:3]} {sorted(missing)[:3]}")
    return masked


def _check_init_model(model: UNet2DModel, overrides: Mapping[str, Any]) -> None:
    for key in ("sample_size", "in_channels", "num_class_embeds"):
        if key in overrides and getattr(model.config, key) != overrides[key]:
            raise TrainError(
                f"init_from model has {key}={getattr(model.config, key)} but training needs {overrides[key]}; "
                f"initialise from a compatible model"
            )
