"""Learning-rate schedules of the trainer: linear warm-up from 0, then constant, cosine or linear decay to 0.

``train.lr_schedule`` picks one; the decay runs over ``train.lr_schedule_steps`` optimizer steps (None: the run's
whole budget), so a run trained in pieces (early stop checks between them) follows the schedule of its budget.
The schedules are diffusers' (``diffusers.optimization.get_scheduler``), the ones its training scripts use.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from diffusers.optimization import get_scheduler

if TYPE_CHECKING:
    from diffprune.diffusion.config import TrainConfig

# train.lr_schedule -> diffusers' scheduler name
_DIFFUSERS_NAME = {"constant": "constant_with_warmup", "cosine": "cosine", "linear": "linear"}


def lr_schedule_for(optimizer: torch.optim.Optimizer, config: "TrainConfig",
                    steps_total: int) -> torch.optim.lr_scheduler.LambdaLR:
    """The LR schedule of ``config`` (resolved): warm-up over ``warmup_steps``, then ``lr_schedule`` with its
    decay ending at ``lr_schedule_steps`` (None: ``steps_total``)."""
    horizon = config.lr_schedule_steps or steps_total
    return get_scheduler(_DIFFUSERS_NAME[config.lr_schedule], optimizer,
                         num_warmup_steps=config.warmup_steps or 0, num_training_steps=horizon)
