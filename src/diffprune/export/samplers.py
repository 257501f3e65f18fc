"""A weighted sampler that shards under DDP / accelerate: every rank draws its own disjoint share of one
global, seeded, per-epoch draw (PyTorch's ``WeightedRandomSampler`` has no distributed form, and
``DistributedSampler`` has no weights)."""
from __future__ import annotations

import math
from collections.abc import Iterator, Sequence

import torch

from diffprune.diffusion.batches import stream_seed
from diffprune.runtime import launch_world

_STREAM_SAMPLER = 5  # batches.py uses streams 1-3, the trainer's MDT masks 4


def epoch_generator(seed: int, epoch: int) -> torch.Generator:
    """The CPU generator of epoch ``epoch``'s global draw (the same on every rank)."""
    return torch.Generator().manual_seed(stream_seed(seed, _STREAM_SAMPLER, epoch))


class WeightedDistributedSampler(torch.utils.data.Sampler[int]):
    """Draws ``num_samples`` indices per epoch with replacement, index i with probability proportional to
    ``weights[i]``, and yields this rank's share.

    Epoch e's global draw is ``torch.multinomial(weights, total, replacement=True)`` from the generator
    ``epoch_generator(seed, e)``, where ``total`` is ``num_samples`` rounded up to a multiple of the world
    size; rank r takes draws r, r + world, r + 2 world, ... So the ranks' draws are disjoint parts of one
    draw, the union does not depend on the world size, and a rerun (or a resumed epoch) repeats them exactly.
    Call ``set_epoch(e)`` at the start of every epoch, as with ``DistributedSampler``.

    Args:
        weights: N non-negative weights (need not sum to 1).
        num_samples: global draws per epoch (default N).
        num_replicas, rank: default from torch.distributed or the launcher's RANK / WORLD_SIZE.
        seed: the same on every rank.
    """

    def __init__(self, weights: Sequence[float] | torch.Tensor, num_samples: int | None = None,
                 num_replicas: int | None = None, rank: int | None = None, seed: int = 0) -> None:
        self.weights = torch.as_tensor(weights, dtype=torch.float64)
        if self.weights.ndim != 1 or not len(self.weights) or (self.weights < 0).any() or self.weights.sum() <= 0:
            raise ValueError("weights must be a non-empty 1-D sequence of non-negative numbers with a positive sum")
        env_rank, env_world = launch_world()
        self.num_replicas = env_world if num_replicas is None else int(num_replicas)
        self.rank = env_rank if rank is None else int(rank)
        if not 0 <= self.rank < self.num_replicas:
            raise ValueError(f"rank must lie in [0, {self.num_replicas}), got {self.rank}")
        n = len(self.weights) if num_samples is None else int(num_samples)
        if n < 1:
            raise ValueError(f"num_samples must be a positive integer, got {num_samples}")
        self.total = math.ceil(n / self.num_replicas) * self.num_replicas
        self.seed, self.epoch = int(seed), 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def global_draw(self, epoch: int | None = None) -> torch.Tensor:
        """int64 ``total`` indices of the epoch's draw over all ranks."""
        g = epoch_generator(self.seed, self.epoch if epoch is None else epoch)
        return torch.multinomial(self.weights, self.total, replacement=True, generator=g)

    def __iter__(self) -> Iterator[int]:
        return iter(self.global_draw()[self.rank::self.num_replicas].tolist())

    def __len__(self) -> int:
        return self.total // self.num_replicas
