"""inception-v3 and resnet50 from torchvision (ImageNet weights, 2048-d pooled features).

Weights download through torchvision on users' machines; offline, pass ``weights=PATH`` to the file named
in the error message (a torchvision state dict, ``.pth`` or ``.safetensors``).
"""
from __future__ import annotations

from pathlib import Path

from torch import nn

from diffprune.encoders.base import EncoderError, TorchvisionStyleEncoder
from diffprune.encoders.weights import download_failed, load_state_dict, torch_hub_checkpoint_path
from diffprune.io import hash_file, hash_state_dict


def _torchvision_weights(name: str):
    from torchvision.models import Inception_V3_Weights, ResNet50_Weights

    return {"inception-v3": Inception_V3_Weights.IMAGENET1K_V1, "resnet50": ResNet50_Weights.IMAGENET1K_V1}[name]


def _build(name: str) -> nn.Module:
    from torchvision import models

    if name == "inception-v3":
        # transform_input=True is what torchvision's pretrained Inception expects (it re-normalises to [-1, 1])
        return models.inception_v3(weights=None, aux_logits=True, transform_input=True, init_weights=False)
    if name == "resnet50":
        return models.resnet50(weights=None)
    raise EncoderError(f"unknown torchvision encoder {name!r}")


def torchvision_encoder(name: str, weights: str | Path | None = None, pretrained: bool = True) -> TorchvisionStyleEncoder:
    net = _build(name)
    if not pretrained:
        wid = "random-init"
    elif weights is not None:
        state = load_state_dict(weights)
        missing, unexpected = net.load_state_dict(state, strict=False)
        if missing or unexpected:
            raise EncoderError(f"{weights} is not a torchvision {name} state dict: missing {missing[:3]}, "
                               f"unexpected {unexpected[:3]}")
        wid = hash_file(weights)
    else:
        w = _torchvision_weights(name)
        try:
            state = w.get_state_dict(progress=True, check_hash=True)
        except Exception as e:  # noqa: BLE001 - network errors come in many types
            raise download_failed(name, w.url, e, str(torch_hub_checkpoint_path(w.url))) from None
        net.load_state_dict(state)
        wid = f"torchvision:{w}"
    net.fc = nn.Identity()
    if name == "inception-v3":
        net.AuxLogits = None
        net.aux_logits = False
    enc = TorchvisionStyleEncoder(name, net, dim=2048, size=299 if name == "inception-v3" else 224)
    enc.weights_id = wid if pretrained else hash_state_dict(net.state_dict())
    return enc
