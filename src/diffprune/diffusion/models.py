"""Model presets: diffusers ``UNet2DModel`` architectures, their noise schedule and training recipe.

A preset is one entry in ``PRESETS``: the UNet keyword arguments plus the recipe defaults that
``TrainConfig`` falls back to. ``ddpm-cifar10`` is exactly the UNet of Ho et al. (2020) as ported to diffusers
(``google/ddpm-cifar10-32``: 35.7M parameters) with the original recipe (Adam 2e-4, 5k warm-up, clip 1.0,
batch 128, EMA 0.9999, horizontal flip, 800k steps).

Conditional models (``num_class_embeds=K + 1``) reserve the LAST class index ``K`` as the "null" label used for
classifier-free guidance; ``null_class_label(model)`` returns it.
"""
from __future__ import annotations

import inspect
from dataclasses import dataclass, field
from typing import Any

from diffusers import DDPMScheduler, UNet2DModel


class ModelError(ValueError):
    """A model preset, override or checkpoint is invalid; the message says what is allowed."""


@dataclass(frozen=True)
class Recipe:
    """Training defaults of a preset (what ``TrainConfig`` uses for a field left at None)."""

    lr: float
    warmup_steps: int
    batch_size: int
    ema_decay: float
    hflip: bool
    steps: int


@dataclass(frozen=True)
class Preset:
    name: str
    description: str
    unet: dict[str, Any]
    recipe: Recipe
    scheduler: dict[str, Any] = field(
        default_factory=lambda: {
            "num_train_timesteps": 1000,
            "beta_start": 1e-4,
            "beta_end": 0.02,
            "beta_schedule": "linear",
            "variance_type": "fixed_large",
            "prediction_type": "epsilon",
            "clip_sample": True,
        }
    )


PRESETS: dict[str, Preset] = {
    "ddpm-cifar10": Preset(
        name="ddpm-cifar10",
        description="the original DDPM CIFAR-10 UNet (Ho et al. 2020), 35.7M parameters, 32x32 RGB",
        unet=dict(
            sample_size=32,
            in_channels=3,
            out_channels=3,
            block_out_channels=(128, 256, 256, 256),
            layers_per_block=2,
            down_block_types=("DownBlock2D", "AttnDownBlock2D", "DownBlock2D", "DownBlock2D"),
            up_block_types=("UpBlock2D", "UpBlock2D", "AttnUpBlock2D", "UpBlock2D"),
            norm_eps=1e-6,
            freq_shift=1,
            flip_sin_to_cos=False,
            downsample_padding=0,
            dropout=0.1,
            attention_head_dim=None,
        ),
        recipe=Recipe(lr=2e-4, warmup_steps=5000, batch_size=128, ema_decay=0.9999, hflip=True, steps=800_000),
    ),
    "ddpm-small": Preset(
        name="ddpm-small",
        description="a 2.6M-parameter UNet for 28-32 px images that trains on a CPU",
        unet=dict(
            sample_size=32,
            in_channels=3,
            out_channels=3,
            block_out_channels=(32, 64, 64),
            layers_per_block=1,
            down_block_types=("DownBlock2D", "AttnDownBlock2D", "DownBlock2D"),
            up_block_types=("UpBlock2D", "AttnUpBlock2D", "UpBlock2D"),
            norm_num_groups=16,
            norm_eps=1e-6,
            freq_shift=1,
            flip_sin_to_cos=False,
            dropout=0.0,
            attention_head_dim=None,
        ),
        recipe=Recipe(lr=5e-4, warmup_steps=200, batch_size=32, ema_decay=0.999, hflip=False, steps=3000),
    ),
    "ddpm-tiny": Preset(
        name="ddpm-tiny",
        description="a few-hundred-k-parameter UNet for tests (8-16 px)",
        unet=dict(
            sample_size=16,
            in_channels=3,
            out_channels=3,
            block_out_channels=(16, 32),
            layers_per_block=1,
            down_block_types=("DownBlock2D", "AttnDownBlock2D"),
            up_block_types=("AttnUpBlock2D", "UpBlock2D"),
            norm_num_groups=8,
            freq_shift=1,
            flip_sin_to_cos=False,
            dropout=0.0,
            attention_head_dim=8,
        ),
        recipe=Recipe(lr=1e-3, warmup_steps=5, batch_size=16, ema_decay=0.99, hflip=False, steps=50),
    ),
}


def get_preset(name: str) -> Preset:
    if name not in PRESETS:
        raise ModelError(f"unknown model preset {name!r}; choose one of {sorted(PRESETS)}")
    return PRESETS[name]


def downsample_factor(model_or_config: Any) -> int:
    """The factor by which the UNet shrinks its input (2 per down block except the last)."""
    config = getattr(model_or_config, "config", model_or_config)
    return 2 ** (len(config["block_out_channels"] if isinstance(config, dict) else config.block_out_channels) - 1)


def create_model(preset: str, **overrides: Any) -> UNet2DModel:
    """A freshly initialised ``UNet2DModel`` of ``preset``, with ``UNet2DModel`` keyword ``overrides``.

    Common overrides: ``sample_size`` (pixels), ``in_channels``/``out_channels`` (1 for grey images),
    ``num_class_embeds`` (K + 1 for a class-conditional model: K classes and the null label K), ``dropout``.
    The model is in float32 on the CPU; the caller seeds torch for a reproducible initialisation.
    """
    spec = get_preset(preset)
    kwargs = dict(spec.unet)
    unknown = sorted(set(overrides) - set(inspect.signature(UNet2DModel.__init__).parameters) - {"self"})
    if unknown:
        raise ModelError(f"unknown UNet2DModel option(s) {unknown} for preset {preset!r}; see diffusers' UNet2DModel")
    kwargs.update(overrides)
    size = kwargs.get("sample_size")
    factor = 2 ** (len(kwargs["block_out_channels"]) - 1)
    if isinstance(size, int) and size % factor:
        raise ModelError(
            f"sample_size {size} is not divisible by {factor}, the down-sampling factor of preset {preset!r}; "
            f"resize or pad images to a multiple of {factor}"
        )
    n_class = kwargs.get("num_class_embeds")
    if n_class is not None and n_class < 2:
        raise ModelError(f"num_class_embeds must be >= 2 (K classes + 1 null label), got {n_class}")
    return UNet2DModel(**kwargs)


def create_scheduler(preset: str = "ddpm-cifar10") -> DDPMScheduler:
    """The training/sampling noise schedule of ``preset``: linear betas 1e-4..0.02, T = 1000, fixed-large
    variance, epsilon prediction (the original DDPM schedule; the same for every preset)."""
    return DDPMScheduler(**get_preset(preset).scheduler)


def count_parameters(model: Any) -> int:
    return sum(p.numel() for p in model.parameters())


def is_conditional(model: UNet2DModel) -> bool:
    return getattr(model.config, "num_class_embeds", None) is not None


def null_class_label(model: UNet2DModel) -> int | None:
    """The class index reserved for "no class" (classifier-free guidance), or None if unconditional."""
    n = getattr(model.config, "num_class_embeds", None)
    return None if n is None else int(n) - 1
