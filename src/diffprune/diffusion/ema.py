"""Exponential moving average of a model's weights, as in the original DDPM recipe (constant decay).

W_ema <- decay * W_ema + (1 - decay) * W after every optimizer step, starting from the initial weights.
With ``warmup=True`` the first update copies the weights and update n + 1 uses min(decay, (1 + n) / (10 + n)),
the schedule of diffusers' ``EMAModel`` (without ``use_ema_warmup``): short runs then average their own recent
weights instead of keeping a share of the random initialisation.
Same maths as ``torch.optim.swa_utils.AveragedModel`` with ``get_ema_multi_avg_fn``, but the parameter lists
are collected once instead of walking the module tree every step: that walk cost more than the update itself
(benchmarks/bench_train.py, "EMA update" rows), which matters when a compiled GPU step takes a few ms.

Under DDP every process updates its own EMA from the synchronised weights, so all copies stay identical
without communication; only the main process saves it.
"""
from __future__ import annotations

import copy

import torch


class EMA:
    """EMA copy of ``model`` (``ema.module``: same class, eval mode, no grad).

    ``model``'s parameters are bound once: keep updating the same model object (optimizer steps and
    ``load_state_dict`` change tensors in place, so they are fine; re-creating parameters is not).
    """

    def __init__(self, model: torch.nn.Module, decay: float, warmup: bool = False) -> None:
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"EMA decay must be in [0, 1), got {decay}")
        self.decay = decay
        self.warmup = warmup
        self.module = copy.deepcopy(model).eval().requires_grad_(False)
        self.updates = 0
        pairs = list(zip([*self.module.parameters(), *self.module.buffers()], [*model.parameters(), *model.buffers()]))
        self._ema_f = [e for e, s in pairs if e.is_floating_point()]
        self._src_f = [s for e, s in pairs if e.is_floating_point()]
        self._other = [(e, s) for e, s in pairs if not e.is_floating_point()]  # e.g. int counters: copied

    def current_decay(self) -> float:
        """The decay the next update applies."""
        if not self.warmup:
            return self.decay
        n = self.updates
        return 0.0 if n == 0 else min(self.decay, (1 + n) / (10 + n))

    @torch.no_grad()
    def update(self) -> None:
        if self._ema_f:
            torch._foreach_lerp_(self._ema_f, self._src_f, 1.0 - self.current_decay())
        for e, s in self._other:
            e.copy_(s)
        self.updates += 1

    def state_dict(self) -> dict[str, torch.Tensor]:
        return self.module.state_dict()

    def load_state_dict(self, state: dict[str, torch.Tensor], updates: int) -> None:
        self.module.load_state_dict(state)
        self.updates = updates
