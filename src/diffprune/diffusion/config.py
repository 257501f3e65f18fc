"""The configs of stage 4: ``TrainConfig`` (the trainer) and ``SampleConfig`` (the sampler).

Fields left at None in ``TrainConfig`` take the preset's recipe (``diffprune.diffusion.models.PRESETS``);
``TrainConfig.resolved()`` fills them.
"""
from __future__ import annotations

import math
import re
from typing import Any, ClassVar, Literal

from pydantic import Field, field_validator, model_validator

from diffprune.config import Precision, StrictModel
from diffprune.diffusion.models import PRESETS, SD_PRESET, get_preset

PUSH_FIELDS = ("push_to_hub", "hub_model_id", "hub_private")  # what happens after training, not how it trains
# Changing these between a checkpoint and --resume does not change the trajectory up to the checkpoint.
# The budget mode, the evaluation schedule in images and early stop only choose where a run ends and when it is
# looked at; the LR schedule, its horizon, Min-SNR and the initialisation change the trajectory, so they are not here.
_RESUME_MUTABLE = {"steps", "epochs", "checkpoint_every", "log_every", "tensorboard", "compile", "eval_every", "eval",
                   "log_with", "sample_every", "budget", "eval_every_images", "stop_at_target", *PUSH_FIELDS}


class TrainError(ValueError):
    """Training cannot start (bad data/config combination, incompatible checkpoint); the message says why."""


class StopAtTarget(StrictModel):
    """Early stop of a pruned arm (runs and sweeps only): once ``patience`` consecutive evaluations during training
    have ``metric`` <= the full arm's final value of that metric (same seed) x (1 + ``tolerance``)."""

    metric: Literal["fid", "kid", "classifier_fd"] = "classifier_fd"
    tolerance: float = Field(0.05, gt=0, lt=1)
    patience: int = Field(2, ge=1)


DURING_TRAINING_METRICS = ("fid", "kid", "classifier_fd")


class TrainEvalConfig(StrictModel):
    """Evaluation during training (``train.eval``), run at every ``train.eval_every`` steps and at the last one.

    The EMA model draws ``samples`` images with a fixed ``seed`` (so every evaluation of a run sees the same
    noise) and they are scored with the run's ``evaluate`` protocol (feature network, real-image statistics
    cache, classifier) restricted to ``metrics``. The default sizes keep one evaluation to seconds-minutes on a
    CPU; FID from 256 images is biased upward, so compare curves only at equal ``samples``.
    """

    samples: int = Field(256, ge=2)
    sampler: Literal["ddpm", "ddim"] = "ddim"
    steps: int | None = Field(50, ge=1, le=1000)  # denoising steps; None: the sampler's default
    batch_size: int = Field(256, ge=1)  # images per process per denoising batch
    seed: int = 0
    metrics: list[str] = Field(default_factory=lambda: ["fid", "kid", "classifier_fd"])

    @field_validator("metrics")
    @classmethod
    def _known_metrics(cls, v: list[str]) -> list[str]:
        bad = [m for m in v if m not in DURING_TRAINING_METRICS]
        if bad or not v:
            raise ValueError(f"choose from {', '.join(DURING_TRAINING_METRICS)} (got {v})")
        return list(dict.fromkeys(v))


