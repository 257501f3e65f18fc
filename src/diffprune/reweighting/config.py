"""The ``reweight`` section of a run config: the DRO proxy run and where its reference comes from."""
from __future__ import annotations

from typing import Any, ClassVar, Literal

from pydantic import AliasChoices, Field, field_validator, model_validator

from diffprune.config import Device, Precision, StrictModel
from diffprune.diffusion.models import PRESETS as MODEL_PRESETS
from diffprune.diffusion.models import SD_PRESET, get_preset

# every model preset that builds from its config alone (Stable Diffusion needs a pipeline dir: not a proxy)
def trainable_presets() -> tuple[str, ...]:
    """The presets a proxy or reference can be (every one ``create_model`` builds: not ``sd``)."""
    return tuple(name for name, preset in MODEL_PRESETS.items() if preset.kind != SD_PRESET)


class ReferenceCost(StrictModel):
    """What training a given (pre-trained) reference cost, as its authors state it: the report shows the
    speed-up with it ("reference trained for this run") beside the one without ("reference already available").
    E.g. Ho et al.'s CIFAR-10 DDPM: 800k steps x batch 128 = ``images: 102400000``."""

    images: int = Field(ge=0)  # training images processed (steps x batch size)
    seconds: float | None = Field(default=None, ge=0)  # wall-clock, if known (on the authors' hardware)
    flops: float | None = Field(default=None, ge=0)  # training FLOPs, if known
    source: str = "stated in the run config"  # where the numbers come from


