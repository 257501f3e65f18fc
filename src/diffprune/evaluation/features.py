"""Feature extraction: every image set goes through the feature network once; all metrics share the result.

Batched, on the GPU when present, and sharded across processes under ``accelerate launch`` (each process
embeds a contiguous slice; slices are gathered in rank order, so the result equals a single-process run).
"""
from __future__ import annotations

import math
from typing import Callable, Literal

import numpy as np
import torch

from diffprune.evaluation.errors import EvaluationError
from diffprune.runtime import distributed_state, progress_bar, resolve_device

Layout = Literal["auto", "nhwc", "nchw"]


def to_nchw(images: np.ndarray, layout: Layout = "auto") -> np.ndarray:
    """View uint8 images as N x C x H x W (C = 1 or 3). Accepts N x H x W x C (samples.npz) or N x C x H x W
    (``ImageDataset``); ``"auto"`` picks by where the channel axis (size 1 or 3) is."""
    arr = np.asarray(images)
    if arr.dtype != np.uint8:
        raise EvaluationError(
            f"images must be uint8 in [0, 255], got dtype {arr.dtype}; convert with "
            "np.clip(np.rint(x * 255), 0, 255).astype(np.uint8) for floats in [0, 1]"
        )
    if arr.ndim == 3:
        arr = arr[:, None]
        layout = "nchw"
    if arr.ndim != 4:
        raise EvaluationError(f"images must be N x H x W x C or N x C x H x W, got shape {arr.shape}")
    if layout == "auto":
        last, second = arr.shape[-1] in (1, 3), arr.shape[1] in (1, 3)
        if last and not second:
            layout = "nhwc"
        elif second and not last:
            layout = "nchw"
        elif last and second:
            layout = "nhwc" if arr.shape[1] == arr.shape[2] else "nchw"
        else:
            raise EvaluationError(f"cannot find a channel axis of size 1 or 3 in image shape {arr.shape}")
    return np.ascontiguousarray(arr.transpose(0, 3, 1, 2)) if layout == "nhwc" else arr


def batch_to_float_rgb(batch: np.ndarray, device: torch.device) -> torch.Tensor:
    """uint8 B x C x H x W -> float32 B x 3 x H x W in [0, 255] on ``device`` (grey repeated to 3 channels)."""
    x = torch.from_numpy(np.ascontiguousarray(batch)).to(device, non_blocking=True).float()
    if x.shape[1] == 1:
        x = x.expand(-1, 3, -1, -1)
    return x


def extract_features(
    images: np.ndarray,
    network: torch.nn.Module | Callable[[torch.Tensor], torch.Tensor],
    batch_size: int = 64,
    progress: bool = True,
    *,
    device: str | torch.device | None = None,
    layout: Layout = "auto",
    shard: bool = True,
    description: str = "features",
    with_logits: bool = False,
) -> np.ndarray | tuple[np.ndarray, np.ndarray]:
    """Run ``network`` over uint8 images and return float64 N x D features (rows in image order).

    Args:
        images: uint8 N x H x W x C or N x C x H x W (C = 1 or 3; grey is repeated to RGB).
        network: maps float B x 3 x H x W in [0, 255] to B x D (it resizes and scales itself, as the FID Inception).
            With ``with_logits=True`` it must have ``features_and_logits(x) -> (B x D, B x K)``.
        batch_size: images per forward pass.
        device: where to run; default: ``resolve_device("auto")``.
        shard: under ``accelerate launch`` with several processes, split the images across processes and gather.

    Returns:
        N x D float64 features, or ``(features, logits)`` with ``with_logits=True``.
    """
    nchw = to_nchw(images, layout)
    dev = resolve_device(device)
    state = distributed_state() if shard else None
    n = len(nchw)
    lo, hi = 0, n
    if state is not None:
        per = math.ceil(n / state.num_processes)
        lo, hi = min(n, state.process_index * per), min(n, (state.process_index + 1) * per)
    if isinstance(network, torch.nn.Module):
        network = network.to(dev).eval()
    forward = getattr(network, "features_and_logits") if with_logits else network
    feats: list[np.ndarray] = []
    logits: list[np.ndarray] = []
    show = progress and (state is None or state.is_main_process)
    with progress_bar(enabled=show, rate="img/s") as bar, torch.inference_mode():
        task = bar.add_task(description, total=hi - lo)
        for start in range(lo, hi, batch_size):
            x = batch_to_float_rgb(nchw[start : min(start + batch_size, hi)], dev)
            out = forward(x)
            f, lg = out if with_logits else (out, None)
            if f.ndim != 2 or f.shape[0] != x.shape[0]:
                f = f.reshape(x.shape[0], -1)
            feats.append(f.detach().double().cpu().numpy())
            if lg is not None:
                logits.append(lg.detach().double().cpu().numpy())
            bar.update(task, advance=x.shape[0])
    out_f = np.concatenate(feats) if feats else np.zeros((0, _num_features(network)), np.float64)
    out_l = np.concatenate(logits) if logits else None
    if state is not None:
        from accelerate.utils import gather_object

        out_f = np.concatenate([a for a in gather_object([out_f]) if len(a)] or [out_f])
        if with_logits:
            out_l = np.concatenate([a for a in gather_object([out_l]) if a is not None and len(a)] or [out_l])
    if with_logits:
        return out_f, out_l
    return out_f


def has_logits(network: object) -> bool:
    """True when the network offers ``features_and_logits`` (needed for the Inception Score)."""
    return callable(getattr(network, "features_and_logits", None))


def _num_features(network: object) -> int:
    return int(getattr(network, "num_features", 0))