class TrainConfig(StrictModel):
    """Training options. Fields left at None take the preset's recipe (``PRESETS[preset].recipe``)."""

    RESUME_MUTABLE: ClassVar[frozenset[str]] = frozenset(_RESUME_MUTABLE)

    preset: str = "ddpm-small"
    steps: int | None = None  # optimizer steps; or
    epochs: float | None = None  # passes over the given (sub)set: steps = ceil(epochs * N / batch_size)
    batch_size: int | None = None  # global images per optimizer step (all processes x grad_accum)
    lr: float | None = None  # Adam learning rate after warm-up
    warmup_steps: int | None = None  # linear LR warm-up from 0
    lr_schedule: Literal["constant", "cosine", "linear"] = "constant"  # after warm-up; cosine/linear decay to 0
    lr_schedule_steps: int | None = None  # steps the decay spans (None: the run's budget of steps)
    snr_gamma: float | None = None  # Min-SNR-gamma loss weights min(SNR, gamma) / SNR (Hang et al. 2023: 5); None: off
    init: Literal["diffusers", "ho"] = "diffusers"  # a fresh UNet's weights: diffusers' defaults or Ho et al.'s
    # (fan-avg uniform, zero last conv of each residual block, of each attention output and of the output conv)
    # runs/sweeps: "epochs" trains each arm `epochs` passes over its own (sub)set; "equal_steps" gives every arm
    # the full arm's number of steps (epochs x full-data size / batch_size), i.e. the same compute
    budget: Literal["epochs", "equal_steps"] = "epochs"
    stop_at_target: StopAtTarget | None = None  # runs/sweeps: stop a pruned arm early (see StopAtTarget)
    grad_clip: float | None = 1.0  # max global grad norm; None disables
    ema_decay: float | None = None  # per optimizer step
    ema_warmup: bool = False  # decay after n steps min(ema_decay, (1 + n) / (10 + n)), as diffusers' EMAModel
    # None: accelerate decides (`accelerate launch --mixed_precision bf16`, its config file, or the
    # ACCELERATE_MIXED_PRECISION variable; fp32 in a plain `python` process); a value here overrides them
    mixed_precision: Precision | None = None
    grad_accum: int = 1
    weighting: Literal["loss", "resample"] = "loss"
    hflip: bool | None = None  # random horizontal flip (p = 0.5); pixel data only
    conditional: bool = False  # class-conditional model (needs labels); always on for preset "sd"
    mask_ratio: float = 0.0  # MDT-style masked training of DiT presets: share of latent tokens masked; 0 = off
    prompt_template: str = "a photo of a {}"  # preset "sd": the prompt of each class
    prompt_names: dict[str, str] = {}  # preset "sd": text for a class name, e.g. {n01440764: tench} for ImageNet
    cfg_dropout: float = 0.1  # probability of replacing the label by the null label (conditional only)
    checkpoint_every: int = 1000  # steps between checkpoints (0: only at the end and on SIGINT/SIGTERM)
    log_every: int = 10  # steps between metrics lines
    seed: int = 0
    model_overrides: dict[str, Any] = {}  # keyword overrides of the preset's model (UNet2DModel or DiT)
    init_from: str | None = None  # initialise from a diffusers dir, a diffprune train dir or a hub id
    # (preset "sd": the Stable Diffusion pipeline dir or hub id whose unet, text encoder and scheduler are used)
    channels_last: bool = False
    # torch.compile the model; "auto": on for long runs, where compiling costs little of the training time
    # (diffusion.setup.AUTO_COMPILE_MIN_STEPS: CUDA and CPU thresholds, measured in docs/benchmarks.md)
    compile: bool | Literal["auto"] = "auto"
    tensorboard: bool = False  # shorthand for log_with: [tensorboard]
    log_with: list[str] = []  # accelerate trackers (tensorboard, wandb, comet_ml, mlflow, ...): loss, lr, img/s
    sample_every: int = 0  # steps between sample grids in samples/ (and to the trackers); 0 = off
    eval_every: int = 0  # steps between evaluations of the EMA model during training (0: off); also the last step
    # the same in training images (a multiple of batch_size): every arm of a run evaluated at the same x points
    eval_every_images: int | None = None
    eval: TrainEvalConfig = Field(default_factory=TrainEvalConfig)  # what those evaluations sample and score
    # after training, `diffprune run/train` uploads train/<arm>/pipeline/ (a DDPMPipeline folder) to the hub repo
    # hub_model_id ("{arm}" becomes the arm's label), as `diffprune push` does; needs HF_TOKEN or a login
    push_to_hub: bool = False
    hub_model_id: str | None = None  # "user/name" or "name"; required with push_to_hub
    hub_private: bool = True  # create the repository private

    @field_validator("preset")
    @classmethod
    def _known_preset(cls, v: str) -> str:
        if v not in PRESETS:
            raise ValueError(f"must be one of {sorted(PRESETS)}")
        return v

    @field_validator("steps", "batch_size", "grad_accum", "log_every")
    @classmethod
    def _positive_int(cls, v: int | None) -> int | None:
        if v is not None and v < 1:
            raise ValueError("must be a positive integer")
        return v

    @field_validator("log_with")
    @classmethod
    def _known_trackers(cls, v: list[str]) -> list[str]:
        from accelerate.utils import LoggerType

        known = sorted(t.value for t in LoggerType)
        bad = [t for t in v if t not in known]
        if bad:
            raise ValueError(f"unknown tracker(s) {bad}; accelerate knows {', '.join(known)}")
        return v

    @field_validator("lr_schedule_steps", "eval_every_images")
    @classmethod
    def _positive_or_none(cls, v: int | None) -> int | None:
        if v is not None and v < 1:
            raise ValueError("must be a positive integer, or null")
        return v

    @field_validator("snr_gamma")
    @classmethod
    def _gamma(cls, v: float | None) -> float | None:
        if v is not None and not (v > 0 and math.isfinite(v)):
            raise ValueError("must be a positive number (Hang et al. use 5), or null to turn Min-SNR off")
        return v

    @field_validator("warmup_steps", "checkpoint_every", "sample_every", "eval_every")
    @classmethod
    def _non_negative_int(cls, v: int | None) -> int | None:
        if v is not None and v < 0:
            raise ValueError("must be >= 0")
        return v

    @field_validator("epochs", "lr")
    @classmethod
    def _positive_float(cls, v: float | None) -> float | None:
        if v is not None and not (v > 0 and math.isfinite(v)):
            raise ValueError("must be a positive number")
        return v

    @field_validator("grad_clip")
    @classmethod
    def _clip(cls, v: float | None) -> float | None:
        if v is not None and not v > 0:
            raise ValueError("must be > 0, or null to disable clipping")
        return v

    @field_validator("ema_decay", "cfg_dropout")
    @classmethod
    def _unit_interval(cls, v: float | None) -> float | None:
        if v is not None and not 0.0 <= v < 1.0:
            raise ValueError("must be in [0, 1)")
        return v

    @model_validator(mode="after")
    def _one_budget(self) -> "TrainConfig":
        if self.steps is not None and self.epochs is not None:
            raise ValueError("give the budget as steps or as epochs, not both")
        if not 0.0 <= self.mask_ratio < 1.0:
            raise ValueError(f"mask_ratio must be in [0, 1) (MDT uses 0.3), got {self.mask_ratio}")
        if self.mask_ratio > 0 and get_preset(self.preset).kind != "dit":
            raise ValueError(f"mask_ratio (MDT masked training) needs a DiT preset (dit-*), not {self.preset!r}")
        if self.mask_ratio == 0 and self.model_overrides.get("side_interpolater_depth"):
            raise ValueError("model_overrides.side_interpolater_depth builds MDT's side-interpolater, which only "
                             "mask_ratio > 0 trains (unused parameters break DDP); set mask_ratio, e.g. 0.3")
        if self.preset == SD_PRESET and not self.init_from:
            raise ValueError("preset 'sd' fine-tunes a Stable Diffusion UNet: set init_from to its diffusers "
                             "pipeline dir (or hub id), e.g. init_from: /models/stable-diffusion-v1-5")
        return self

    @model_validator(mode="after")
    def _evaluation_schedule(self) -> "TrainConfig":
        if self.eval_every_images is not None:
            if self.eval_every and (self.batch_size is None
                                    or self.eval_every * self.batch_size != self.eval_every_images):
                raise ValueError("give the evaluation schedule as eval_every (steps) or eval_every_images, not both")
            if self.batch_size is not None and self.eval_every_images % self.batch_size:
                nearest = self.batch_size * max(1, round(self.eval_every_images / self.batch_size))
                raise ValueError(f"eval_every_images {self.eval_every_images} must be a multiple of batch_size "
                                 f"{self.batch_size}, e.g. {nearest}")
        if self.stop_at_target is not None:
            if not (self.eval_every or self.eval_every_images):
                raise ValueError("stop_at_target decides at the evaluations during training: set eval_every_images "
                                 "(or eval_every)")
            if self.stop_at_target.metric not in self.eval.metrics:
                raise ValueError(f"stop_at_target.metric {self.stop_at_target.metric!r} is not evaluated during "
                                 f"training: add it to train.eval.metrics ({self.eval.metrics})")
        if self.init == "ho" and (self.init_from or get_preset(self.preset).kind != "unet"):
            raise ValueError("init: ho initialises a fresh pixel UNet (a ddpm-* preset without init_from); "
                             "set init: diffusers")
        return self

    @model_validator(mode="after")
    def _push_target(self) -> "TrainConfig":
        if not self.push_to_hub:
            return self
        if not self.hub_model_id:
            raise ValueError("push_to_hub needs hub_model_id, the hub repository to push to, e.g. "
                             "hub_model_id: user/ddpm-coreset-{arm}")
        if not re.fullmatch(r"(?:[A-Za-z0-9][\w.-]*/)?[A-Za-z0-9][\w.-]*", self.hub_model_id.replace("{arm}", "a")):
            raise ValueError(f"hub_model_id {self.hub_model_id!r} is not a hub repository id: use user/name "
                             "(letters, digits, . _ -; {arm} for the arm's label)")
        if get_preset(self.preset).kind != "unet" or self.conditional:
            raise ValueError("push_to_hub uploads a DDPMPipeline, which only an unconditional pixel UNet (a ddpm-* "
                             f"preset, conditional: false) makes, not preset {self.preset!r}"
                             f"{' with conditional: true' if self.conditional else ''}; set push_to_hub: false")
        return self

    def resolved(self) -> "TrainConfig":
        """A copy with every None recipe field filled from the preset."""
        recipe = get_preset(self.preset).recipe
        fill = {k: getattr(recipe, k) for k in ("lr", "warmup_steps", "batch_size", "ema_decay", "hflip")}
        updates = {k: v for k, v in fill.items() if getattr(self, k) is None}
        if self.steps is None and self.epochs is None:
            updates["steps"] = recipe.steps
        if self.eval_every_images is not None:
            batch = updates.get("batch_size", self.batch_size)
            if self.eval_every_images % batch:
                raise TrainError(f"eval_every_images {self.eval_every_images} is not a multiple of the batch size "
                                 f"{batch} (the preset's); set train.batch_size or a multiple of {batch}")
            updates["eval_every"] = self.eval_every_images // batch
        if self.preset == SD_PRESET:
            updates["conditional"] = True  # the class prompts condition the UNet
        return self.model_copy(update=updates)