class ReweightConfig(StrictModel):
    """Group DRO of a small proxy DM against a frozen reference DM (METHOD.md stage 3, DoReMi with classes).

    Defaults follow DoReMi (eta 1, smoothing 1e-3); the proxy trains with Adam, grad clip 1 and, when ``lr``
    and ``warmup_steps`` are unset, the learning rate and linear warm-up of its preset's recipe.
    ``reference`` is a local diffusers folder, a diffprune checkpoint or a Hugging Face hub id; when it is
    unset a reference is trained on the given dataset with uniform weights first (DoReMi's step 1). A trained reference shares the proxy's preset and
    budget (``reference_preset`` and ``reference_steps`` unset: DoReMi's setting) and uses EMA warm-up.

    The proxy trains through ``diffusion.train`` (accelerate: one process or ``accelerate launch``, the launch's
    or ``mixed_precision``'s precision); ``device`` is kept for old configs and only warns when accelerate's
    device differs. ``rounds`` > 1 runs DoReMi's iterated variant (``reweighting.rounds``).

    ``null_control`` runs the same DRO once more with a second reference of the same recipe and seed
    ``null_seed`` standing in for the proxy (true excess zero): its weights show how far the estimator's noise
    alone moves the weights from uniform (the null band of the report).
    """

    # changing only these extends a finished DRO stage from its checkpoint (run_dro adds rounds, rounds_tol)
    RESUME_MUTABLE: ClassVar[frozenset[str]] = frozenset({"steps", "checkpoint_every", "device"})

    proxy_preset: str = "ddpm-tiny"  # the proxy's architecture (sized to the data's resolution and channels)
    model_overrides: dict[str, Any] = Field(default_factory=dict)  # UNet2DModel options for the proxy
    steps: int = Field(default=1000, ge=1)  # proxy steps
    batch_size: int = Field(default=64, ge=1)  # images per step, drawn uniformly over classes
    lr: float | None = Field(default=None, gt=0, le=1)  # proxy Adam lr; None: the preset's recipe
    warmup_steps: int | None = Field(default=None, ge=0)  # linear lr warm-up; None: the preset's recipe
    grad_clip: float | None = Field(default=1.0, gt=0)  # max grad norm; None disables
    eta: float = Field(default=1.0, ge=0)  # exponentiated-gradient step size (DoReMi: 1)
    smoothing: float = Field(default=1e-3, ge=0, lt=1)  # mix with uniform after each update (DoReMi: 1e-3)
    # the per-class excess-loss estimator (reweighting/excess.py); default: the best signal-to-null ratio
    # among those whose DRO finds a handicapped class, measured by benchmarks/bench_dro_null.py
    # (docs/benchmarks.md); `excess` is the field's former name
    estimator: Literal["pixel", "example", "timestep"] = Field(
        default="example", validation_alias=AliasChoices("estimator", "excess"))
    update_every: int = Field(default=1, ge=1)  # accumulate per-class statistics over N steps per update
    reference: str | None = None  # diffusers folder, diffprune train dir or hub id; None: train one
    reference_steps: int | None = Field(default=None, ge=1)  # steps of a trained reference; None: steps
    reference_cost: ReferenceCost | None = None  # a given reference's training cost (diffprune-trained: its manifest)
    reference_preset: str | None = None  # a trained reference's architecture; None: proxy_preset
    null_control: bool = False  # also run the DRO against a second same-recipe reference (the null band)
    null_seed: int | None = None  # seed of the trained null reference; None: seed + 1
    null_reference: str | None = None  # a given second reference (needed for null_control with `reference`)
    seed: int = 0  # proxy init, batches, timesteps and noise (and a trained reference's seed)
    checkpoint_every: int = Field(default=200, ge=1)  # steps between checkpoints (proxy and reference)
    # None: accelerate decides (`accelerate launch --mixed_precision bf16`); the proxy trains in it and the
    # reference's forward runs under the same autocast
    mixed_precision: Precision | None = None
    # iterated DoReMi: round r + 1 trains its reference with round r's averaged weights, then reruns DRO;
    # stops after `rounds` rounds or when max_k |a_k - a_prev_k| < rounds_tol (needs a trained reference)
    rounds: int = Field(default=1, ge=1)
    rounds_tol: float = Field(default=1e-3, gt=0)
    device: Device = "auto"  # the proxy trains on accelerate's device (a warning if not this)

    @field_validator("proxy_preset", "reference_preset")
    @classmethod
    def _known_preset(cls, v: str | None) -> str | None:
        if v is not None and v not in trainable_presets():
            raise ValueError(f"choose one of {', '.join(trainable_presets())}")
        return v

    @field_validator("reference")
    @classmethod
    def _non_empty(cls, v: str | None) -> str | None:
        if v is not None and not v.strip():
            raise ValueError("give a diffusers folder, a diffprune checkpoint or a hub id, or leave it unset")
        return v

    @model_validator(mode="after")
    def _one_reference_source(self) -> "ReweightConfig":
        if self.reference_cost is not None and self.reference is None:
            raise ValueError("reference_cost states what a given reference cost to train; this run trains its "
                             "reference (its manifest has the cost): drop reference_cost or set reference")
        if self.null_reference is not None and self.reference is None:
            raise ValueError("null_reference is the second of two given references: set reference too, or unset "
                             "null_reference to train the null reference with null_seed")
        if self.null_control and self.reference is not None and self.null_reference is None:
            raise ValueError(
                "null_control with a given reference needs null_reference: a second model of the same recipe and "
                "another seed (or unset reference to train both)"
            )
        if self.rounds > 1 and self.reference is not None:
            raise ValueError("rounds > 1 (iterated DoReMi) retrains the reference on each round's weights: unset "
                             "reference to train it here, or set rounds: 1 to use the given one")
        if self.null_seed is not None and self.null_seed == self.seed:
            raise ValueError("null_seed must differ from seed: the null reference is another seed of the recipe")
        return self

    @property
    def reference_budget(self) -> int:
        """Steps of a trained reference: ``reference_steps``, or the proxy's ``steps`` (DoReMi's setting)."""
        return self.reference_steps if self.reference_steps is not None else self.steps

    @property
    def null_reference_seed(self) -> int:
        """The seed of a trained null reference."""
        return self.null_seed if self.null_seed is not None else self.seed + 1

    def proxy_lr(self) -> float:
        """``lr``, or the proxy preset's recipe learning rate."""
        return self.lr if self.lr is not None else get_preset(self.proxy_preset).recipe.lr

    def proxy_warmup_steps(self) -> int:
        """``warmup_steps``, or the proxy preset's recipe warm-up."""
        return self.warmup_steps if self.warmup_steps is not None else get_preset(self.proxy_preset).recipe.warmup_steps

    @property
    def trains_reference(self) -> bool:
        """True when the reference is trained on the dataset (no ``reference`` given)."""
        return self.reference is None
