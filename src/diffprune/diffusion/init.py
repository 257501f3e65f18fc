"""Ho et al.'s (2020) initialisation of a DDPM UNet, as in their TensorFlow code (``diffusion_tf/nn.py``).

Every convolution and dense layer: ``variance_scaling(scale, mode="fan_avg", distribution="uniform")``, i.e.
U(-a, a) with a = sqrt(3 scale / ((fan_in + fan_out) / 2)) (Glorot/Xavier uniform at scale 1), biases 0; scale 0
(TF's 1e-10; exactly 0 here) for the last convolution of every residual block (``conv2``, the same name in
diffusers), the output projection of every attention block (``proj_out``; diffusers' ``to_out[0]``) and the
output convolution (``conv_out``), so each
residual branch starts as the identity and the network starts by predicting 0. Normalisation layers keep
weight 1 and bias 0 (as in TF). diffusers' ``UNet2DModel`` uses PyTorch's defaults (kaiming-uniform with a = sqrt(5),
fan-in biases) instead; ``train.init: ho`` applies this function to a fresh model.
"""
from __future__ import annotations

import torch
from diffusers.models.attention_processor import Attention
from diffusers.models.resnet import ResnetBlock2D
from torch import nn


@torch.no_grad()
def ho_init_(model: nn.Module) -> nn.Module:
    """Re-initialise ``model`` (a diffusers ``UNet2DModel``) in place as Ho et al. did; returns it."""
    for module in model.modules():
        if isinstance(module, (nn.Conv2d, nn.Linear)):
            nn.init.xavier_uniform_(module.weight)  # fan-avg uniform, scale 1
            if module.bias is not None:
                nn.init.zeros_(module.bias)
    for module in zero_init_layers(model):
        nn.init.zeros_(module.weight)
    return model


def zero_init_layers(model: nn.Module) -> list[nn.Module]:
    """The layers Ho et al. initialise at scale 0: each residual block's last conv, each attention output
    projection and the model's output conv."""
    layers: list[nn.Module] = []
    for module in model.modules():
        if isinstance(module, ResnetBlock2D):
            layers.append(module.conv2)
        elif isinstance(module, Attention):
            layers.append(module.to_out[0])
    conv_out = getattr(model, "conv_out", None)
    if conv_out is not None:
        layers.append(conv_out)
    return layers