class SampleConfig(StrictModel):
    num_samples: int = 64
    sampler: Literal["ddpm", "ddim"] = "ddim"
    steps: int | None = None  # denoising steps; None: 1000 for ddpm, 100 for ddim
    batch_size: int = 256  # per process
    seed: int = 0
    guidance_scale: float = 1.0  # conditional models: 1 = plain conditional, 0 = unconditional, >1 = CFG
    eta: float = 0.0  # DDIM only: 0 deterministic, 1 ~ DDPM
    # None: the launch's precision (`accelerate launch --mixed_precision bf16`), as training; "no" without one
    mixed_precision: Precision | None = None

    @field_validator("num_samples", "batch_size")
    @classmethod
    def _positive(cls, v: int) -> int:
        if v < 1:
            raise ValueError("must be a positive integer")
        return v

    @field_validator("steps")
    @classmethod
    def _steps(cls, v: int | None) -> int | None:
        if v is not None and not 1 <= v <= 1000:
            raise ValueError("must be between 1 and the model's training steps (1000)")
        return v

    @field_validator("guidance_scale")
    @classmethod
    def _guidance(cls, v: float) -> float:
        if not (v >= 0 and math.isfinite(v)):
            raise ValueError("must be a finite number >= 0")
        return v

    @field_validator("eta")
    @classmethod
    def _eta(cls, v: float) -> float:
        if not 0.0 <= v <= 1.0:
            raise ValueError("must be in [0, 1]")
        return v

    @property
    def num_steps(self) -> int:
        return self.steps if self.steps is not None else (1000 if self.sampler == "ddpm" else 100)
