"""Batches sampled uniformly over classes, as a pure function of (seed, step) so that resuming is exact.

Class slots are filled from an endless queue of random permutations of the non-empty classes: every class
appears floor(B / K) or ceil(B / K) times per batch, and when K > B every class is visited once every
ceil(K / B) steps (this is what makes ``update_every`` cover all classes). Within a class, examples are drawn
uniformly with replacement. ``PairedBatches`` adds the timesteps and noise the trainer draws for a step, so
the null control replays the real DRO's inputs.
"""
from __future__ import annotations

import numpy as np
import torch

from diffprune.data import ImageDataset
from diffprune.diffusion.batches import noise_generator, to_model_input
from diffprune.reweighting.config import ReweightConfig

_QUEUE, _WITHIN, _NOISE = 7, 11, 13


class ClassBalancedBatches:
    """Indices of class-balanced batches.

    Args:
        labels: int64 N, values in [0, K).
        num_classes: K. Empty classes are never sampled.
        batch_size: B.
        seed: any int; batches are a pure function of (seed, step).
    """

    def __init__(self, labels: np.ndarray, num_classes: int, batch_size: int, seed: int) -> None:
        labels = np.asarray(labels, dtype=np.int64)
        self.batch_size = int(batch_size)
        self.seed = int(seed) & 0xFFFFFFFF
        order = np.argsort(labels, kind="stable")
        counts = np.bincount(labels, minlength=num_classes)
        starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
        self.classes = np.flatnonzero(counts > 0)
        if self.classes.size == 0:
            raise ValueError("cannot sample class-balanced batches from an empty dataset")
        self._order, self._counts, self._starts = order, counts, starts

    def _queue_slice(self, start: int, stop: int) -> np.ndarray:
        k = self.classes.size
        out = []
        for block in range(start // k, (stop - 1) // k + 1):
            perm = self.classes[np.random.default_rng([self.seed, _QUEUE, block]).permutation(k)]
            lo, hi = max(start - block * k, 0), min(stop - block * k, k)
            out.append(perm[lo:hi])
        return np.concatenate(out)

    def classes_at(self, step: int) -> np.ndarray:
        """int64 B: the class of each slot of the batch at ``step``."""
        b = self.batch_size
        return self._queue_slice(step * b, (step + 1) * b)

    def indices_at(self, step: int) -> np.ndarray:
        """int64 B: dataset indices of the batch at ``step`` (class-balanced, deterministic)."""
        cls = self.classes_at(step)
        rng = np.random.default_rng([self.seed, _WITHIN, step])
        offsets = np.floor(rng.random(cls.size) * self._counts[cls]).astype(np.int64)
        return self._order[self._starts[cls] + offsets]


def step_seed(seed: int, step: int) -> int:
    """A 63-bit seed for the torch generator of ``step`` (timesteps and noise)."""
    return int(np.random.default_rng([int(seed) & 0xFFFFFFFF, _NOISE, step]).integers(0, 2**63 - 1))


class PairedBatches:
    """``batches(step)`` = (x0, labels, timesteps, noise) of a DRO step: the class-balanced batch of the hook and
    the timesteps and noise the trainer draws for it (``noise_generator(seed, step)``: t first, then the noise),
    so the null control's two references see what the proxy and the reference saw."""

    def __init__(self, config: ReweightConfig, dataset: ImageDataset, num_timesteps: int,
                 device: torch.device) -> None:
        self.seed, self.device, self.num_timesteps = config.seed, device, num_timesteps
        self.images = torch.from_numpy(np.ascontiguousarray(dataset.images)).to(device)  # uint8 images or latents
        self.labels = torch.from_numpy(dataset.labels).to(device)
        self.sampler = ClassBalancedBatches(dataset.labels, dataset.num_classes, config.batch_size, config.seed)

    def __call__(self, step: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        idx = torch.from_numpy(self.sampler.indices_at(step)).to(self.device)
        x0, y = to_model_input(self.images[idx]), self.labels[idx]
        g = noise_generator(self.seed, step, self.device)
        t = torch.randint(0, self.num_timesteps, (len(idx),), device=self.device, generator=g)
        noise = torch.randn(x0.shape, device=self.device, generator=g)
        return x0, y, t, noise
