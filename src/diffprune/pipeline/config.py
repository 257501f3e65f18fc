"""The run config: one YAML file that drives every stage (``diffprune run CONFIG``).

Each stage owns its section's schema; this module composes them and adds the arms being compared.
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from diffprune.config import ConfigError, StrictModel, validate_config
from diffprune.data import DataConfig
from diffprune.data.config import LatentConfig
from diffprune.diffusion import SampleConfig, TrainConfig
from diffprune.encoders import EmbedConfig
from diffprune.evaluation import EvalConfig
from diffprune.io import read_yaml
from diffprune.reweighting import ReweightConfig
from diffprune.selection import SelectConfig, available_methods

FULL = "full"


class ArmConfig(StrictModel):
    """One trained model to compare: a selection method (or ``full`` for all data), with or without DRO."""

    name: str | None = None
    method: str = "gaussian"
    ratio: float | None = Field(default=None, gt=0, le=1)
    keep: Literal["top", "bottom", "middle"] | None = None
    reweight: bool = False
    seed: int | None = None
    options: dict[str, Any] = Field(default_factory=dict)
    # Min-SNR-gamma loss weighting of this arm only (label suffix "+minsnr"); None: the run's train.snr_gamma
    snr_gamma: float | None = Field(default=None, gt=0)

    @field_validator("method")
    @classmethod
    def _known_method(cls, v: str) -> str:
        methods = [FULL, *available_methods()]
        if v not in methods:
            raise ValueError(f"choose one of {', '.join(methods)}")
        return v

    def label(self) -> str:
        if self.name:
            return self.name
        label = self.method + ("+dro" if self.reweight else "") + ("+minsnr" if self.snr_gamma is not None else "")
        if self.ratio is not None:
            label += f"-r{self.ratio:g}"
        return label + (f"-s{self.seed}" if self.seed is not None else "")


# sections with a ``seed`` field: one left unset takes the run's ``seed``
SEEDED_SECTIONS = ("embed", "select", "reweight", "train", "sample", "evaluate")


class RunConfig(StrictModel):
    """Everything one run needs. Sections default to the stage's own defaults.

    ``seed`` is the default seed of every section that has one (``SEEDED_SECTIONS``, and ``train.eval``): a
    section's own ``seed`` wins. The arms choose the selection method (``arms: [{method: ...}]``), so
    ``select.method`` is refused here."""

    name: str = "demo"
    runs_dir: str = "runs"
    seed: int = 0  # default seed of every section that sets none
    data: DataConfig = Field(default_factory=DataConfig)
    embed: EmbedConfig = Field(default_factory=EmbedConfig)
    select: SelectConfig = Field(default_factory=SelectConfig)
    reweight: ReweightConfig = Field(default_factory=ReweightConfig)
    reference_data: Literal["full", "coreset"] = "full"
    latent: LatentConfig | None = None  # latent diffusion: train on these VAE latents; None = pixel space
    train: TrainConfig = Field(default_factory=TrainConfig)
    sample: SampleConfig = Field(default_factory=SampleConfig)
    evaluate: EvalConfig = Field(default_factory=EvalConfig)
    arms: list[ArmConfig] = Field(
        default_factory=lambda: [ArmConfig(method="gaussian", reweight=True), ArmConfig(method="random")]
    )

    @model_validator(mode="before")
    @classmethod
    def _run_seed(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        data = dict(data)
        seed = data.get("seed", 0)
        for name in SEEDED_SECTIONS:
            section = data.get(name)
            if section is None:
                data[name] = {"seed": seed}
            elif isinstance(section, dict) and "seed" not in section:
                data[name] = {**section, "seed": seed}
            elif isinstance(section, StrictModel) and "seed" not in section.model_fields_set:
                data[name] = section.model_copy(update={"seed": seed})
        train = data["train"]
        if isinstance(train, dict):
            ev = train.get("eval")
            if ev is None or (isinstance(ev, dict) and "seed" not in ev):
                data["train"] = {**train, "eval": {**(ev or {}), "seed": seed}}
        return data

    @field_validator("select", mode="before")
    @classmethod
    def _arms_choose_the_method(cls, v: Any) -> Any:
        chosen = v.get("method") if isinstance(v, dict) else \
            (v.method if isinstance(v, SelectConfig) and "method" in v.model_fields_set else None)
        if chosen is not None:
            raise ValueError(f"method {chosen!r} would be ignored: each arm chooses its method; remove "
                             f"select.method and list arms, e.g. arms: [{{method: {chosen}}}]")
        return v

    def model_dump(self, **kwargs: Any) -> dict[str, Any]:
        """The config as data, without ``select.method`` (the arms choose it), so that a dump validates again
        (``runs/<name>/config.yaml``, sweeps)."""
        data = super().model_dump(**kwargs)
        if isinstance(data.get("select"), dict):
            data["select"].pop("method", None)
        return data

    @field_validator("name")
    @classmethod
    def _safe_name(cls, v: str) -> str:
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._+-]*", v):
            raise ValueError("use letters, digits and . _ + - only (it names a folder)")
        return v

    @model_validator(mode="after")
    def _unique_arms(self) -> "RunConfig":
        labels = [a.label() for a in self.arms]
        dupes = sorted({x for x in labels if labels.count(x) > 1})
        if dupes:
            raise ValueError(f"arms: names must be unique, '{dupes[0]}' repeats; give each arm a 'name'")
        if not self.arms:
            raise ValueError("arms: list at least one arm, e.g. [{method: gaussian, reweight: true}]")
        return self

    @model_validator(mode="after")
    def _push_targets(self) -> "RunConfig":
        if not self.train.push_to_hub:
            return self
        if self.latent is not None:
            raise ValueError("train.push_to_hub uploads a DDPMPipeline, which a latent run does not make; "
                             "set train.push_to_hub: false")
        if len(self.arms) > 1 and "{arm}" not in (self.train.hub_model_id or ""):
            raise ValueError(f"train.hub_model_id {self.train.hub_model_id!r} would receive all {len(self.arms)} "
                             "arms; put {arm} in it (e.g. user/fm-{arm}) so that each arm gets its own repository")
        return self

    @property
    def run_dir(self) -> Path:
        return Path(self.runs_dir) / self.name

    def arm_select_config(self, arm: ArmConfig) -> SelectConfig:
        """The run's select section with the arm's method, ratio, keep and options applied."""
        update: dict[str, Any] = {"method": arm.method, "seed": self.select.seed if arm.seed is None else arm.seed}
        if arm.ratio is not None:
            update["ratio"] = arm.ratio
        if arm.keep is not None:
            update["keep"] = arm.keep
        if arm.options:
            update["options"] = {**self.select.options, **arm.options}
        return validate_config(SelectConfig, {**self.select.model_dump(), **update}, prefix="arms")


    def arm_train_config(self, arm: ArmConfig) -> TrainConfig:
        update: dict[str, Any] = {} if arm.seed is None else {"seed": arm.seed}
        if arm.snr_gamma is not None:
            update["snr_gamma"] = arm.snr_gamma
        return self.train.model_copy(update=update) if update else self.train

    def arm_reweight_config(self, arm: ArmConfig) -> ReweightConfig:
        return self.reweight if arm.seed is None else self.reweight.model_copy(update={"seed": arm.seed})


def parse_override(item: str) -> tuple[list[str], Any]:
    """``train.steps=200`` -> (['train', 'steps'], 200); the value is parsed as YAML."""
    import yaml

    key, sep, raw = item.partition("=")
    if not sep or not key:
        raise ConfigError(f"--set {item!r}: expected KEY=VALUE, e.g. --set train.steps=200")
    try:
        return key.split("."), yaml.safe_load(raw)
    except yaml.YAMLError as e:
        raise ConfigError(f"--set {item!r}: the value is not valid YAML ({_yaml_problem(e)}); quote it or fix "
                          f"the brackets, e.g. --set \"train.steps=200\"") from None


def _yaml_problem(err: Exception) -> str:
    """``problem at line L, column C`` of a YAML error (1-based), without PyYAML's multi-line layout."""
    mark = getattr(err, "problem_mark", None)
    problem = getattr(err, "problem", None) or str(err).splitlines()[0]
    return f"{problem} at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else problem


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    for item in overrides:
        path, value = parse_override(item)
        node = data
        for part in path[:-1]:
            nxt = node.setdefault(part, {})
            if not isinstance(nxt, dict):
                raise ConfigError(f"--set {item!r}: '{part}' is not a section")
            node = nxt
        node[path[-1]] = value
    return data


def load_run_config(path: str | Path | None = None, overrides: list[str] | None = None, **top: Any) -> RunConfig:
    """Read a YAML run config (or start from the defaults), apply ``--set`` overrides, validate."""
    data: dict[str, Any] = {}
    if path is not None:
        p = Path(path)
        if not p.exists():
            raise ConfigError(f"config file '{p}' not found")
        if p.is_dir():
            raise ConfigError(f"config file '{p}' is a folder; pass a YAML file, e.g. -c {p / 'run.yaml'}")
        import yaml

        try:
            loaded = read_yaml(p)
        except yaml.YAMLError as e:
            raise ConfigError(f"config file '{p}' is not valid YAML: {_yaml_problem(e)}; fix the syntax") from None
        except UnicodeDecodeError:
            raise ConfigError(f"config file '{p}' is not a text (UTF-8) file; pass a YAML run config") from None
        if loaded is not None and not isinstance(loaded, dict):
            raise ConfigError(f"config file '{p}' must hold a mapping of sections, got {type(loaded).__name__}")
        data = loaded or {}
    data.update({k: v for k, v in top.items() if v is not None})
    apply_overrides(data, overrides or [])
    return validate_config(RunConfig, data)
