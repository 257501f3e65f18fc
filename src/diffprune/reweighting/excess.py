"""Per-class statistics of one DRO step, from the unreduced losses of the proxy and the reference.

Both losses are B x C x H x W squared errors computed on the same x0, timestep and noise. The excess of
class k is

    pixel   : sum over class-k examples and pixels of max(l_proxy - l_ref, 0) / number of class-k pixels
    example : sum over class-k examples of max(mean_pixels l_proxy - mean_pixels l_ref, 0) / n_k
    timestep: sum over class-k examples of max(mean_pixels l_proxy - mean_pixels l_ref, 0) * R / R_b(i) / n_k,
              where R_b is the mean reference loss in example i's timestep bucket b (TIMESTEP_BUCKETS equal
              ranges of t) and R the mean reference loss, both over all the run's batches so far: the excess
              relative to what the reference loses at that noise level, so the noise levels whose losses are
              largest and noisiest do not dominate, in loss units (the scale that DoReMi's eta = 1 expects).

Which one separates real class differences from the noise of two same-recipe models best is measured by
``benchmarks/bench_dro_null.py`` (docs/benchmarks.md); the config default follows that measurement.

Statistics are returned as per-class sums and counts so that several steps can be accumulated
(``update_every``) before the excess is formed as sum / count.
"""
from __future__ import annotations

from typing import Callable, Literal

import numpy as np
import torch

ESTIMATORS = ("pixel", "example", "timestep")
TIMESTEP_BUCKETS = 10


class TimestepNormaliser:
    """The reference's mean loss per timestep bucket, as a running mean over every example seen so far.

    The reference is frozen, so the running mean converges to E[l_ref | bucket]; a batch alone (20 examples over
    10 buckets) would leave most buckets with one or two examples and make the normaliser as noisy as the
    excess. ``sums`` and ``counts`` (float64 TIMESTEP_BUCKETS) are the state a checkpoint keeps.
    """

    def __init__(self, reduce: Callable[[torch.Tensor], torch.Tensor] | None = None) -> None:
        self.sums = np.zeros(TIMESTEP_BUCKETS, dtype=np.float64)
        self.counts = np.zeros(TIMESTEP_BUCKETS, dtype=np.float64)
        # sums a tensor over the processes of a launched run (identity in one process), so every process keeps
        # the same running means as one process that saw the whole batch
        self.reduce = reduce if reduce is not None else (lambda x: x)

    def __call__(self, ref_per_example: torch.Tensor, timesteps: torch.Tensor, num_timesteps: int) -> torch.Tensor:
        """Add the batch, then return float64 B: each example's bucket mean divided by the overall mean."""
        bucket = (timesteps.to(ref_per_example.device).long() * TIMESTEP_BUCKETS) // int(num_timesteps)
        bucket = bucket.clamp(0, TIMESTEP_BUCKETS - 1)
        sums = torch.zeros(TIMESTEP_BUCKETS, dtype=torch.float64, device=ref_per_example.device)
        sums.index_add_(0, bucket, ref_per_example)
        counts = torch.bincount(bucket, minlength=TIMESTEP_BUCKETS).double()
        both = self.reduce(torch.cat([sums, counts])).cpu().numpy()
        self.sums += both[:TIMESTEP_BUCKETS]
        self.counts += both[TIMESTEP_BUCKETS:]
        means = np.divide(self.sums, self.counts, out=np.zeros(TIMESTEP_BUCKETS), where=self.counts > 0)
        overall = self.sums.sum() / self.counts.sum()
        ratio = torch.as_tensor(means / max(overall, 1e-300), device=ref_per_example.device)
        return ratio[bucket].clamp_min(1e-12)


