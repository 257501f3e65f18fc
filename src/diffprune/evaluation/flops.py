"""FLOPs of one batch of each kind of work, counted by ``torch.utils.flop_counter.FlopCounterMode``.

A stage's FLOPs = FLOPs per image of its kind of work x the images it processed, so every stage adds up in
one unit: encoder forward (embed), reference forward and proxy forward + backward (DRO), training forward +
backward (reference, train) and sampling forwards. FlopCounterMode counts the matrix products and
convolutions (2 FLOPs per multiply-add); element-wise work (norms, activations, the optimizer) is not counted,
and it is a small share of these networks' cost.
"""
from __future__ import annotations

from typing import Any, Callable

import torch
from torch.utils.flop_counter import FlopCounterMode

from diffprune.diffusion.objective import diffusion_loss


def count_flops(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> int:
    """FLOPs of ``fn(*args, **kwargs)`` (forward, and backward if ``fn`` runs one)."""
    with FlopCounterMode(display=False) as counter:
        fn(*args, **kwargs)
    return int(counter.get_total_flops())


def forward_flops_per_image(module: torch.nn.Module, batch: torch.Tensor, **kwargs: Any) -> float:
    """FLOPs of one forward pass of ``module`` per image of ``batch`` (B x ...), without gradients."""
    with torch.no_grad():
        return count_flops(module, batch, **kwargs) / len(batch)


def diffusion_flops_per_image(model: torch.nn.Module, scheduler: Any, x0: torch.Tensor,
                              class_labels: torch.Tensor | None = None, backward: bool = True) -> float:
    """FLOPs per image of ``x0`` (float B x C x H x W in [-1, 1]) of the diffusion loss' forward, and its
    backward when ``backward`` (a training step; forward only: a reference evaluation or one sampling step)."""
    timesteps = torch.randint(0, scheduler.config.num_train_timesteps, (len(x0),),
                              generator=torch.Generator().manual_seed(0)).to(x0.device)
    noise = torch.randn(x0.shape, generator=torch.Generator().manual_seed(1)).to(x0.device)
    was_training = model.training
    params = [p for p in model.parameters() if p.requires_grad]
    grads = [p.grad for p in params]

    def run() -> None:
        loss = diffusion_loss(model, scheduler, x0, timesteps, noise, class_labels).mean()
        if backward:
            loss.backward()

    model.train(backward)
    try:
        if backward:
            return count_flops(run) / len(x0)
        with torch.no_grad():
            return count_flops(run) / len(x0)
    finally:
        for p, g in zip(params, grads):  # leave the model as it was
            p.grad = g
        model.train(was_training)
