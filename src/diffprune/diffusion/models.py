"""Model presets: the architecture, noise schedule and training recipe of each model ``create_model`` builds.

A preset is one entry in ``PRESETS`` (or ``register_preset(Preset(...))`` from outside the package): its
``kind`` (a key of ``MODEL_CLASSES``, or ``sd``), the model keyword arguments and the recipe defaults that
``TrainConfig`` falls back to.

- ``kind="unet"``: pixel-space diffusers ``UNet2DModel``. ``ddpm-cifar10`` is exactly the UNet of Ho et al. (2020)
  as ported to diffusers (``google/ddpm-cifar10-32``: 35.7M parameters) with the original recipe's hyper-parameters
  (Adam 2e-4, 5k warm-up, clip 1.0, batch 128, EMA 0.9999, horizontal flip, 800k steps); its weights start from
  diffusers' default initialisation unless ``train.init: ho`` (``diffusion/init.py``).
- ``kind="dit"``: latent-space ``diffprune.diffusion.dit.DiT`` (Peebles & Xie 2023). ``dit-s-2``/``dit-b-2``/
  ``dit-xl-2`` are DiT-S/2, B/2, XL/2 on 32 x 32 x 4 latents (256 px through the /8 Stable Diffusion VAE), with
  the paper's recipe (Adam 1e-4 without weight decay or warm-up, batch 256, EMA 0.9999, 400k steps, no flips of
  latents); the schedule is DDPM's linear one with ``clip_sample=False`` (latents are not in [-1, 1]) and
  fixed-small variance (our objective does not learn the variance). ``dit-tiny`` is for tests. The DiT override
  ``side_interpolater_depth > 0`` builds MDT's side-interpolater for masked training.
- ``kind="sd"`` (``SD_PRESET``): a Stable Diffusion UNet fine-tuned with one prompt per class; it is built from a
  pipeline (``diffprune.diffusion.sd``), not by ``create_model``.

Conditional models (``num_class_embeds=K + 1``) reserve the LAST class index ``K`` as the "null" label used for
classifier-free guidance; ``null_class_label(model)`` returns it.
"""
from __future__ import annotations

import inspect
from dataclasses import dataclass, field
from typing import Any

import torch
from diffusers import DDPMScheduler, UNet2DModel

from diffprune.diffusion.dit import DiT

SD_PRESET = "sd"
MODEL_CLASSES: dict[str, type] = {"unet": UNet2DModel, "dit": DiT}  # the kinds ``create_model`` builds


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


_DDPM_SCHEDULE = {
    "num_train_timesteps": 1000,
    "beta_start": 1e-4,
    "beta_end": 0.02,
    "beta_schedule": "linear",
    "variance_type": "fixed_large",
    "prediction_type": "epsilon",
    "clip_sample": True,
}
_DIT_SCHEDULE = {**_DDPM_SCHEDULE, "variance_type": "fixed_small", "clip_sample": False}
_SD_SCHEDULE = {  # Stable Diffusion v1's; the trainer uses the pipeline's own scheduler config
    **_DDPM_SCHEDULE, "beta_start": 0.00085, "beta_end": 0.012, "beta_schedule": "scaled_linear",
    "variance_type": "fixed_small", "clip_sample": False,
}
_DIT_RECIPE = Recipe(lr=1e-4, warmup_steps=0, batch_size=256, ema_decay=0.9999, hflip=False, steps=400_000)


@dataclass(frozen=True)
class Preset:
    name: str
    description: str
    model: dict[str, Any]  # keyword arguments of the model class (UNet2DModel or DiT)
    recipe: Recipe
    scheduler: dict[str, Any] = field(default_factory=lambda: dict(_DDPM_SCHEDULE))
    kind: str = "unet"  # "unet", "dit" (MODEL_CLASSES) or "sd" (built from a pipeline)

    @property
    def model_class(self) -> type:
        if self.kind == SD_PRESET:
            raise ModelError(f"preset {self.name!r} is built from a Stable Diffusion pipeline "
                             f"(diffprune.diffusion.sd.build_class_prompt_unet with init_from), not by create_model")
        return MODEL_CLASSES[self.kind]


def _dit(name: str, hidden: int, depth: int, heads: int) -> Preset:
    return Preset(
        name=name,
        description=f"DiT-{name.split('-')[1].upper()}/2 (Peebles & Xie 2023) on 32x32x4 latents (256 px, SD VAE), "
                    f"ImageNet-size label table",
        model=dict(sample_size=32, in_channels=4, patch_size=2, hidden_size=hidden, depth=depth, num_heads=heads,
                   num_class_embeds=1001),
        recipe=_DIT_RECIPE, scheduler=dict(_DIT_SCHEDULE), kind="dit",
    )