def per_class_excess_sums(
    proxy_loss: torch.Tensor,
    ref_loss: torch.Tensor,
    labels: torch.Tensor,
    num_classes: int,
    mode: Literal["pixel", "example", "timestep"] = "pixel",
    timesteps: torch.Tensor | None = None,
    num_timesteps: int | None = None,
    normaliser: TimestepNormaliser | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Clipped excess-loss sums and their counts per class.

    Args:
        proxy_loss, ref_loss: B x ... unreduced losses (same shape), any float dtype.
        labels: int64 B class indices.
        num_classes: K.
        mode: "pixel" clips every pixel's excess, "example" clips each example's mean excess, "timestep" clips
            each example's mean excess and divides it by its timestep bucket's mean reference loss relative to
            the batch's.
        timesteps: int B, the diffusion timesteps of the examples ("timestep" mode only).
        num_timesteps: T of the noise schedule ("timestep" mode only).
        normaliser: the run's running per-bucket reference loss ("timestep" mode; updated with this batch);
            None normalises by this batch alone.

    Returns:
        (sums, counts): float64 K each; counts are pixels (pixel mode) or examples (the other modes).
    """
    if proxy_loss.shape != ref_loss.shape:
        raise ValueError(f"proxy and reference losses differ in shape: {tuple(proxy_loss.shape)} vs "
                         f"{tuple(ref_loss.shape)}; they must come from the same batch")
    b = proxy_loss.shape[0]
    diff = (proxy_loss.detach().double() - ref_loss.detach().double()).reshape(b, -1)
    if mode == "pixel":
        per_example = diff.clamp_min(0).sum(dim=1)
        unit = float(diff.shape[1])
    elif mode == "example":
        per_example = diff.mean(dim=1).clamp_min(0)
        unit = 1.0
    elif mode == "timestep":
        if timesteps is None or num_timesteps is None:
            raise ValueError("the timestep estimator needs the examples' timesteps and the schedule's length")
        ref_per_example = ref_loss.detach().double().reshape(b, -1).mean(dim=1)
        normaliser = normaliser if normaliser is not None else TimestepNormaliser()
        per_example = diff.mean(dim=1).clamp_min(0) / normaliser(ref_per_example, timesteps, num_timesteps)
        unit = 1.0
    else:
        raise ValueError(f"excess estimator must be one of {', '.join(ESTIMATORS)}, got {mode!r}")
    labels = labels.to(per_example.device)
    sums = torch.zeros(num_classes, dtype=torch.float64, device=per_example.device)
    sums.index_add_(0, labels, per_example)
    counts = torch.bincount(labels, minlength=num_classes).double() * unit
    return sums, counts


def weighted_class_loss(
    loss: torch.Tensor, labels: torch.Tensor, class_weights: torch.Tensor
) -> torch.Tensor:
    """The proxy objective: sum over classes k in the batch of a_k * (mean loss of class k), divided by the
    sum of a_k over the classes in the batch (so the scale does not depend on which classes were drawn; with
    every class present this is exactly sum_k a_k * mean_k).

    Args:
        loss: B x ... unreduced loss (requires grad).
        labels: int64 B.
        class_weights: float K (no grad).
    """
    b, k = loss.shape[0], class_weights.shape[0]
    per_example = loss.reshape(b, -1).mean(dim=1)
    labels = labels.to(loss.device)
    sums = torch.zeros(k, dtype=per_example.dtype, device=loss.device).index_add(0, labels, per_example)
    counts = torch.bincount(labels, minlength=k).to(per_example.dtype)
    present = counts > 0
    a = class_weights.to(device=loss.device, dtype=per_example.dtype)
    means = torch.where(present, sums / counts.clamp_min(1), torch.zeros_like(sums))
    return (a * means).sum() / a[present].sum()


class ExcessAccumulator:
    """Sums per-class statistics over ``update_every`` steps; ``pop()`` returns (excess K, present K) numpy."""

    def __init__(self, num_classes: int) -> None:
        self.num_classes = num_classes
        self.reset()

    def reset(self) -> None:
        self.sums = np.zeros(self.num_classes, dtype=np.float64)
        self.counts = np.zeros(self.num_classes, dtype=np.float64)
        self.steps = 0

    def add(self, sums: torch.Tensor, counts: torch.Tensor) -> None:
        self.sums += sums.cpu().numpy()
        self.counts += counts.cpu().numpy()
        self.steps += 1

    def pop(self) -> tuple[np.ndarray, np.ndarray]:
        present = self.counts > 0
        excess = np.divide(self.sums, self.counts, out=np.full(self.num_classes, np.nan), where=present)
        self.reset()
        return excess, present
