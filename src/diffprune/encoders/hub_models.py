"""Optional encoders that need an extra package: clip-vit-b-32 (open_clip), dinov2-vits14 (timm or torch.hub)."""
from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from diffprune.encoders.base import CLIP_MEAN, CLIP_STD, EncoderError, TorchvisionStyleEncoder
from diffprune.encoders.weights import download_failed, load_state_dict
from diffprune.io import hash_file, hash_state_dict

DINOV2_URL = "https://dl.fbaipublicfiles.com/dinov2/dinov2_vits14/dinov2_vits14_pretrain.pth"


class _ClipImage(nn.Module):
    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model.encode_image(x)


def clip_vit_b_32(weights: str | Path | None = None, pretrained: bool = True) -> TorchvisionStyleEncoder:
    try:
        import open_clip
    except ImportError:
        raise EncoderError("clip-vit-b-32 needs open_clip: pip install 'diffprune[clip]' (open_clip_torch)") from None
    if not pretrained:
        model, wid = open_clip.create_model("ViT-B-32", pretrained=None), "random-init"
    else:
        tag = str(weights) if weights is not None else "openai"
        try:
            model = open_clip.create_model("ViT-B-32", pretrained=tag)
        except Exception as e:  # noqa: BLE001
            raise download_failed("clip-vit-b-32", "open_clip ViT-B-32 'openai' weights (open_clip_pytorch_model.bin "
                                  "of timm/vit_base_patch32_clip_224.openai on the Hugging Face hub)", e) from None
        wid = hash_file(weights) if weights is not None else "open_clip:ViT-B-32/openai"
    enc = TorchvisionStyleEncoder("clip-vit-b-32", _ClipImage(model), dim=512, size=224, mean=CLIP_MEAN,
                                  std=CLIP_STD, interpolation="bicubic")
    enc.weights_id = wid if pretrained else hash_state_dict(model.state_dict())
    return enc


def dinov2_vits14(weights: str | Path | None = None, pretrained: bool = True,
                  trust_repo: bool = False) -> TorchvisionStyleEncoder:
    """DINOv2 ViT-S/14 through timm; without timm, through ``torch.hub``, which runs the facebookresearch/dinov2
    repository's code and so needs ``trust_repo=True`` (``--set embed.options.trust_repo=true``)."""
    net: nn.Module | None = None
    try:
        import timm
    except ImportError:
        timm = None
    if timm is not None:
        net = timm.create_model("vit_small_patch14_dinov2.lvd142m", pretrained=False, num_classes=0, img_size=224)
        if pretrained and weights is None:
            try:
                net = timm.create_model("vit_small_patch14_dinov2.lvd142m", pretrained=True, num_classes=0, img_size=224)
            except Exception as e:  # noqa: BLE001
                raise download_failed("dinov2-vits14", "timm vit_small_patch14_dinov2.lvd142m (Hugging Face hub)", e) from None
    elif pretrained and weights is None:
        if not trust_repo:
            raise EncoderError("dinov2-vits14 without timm would run the facebookresearch/dinov2 hub code; "
                               "pip install 'diffprune[timm]', or allow that code with "
                               "--set embed.options.trust_repo=true")
        try:
            net = torch.hub.load("facebookresearch/dinov2", "dinov2_vits14", trust_repo=True)
        except Exception as e:  # noqa: BLE001
            raise download_failed("dinov2-vits14", DINOV2_URL + " (and the facebookresearch/dinov2 hub code), or "
                                  "pip install 'diffprune[timm]'", e) from None
    else:
        raise EncoderError("dinov2-vits14 with weights=PATH or random init needs timm: pip install 'diffprune[timm]'")
    wid = "pretrained" if pretrained else "random-init"
    if pretrained and weights is not None:
        state = load_state_dict(weights)
        try:
            from timm.models.vision_transformer import checkpoint_filter_fn

            state = checkpoint_filter_fn(state, net)
        except Exception:  # noqa: BLE001 - already in timm layout
            pass
        missing, unexpected = net.load_state_dict(state, strict=False)
        if missing:
            raise EncoderError(f"{weights} does not match dinov2-vits14: missing {missing[:3]}")
        wid = hash_file(weights)
    enc = TorchvisionStyleEncoder("dinov2-vits14", net, dim=384, size=224, interpolation="bicubic")
    enc.weights_id = wid if pretrained else hash_state_dict(net.state_dict())
    return enc
