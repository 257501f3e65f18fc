"""Which examples each training step sees, and the per-step randomness, as pure functions of (seed, step).

Every process computes the same *global* batch and takes its own slice, so
- the trajectory does not depend on the number of processes (1 process == 2 processes with the same global
  batch, up to float reduction order),
- the data position is just the step counter: resuming at step s replays exactly what an uninterrupted run
  would have seen, with no sampler state to save,
- class resampling works under DDP without a distributed weighted sampler.
"""
from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence

import numpy as np
import torch

from diffprune.runtime import check_weight_sum

# Distinct streams derived from the run seed (so the data order and the noise are independent).
_STREAM_ORDER, _STREAM_RESAMPLE, _STREAM_NOISE = 1, 2, 3


class WeightsError(ValueError):
    """Class weights do not match the dataset; the message says what is expected."""


def stream_seed(seed: int, stream: int, index: int) -> int:
    """A 63-bit seed for (run seed, stream, index) via numpy's SeedSequence (well-mixed, platform-stable)."""
    return int(np.random.SeedSequence([seed, stream, index]).generate_state(1, dtype=np.uint64)[0] >> 1)


def class_weight_vector(class_weights: Mapping[str, float], class_names: Sequence[str]) -> np.ndarray:
    """float64 K vector a (sums to 1) in ``class_names`` order, validated against the dataset's classes."""
    names = list(class_names)
    missing = [n for n in names if n not in class_weights]
    extra = [n for n in class_weights if n not in names]
    if missing or extra:
        raise WeightsError(
            f"class_weights must have exactly the dataset's class names as keys; missing {missing}, unknown {extra}"
        )
    a = np.array([float(class_weights[n]) for n in names], dtype=np.float64)
    if not np.all(np.isfinite(a)) or (a < 0).any():
        raise WeightsError(f"class_weights must be finite and >= 0, got {dict(zip(names, a.tolist()))}")
    check_weight_sum(float(a.sum()), "class_weights", WeightsError)
    return a / a.sum()


def example_probabilities(labels: np.ndarray, class_probs: np.ndarray) -> np.ndarray:
    """Per-example sampling probability that draws class k with probability a_k, uniformly within the class.

    A class with weight > 0 but no examples cannot be drawn; its mass is renormalised over the others.
    """
    counts = np.bincount(labels, minlength=len(class_probs)).astype(np.float64)
    p = class_probs[labels] / np.maximum(counts[labels], 1.0)
    if p.sum() <= 0:
        raise WeightsError("class_weights give zero probability to every class present in the dataset")
    return p / p.sum()


def class_loss_multipliers(labels: np.ndarray, class_probs: np.ndarray) -> np.ndarray:
    """float64 K: the per-class loss multiplier m_k = a_k / p_k (p_k = n_k / N, the class's share of the
    examples) that gives class k the share a_k of the training signal under uniform example sampling.

    Class k's expected share of the loss (and gradient) mass is p_k * m_k = a_k, the same as resampling class k
    with probability a_k; with balanced classes m_k = K * a_k. As in ``example_probabilities``, the weight of a
    class without examples is renormalised over the others (its multiplier is 0). The multipliers average to 1
    over the examples, so the loss keeps its scale.
    """
    counts = np.bincount(labels, minlength=len(class_probs)).astype(np.float64)
    a = np.where(counts > 0, class_probs, 0.0)
    if a.sum() <= 0:
        raise WeightsError("class_weights give zero weight to every class present in the dataset")
    a = a / a.sum()
    return np.divide(a * counts.sum(), counts, out=np.zeros_like(a), where=counts > 0)


def example_weights(
    labels: np.ndarray, class_probs: np.ndarray | None, weighting: str = "loss"
) -> tuple[np.ndarray, np.ndarray]:
    """(sampling probability, loss weight) of each of the N examples, float64 N each, as the trainer uses them.

    No class weights: uniform sampling, weight 1. ``weighting="loss"``: uniform sampling, weight a_y / p_y
    (``class_loss_multipliers``).
    ``weighting="resample"``: ``example_probabilities`` (class k drawn with probability a_k), weight 1.
    Both give each class the expected share a_k of the loss.
    """
    n = len(labels)
    uniform, ones = np.full(n, 1.0 / max(n, 1)), np.ones(n)
    if class_probs is None:
        return uniform, ones
    if weighting == "loss":
        return uniform, class_loss_multipliers(labels, class_probs)[labels]
    if weighting == "resample":
        return example_probabilities(labels, class_probs), ones
    raise WeightsError(f"weighting must be 'loss' or 'resample', got '{weighting}'")


def global_batch_indices(
    step: int, batch_size: int, num_examples: int, seed: int, probs: torch.Tensor | None = None
) -> torch.Tensor:
    """int64 ``batch_size`` dataset indices of the global batch of optimizer step ``step`` (0-based).

    Uniform (``probs is None``): a stream of epoch-wise random permutations, cut into consecutive batches
    (a batch may straddle two epochs); every example is seen once per epoch.
    Resampled: ``batch_size`` draws with replacement from ``probs`` (float64 N, sums to 1).
    """
    if probs is not None:
        g = torch.Generator().manual_seed(stream_seed(seed, _STREAM_RESAMPLE, step))
        return torch.multinomial(probs, batch_size, replacement=True, generator=g)
    start = step * batch_size  # host-side integer arithmetic: nothing here waits for a device
    parts = []
    for epoch in range(start // num_examples, (start + batch_size - 1) // num_examples + 1):
        lo, hi = max(start, epoch * num_examples), min(start + batch_size, (epoch + 1) * num_examples)
        parts.append(_epoch_permutation(seed, epoch, num_examples)[lo - epoch * num_examples:hi - epoch * num_examples])
    return torch.cat(parts)


@functools.lru_cache(maxsize=2)
def _epoch_permutation(seed: int, epoch: int, num_examples: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(stream_seed(seed, _STREAM_ORDER, epoch))
    return torch.randperm(num_examples, generator=g)


def to_model_input(batch: torch.Tensor) -> torch.Tensor:
    """float32 model input of a batch of stored examples: uint8 images -> [-1, 1]; latents (float) as they are."""
    return batch.float() / 127.5 - 1.0 if batch.dtype == torch.uint8 else batch.float()


def to_device_async(tensor: torch.Tensor, device: torch.device) -> torch.Tensor:
    """``tensor`` on ``device`` without making the host wait: a host tensor bound for an accelerator is pinned
    first, so the copy is asynchronous (a pageable copy synchronises the stream with the host)."""
    if tensor.device == device:
        return tensor
    if tensor.device.type == "cpu" and device.type == "cuda":
        return tensor.pin_memory().to(device, non_blocking=True)
    return tensor.to(device)


def latent_meta(dataset: object) -> dict | None:
    """How to decode a latent dataset's examples back to images ({vae, scaling_factor, shift_factor,
    image_channels}), or None for an image dataset."""
    if getattr(dataset, "vae_spec", None) is None:
        return None
    return {"vae": dataset.vae_spec, "scaling_factor": float(dataset.scaling_factor),
            "shift_factor": float(dataset.shift_factor or 0.0), "image_channels": int(dataset.image_channels)}


def noise_generator(seed: int, step: int, device: torch.device | str) -> torch.Generator:
    """The generator for step ``step``'s timesteps, noise, flips and label dropout (same on every process)."""
    return torch.Generator(device=device).manual_seed(stream_seed(seed, _STREAM_NOISE, step))