PRESETS: dict[str, Preset] = {
    "ddpm-cifar10": Preset(
        name="ddpm-cifar10",
        description="the original DDPM CIFAR-10 UNet (Ho et al. 2020), 35.7M parameters, 32x32 RGB",
        model=dict(
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
        description="a 1.1M-parameter UNet for 28-32 px images that trains on a CPU (1,113,955 RGB, 1,112,801 grey)",
        model=dict(
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
        model=dict(
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
    "dit-s-2": _dit("dit-s-2", 384, 12, 6),
    "dit-b-2": _dit("dit-b-2", 768, 12, 12),
    "dit-xl-2": _dit("dit-xl-2", 1152, 28, 16),
    "dit-tiny": Preset(
        name="dit-tiny",
        description="a ~0.2M-parameter DiT for tests (8x8x4 latents)",
        model=dict(sample_size=8, in_channels=4, patch_size=2, hidden_size=64, depth=2, num_heads=4,
                   decoder_depth=1),  # used only with side_interpolater_depth > 0 (MDT): 1 encoder + 1 decoder
        recipe=Recipe(lr=1e-3, warmup_steps=5, batch_size=16, ema_decay=0.99, hflip=False, steps=50),
        scheduler=dict(_DIT_SCHEDULE), kind="dit",
    ),
    SD_PRESET: Preset(
        name=SD_PRESET,
        description="fine-tune a Stable Diffusion UNet (init_from) conditioned on one text prompt per class",
        model={},
        # diffusers' train_text_to_image example: lr 1e-5, no warm-up, 4 images per step, EMA, 15k steps
        recipe=Recipe(lr=1e-5, warmup_steps=0, batch_size=4, ema_decay=0.9999, hflip=False, steps=15_000),
        scheduler=dict(_SD_SCHEDULE), kind="sd",
    ),
}


def register_preset(preset: Preset) -> Preset:
    """Add a model preset (or replace one of the same name): ``create_model``, ``TrainConfig.preset`` and
    ``reweight.proxy_preset`` take it from then on."""
    if preset.kind != SD_PRESET and preset.kind not in MODEL_CLASSES:
        raise ModelError(f"preset {preset.name!r}: kind {preset.kind!r} is not one of {sorted(MODEL_CLASSES)}")
    PRESETS[preset.name] = preset
    return preset


def get_preset(name: str) -> Preset:
    if name not in PRESETS:
        raise ModelError(f"unknown model preset {name!r}; choose one of {sorted(PRESETS)}")
    return PRESETS[name]


def downsample_factor(model_or_config: Any) -> int:
    """The factor the input size must be a multiple of: 2 per UNet down block except the last; a DiT's patch."""
    config = getattr(model_or_config, "config", model_or_config)
    get = config.get if isinstance(config, dict) else lambda k: getattr(config, k, None)
    if get("patch_size") is not None and get("block_out_channels") is None:
        return int(get("patch_size"))
    return 2 ** (len(get("block_out_channels")) - 1)


def create_model(preset: str, **overrides: Any) -> UNet2DModel | DiT:
    """A freshly initialised model of ``preset`` (``UNet2DModel`` or ``DiT``), with keyword ``overrides`` of
    that class.

    Common overrides: ``sample_size`` (pixels for a UNet, latent size for a DiT), ``in_channels``/``out_channels``
    (1 for grey images; a DiT's ``out_channels=2 * in_channels`` adds DiT's learned-variance half),
    ``num_class_embeds`` (K + 1 for a class-conditional model: K classes and the null label K), ``dropout`` (UNet),
    ``side_interpolater_depth`` (DiT: MDT masked training). The model is in float32 on the CPU; the caller seeds
    torch for a reproducible initialisation.
    """
    spec = get_preset(preset)
    cls = spec.model_class
    kwargs = dict(spec.model)
    unknown = sorted(set(overrides) - set(inspect.signature(cls.__init__).parameters) - {"self"})
    if unknown:
        where = "diffusers' UNet2DModel" if cls is UNet2DModel else "diffprune.diffusion.dit.DiT"
        raise ModelError(f"unknown {cls.__name__} option(s) {unknown} for preset {preset!r}; see {where}")
    kwargs.update(overrides)
    size = kwargs.get("sample_size")
    factor = downsample_factor(kwargs if cls is UNet2DModel else {"patch_size": kwargs.get("patch_size", 2)})
    if isinstance(size, int) and size % factor:
        what = "the down-sampling factor" if cls is UNet2DModel else "the patch size"
        raise ModelError(
            f"sample_size {size} is not divisible by {factor}, {what} of preset {preset!r}; "
            f"resize or pad {'images' if cls is UNet2DModel else 'latents'} to a multiple of {factor}"
        )
    n_class = kwargs.get("num_class_embeds")
    if n_class is not None and n_class < 2:
        raise ModelError(f"num_class_embeds must be >= 2 (K classes + 1 null label), got {n_class}")
    if cls is DiT:
        try:
            return DiT(**kwargs)
        except ValueError as e:  # e.g. hidden_size not divisible by num_heads
            raise ModelError(f"preset {preset!r}: {e}") from None
    return UNet2DModel(**kwargs)


def create_scheduler(preset: str = "ddpm-cifar10") -> DDPMScheduler:
    """The training/sampling noise schedule of ``preset``: linear betas 1e-4..0.02 and T = 1000 with epsilon
    prediction (DDPM's), fixed-large variance and clipping to [-1, 1] for the pixel UNets; fixed-small variance and
    no clipping for DiT (latents); Stable Diffusion's scaled-linear schedule for ``sd``."""
    return DDPMScheduler(**get_preset(preset).scheduler)


def count_parameters(model: Any) -> int:
    return sum(p.numel() for p in model.parameters())


def is_conditional(model: torch.nn.Module) -> bool:
    return getattr(model.config, "num_class_embeds", None) is not None


def null_class_label(model: torch.nn.Module) -> int | None:
    """The class index reserved for "no class" (classifier-free guidance), or None if unconditional."""
    n = getattr(model.config, "num_class_embeds", None)
    return None if n is None else int(n) - 1
