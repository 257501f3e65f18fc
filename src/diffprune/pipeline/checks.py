"""Checks of a run config against its data and this machine, run before any stage computes.

A failed start must not cost a finished stage: every config and environment problem that a stage would hit
part-way (a device that is not there, an image size the model preset refuses, a tracker package that is not
installed) is found here, before the first stage folder is touched.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any, Iterable

from diffprune.config import ConfigError
from diffprune.diffusion.models import downsample_factor, get_preset
from diffprune.diffusion.tracking import trackers_of
from diffprune.encoders.registry import check_options
from diffprune.runtime import DeviceError, resolve_device

if TYPE_CHECKING:
    from diffprune.pipeline.config import ArmConfig, RunConfig

def check_device(field: str, value: str) -> None:
    """A named device (``cuda``, ``cuda:N``, ``mps``) must exist here (``runtime.resolve_device``); ``auto`` and
    ``cpu`` always work. The error names the config field."""
    if value in ("auto", "cpu"):
        return
    try:
        resolve_device(value)
    except DeviceError as e:
        raise ConfigError(f"{field}: got {value!r}; {e}") from None


def check_size(field: str, preset: str, overrides: dict[str, Any], size: int, what: str) -> None:
    """The model of ``preset`` (with ``overrides``) accepts inputs of ``size`` px: a multiple of its
    down-sampling factor (UNet) or patch (DiT)."""
    spec = get_preset(preset)
    if spec.kind == "sd":
        return
    factor = downsample_factor({**spec.model, **overrides})
    if size % factor:
        fix = f"a multiple of {factor}, e.g. {max(factor, size // factor * factor)}"
        raise ConfigError(f"{field}: preset {preset!r} needs {what} whose side is a multiple of {factor}, but they "
                          f"are {size} px; set data.resolution to {fix} (or pick another preset)")


def check_run(cfg: "RunConfig", arms: Iterable["ArmConfig"], resolution: int) -> None:
    """Every check that needs no compute, for ``arms`` of ``cfg`` on data of side ``resolution`` px.

    Raises ``ConfigError`` (one line naming the field and the fix) or the trainer's ``TrainError`` (a tracker
    package that is not installed)."""
    arms = list(arms)
    for field, value in (("embed.device", cfg.embed.device), ("select.device", cfg.select.device),
                         ("reweight.device", cfg.reweight.device), ("evaluate.device", cfg.evaluate.device),
                         *((("latent.device", cfg.latent.device),) if cfg.latent is not None else ())):
        check_device(field, value)
    trackers_of(cfg.train)  # log_with / tensorboard: the package must be installed
    check_options(cfg.embed.encoder, dict(cfg.embed.options))  # a typo: an error now, not mid-embed
    if cfg.latent is not None:
        return  # the latent side follows the VAE: the trainer checks it against the model
    tc = cfg.train
    if not tc.init_from:
        check_size("train.preset", tc.preset, tc.model_overrides, resolution, "images")
    rc = cfg.reweight
    if any(a.reweight for a in arms):
        check_size("reweight.proxy_preset", rc.proxy_preset, rc.model_overrides, resolution, "images")
        if rc.reference is None and rc.reference_preset not in (None, rc.proxy_preset):
            check_size("reweight.reference_preset", rc.reference_preset, {}, resolution, "images")
