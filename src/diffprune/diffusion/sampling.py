"""Sampling: DDPM (ancestral) or DDIM(n), per-sample seeds, classifier-free guidance, sharded over processes.

Sample ``i`` of a run draws all its noise from its own generator seeded by (seed, i), so the images depend on
the seed and index only: not on the batch size, nor on how many processes share the work. Under
``accelerate launch`` each process renders a contiguous shard and the shards are gathered into one array.
Latent models (their ``diffprune.json`` names the VAE) are decoded to pixels batch by batch.
"""
from __future__ import annotations

import math
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from accelerate.utils import gather
from diffusers import DDIMScheduler, DDPMScheduler, UNet2DModel
from diffusers.utils.torch_utils import randn_tensor
from PIL import Image

from diffprune.data.latents import decode_latents, load_vae, vae_downsample_factor
from diffprune.diffusion.batches import stream_seed
from diffprune.diffusion.config import SampleConfig
from diffprune.diffusion.loading import load_model, read_meta
from diffprune.diffusion.models import null_class_label
from diffprune.diffusion.objective import epsilon_part
from diffprune.diffusion.precision import autocast
from diffprune.io import atomic_path, atomic_save_npy, atomic_save_npz, config_hash, hash_arrays, hash_state_dict
from diffprune.runtime import launch_precision, process_state, progress_bar

_STREAM_SAMPLE = 11


def sampling_scheduler(scheduler: DDPMScheduler, config: SampleConfig) -> DDPMScheduler | DDIMScheduler:
    """A fresh scheduler of the requested kind from the training schedule's config, timesteps set."""
    cls = DDIMScheduler if config.sampler == "ddim" else DDPMScheduler
    sched = cls.from_config(scheduler.config)
    sched.set_timesteps(config.num_steps)
    return sched


@dataclass
class LatentDecoder:
    """Latents (scaled as in training) -> uint8 images, with the VAE that encoded the training set."""

    vae: Any
    scaling_factor: float
    shift_factor: float
    channels: int  # of the training images (grey samples are the mean of the decoded RGB)
    resolution: int  # of the decoded images, pixels

    @classmethod
    def from_meta(cls, meta: dict[str, Any], latent_size: int, device: torch.device | str) -> "LatentDecoder":
        """From the ``latent`` entry of a latent model's ``diffprune.json``."""
        vae = load_vae(meta["vae"], device=device)
        return cls(vae, float(meta["scaling_factor"]), float(meta.get("shift_factor") or 0.0),
                   int(meta["image_channels"]), latent_size * vae_downsample_factor(vae))

    def __call__(self, latents: torch.Tensor) -> torch.Tensor:
        """float B x C x h x w latents -> uint8 B x H x W x C images on the latents' device."""
        images = decode_latents(self.vae, latents, self.scaling_factor, self.shift_factor, self.channels,
                                batch_size=len(latents))
        return torch.as_tensor(images, device=latents.device)


@torch.no_grad()
def sample_images(
    model: UNet2DModel,
    scheduler: DDPMScheduler,
    config: SampleConfig,
    class_labels: np.ndarray | None = None,
    progress: bool = True,
    device: torch.device | str | None = None,
    decoder: LatentDecoder | None = None,
) -> np.ndarray:
    """Generate ``config.num_samples`` images; uint8 N x H x W x C (every process gets the full array).

    Args:
        class_labels: int N class indices for a conditional model; None gives labels ``i % K``.
            Must be None for an unconditional model.
        device: where the model runs; default the accelerate process device (GPU if any).
        decoder: decodes a latent model's samples to images (None: the model works in pixel space).
    """
    state = process_state()
    device = torch.device(device) if device is not None else state.device
    n = config.num_samples
    labels = _resolve_labels(model, class_labels, n, config.guidance_scale)
    model = model.to(device).eval()
    sched = sampling_scheduler(scheduler, config)
    h, c = _image_shape(model, decoder)
    shard = math.ceil(n / state.num_processes)
    lo, hi = min(state.process_index * shard, n), min((state.process_index + 1) * shard, n)
    out = torch.zeros((shard, h, h, c), dtype=torch.uint8, device=device)
    bar = progress_bar(enabled=progress and state.is_local_main_process)
    task = bar.add_task(f"sample {config.sampler}-{config.num_steps}", total=(hi - lo) * len(sched.timesteps))
    with bar:
        for start in range(lo, hi, config.batch_size):
            stop = min(start + config.batch_size, hi)
            out[start - lo: stop - lo] = _render(model, sched, range(start, stop), labels, config, device,
                                                 lambda k: bar.update(task, advance=k), decoder)
    if state.num_processes > 1:
        out = gather(out)
    return out[:n].cpu().numpy()


def _image_shape(model: Any, decoder: LatentDecoder | None) -> tuple[int, int]:
    """(resolution, channels) of the images a model's samples become."""
    if decoder is not None:
        return decoder.resolution, decoder.channels
    return model.config.sample_size, model.config.in_channels


@torch.no_grad()
def _render(model: UNet2DModel, sched: DDPMScheduler | DDIMScheduler, idx: range, labels: np.ndarray | None,
            config: SampleConfig, device: torch.device, advance=lambda k: None,
            decoder: LatentDecoder | None = None) -> torch.Tensor:
    """Denoise samples ``idx`` (one batch): uint8 len(idx) x H x W x C on ``device``."""
    c, h = model.config.in_channels, model.config.sample_size
    gens = [torch.Generator().manual_seed(stream_seed(config.seed, _STREAM_SAMPLE, i)) for i in idx]
    x = randn_tensor((len(idx), c, h, h), generator=gens, device=device)
    y = None if labels is None else torch.as_tensor(labels[idx.start:idx.stop], device=device)
    kwargs = {"eta": config.eta} if config.sampler == "ddim" else {}
    for t in sched.timesteps:
        with sampling_autocast(device, config.mixed_precision):
            eps = _guided_eps(model, x, t, y, config.guidance_scale)
        x = sched.step(eps.float(), t, x, generator=gens, **kwargs).prev_sample
        advance(len(idx))
    return to_uint8(x) if decoder is None else decoder(x)


def generate(model_path: str | os.PathLike, out_dir: str | os.PathLike, config: SampleConfig,
             class_labels: np.ndarray | None = None, progress: bool = True, chunk: int = 1000) -> Path:
    """Load a model (see ``load_model``), sample it and write ``out_dir/samples.npz`` + ``grid.png``.

    Resumable and sharded: samples are rendered in chunks of ``chunk`` indices, each saved atomically to
    ``out_dir/.chunks/`` as soon as it is done; chunk j goes to process j % P under ``accelerate launch``. A rerun
    with the same config skips finished chunks (the images depend only on seed and index, so the result is the
    same however often it was interrupted or how many processes ran). The main process then joins the chunks
    (a shared filesystem is assumed across nodes) and removes them. Conditional models get ``labels`` in the npz
    (``i % K`` unless ``class_labels`` is given). Returns ``out_dir``.
    """
    state = process_state()
    config = config.model_copy(update={"mixed_precision": config.mixed_precision or launch_precision()})
    out_dir = Path(out_dir)
    chunks_dir = out_dir / ".chunks"
    model, scheduler = load_model(model_path, device=str(state.device))
    latent = read_meta(model_path).get("latent")
    decoder = None if latent is None else LatentDecoder.from_meta(latent, model.config.sample_size, state.device)
    n = config.num_samples
    labels = _resolve_labels(model, class_labels, n, config.guidance_scale)
    key = config_hash({"config": config.model_dump(mode="json"), "weights": hash_state_dict(model.state_dict()),
                       "labels": None if labels is None else hash_arrays(labels)})  # stale chunks never match
    sched = sampling_scheduler(scheduler, config)
    starts = list(range(0, n, chunk))
    mine = [s0 for j, s0 in enumerate(starts) if j % state.num_processes == state.process_index]
    todo = [s0 for s0 in mine if not (chunks_dir / f"{key}-{s0:09d}.npy").exists()]
    bar = progress_bar(enabled=progress and state.is_local_main_process)
    task = bar.add_task(f"sample {config.sampler}-{config.num_steps}",
                        total=sum(min(chunk, n - s0) for s0 in todo) * len(sched.timesteps))
    with bar:
        for s0 in todo:
            parts = [_render(model, sched, range(b, min(b + config.batch_size, s0 + chunk, n)), labels, config,
                             state.device, lambda k: bar.update(task, advance=k), decoder)
                     for b in range(s0, min(s0 + chunk, n), config.batch_size)]
            atomic_save_npy(chunks_dir / f"{key}-{s0:09d}.npy", torch.cat(parts).cpu().numpy())
    state.wait_for_everyone()
    if state.is_main_process:
        images = np.concatenate([np.load(chunks_dir / f"{key}-{s0:09d}.npy") for s0 in starts])
        save_samples(out_dir, images, labels)
        shutil.rmtree(chunks_dir, ignore_errors=True)
    state.wait_for_everyone()
    return out_dir


def to_uint8(x: torch.Tensor) -> torch.Tensor:
    """float B x C x H x W in [-1, 1] -> uint8 B x H x W x C (round to nearest, as diffusers pipelines do)."""
    return ((x.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1)


def save_samples(out_dir: str | os.PathLike, images: np.ndarray, labels: np.ndarray | None = None,
                 grid_size: int = 64) -> None:
    """Write ``samples.npz`` (``arr_0`` uint8 N x H x W x C, ``labels`` if given: the ADM/EDM evaluator format)
    and ``grid.png`` (the first ``grid_size`` images), both atomically."""
    images = np.asarray(images)
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[-1] not in (1, 3):
        raise ValueError(f"images must be uint8 N x H x W x C with C in (1, 3), got {images.dtype} {images.shape}")
    out_dir = Path(out_dir)
    arrays = {"arr_0": images}
    if labels is not None:
        labels = np.asarray(labels, dtype=np.int64)
        if labels.shape != (len(images),):
            raise ValueError(f"labels must have shape ({len(images)},), got {labels.shape}")
        arrays["labels"] = labels
    atomic_save_npz(out_dir / "samples.npz", **arrays)
    save_grid(out_dir / "grid.png", images[:grid_size])


def save_grid(path: str | os.PathLike, images: np.ndarray) -> Path:
    """``image_grid`` of uint8 images (N x H x W x C, or N x C x H x W) written atomically as a PNG."""
    images = np.asarray(images)
    if images.ndim == 4 and images.shape[1] in (1, 3) and images.shape[-1] not in (1, 3):
        images = images.transpose(0, 2, 3, 1)
    grid = image_grid(images)
    with atomic_path(path) as tmp:
        Image.fromarray(grid.squeeze(-1) if grid.shape[-1] == 1 else grid).save(tmp, format="PNG")
    return Path(path)


def image_grid(images: np.ndarray, pad: int = 2) -> np.ndarray:
    """Tile uint8 N x H x W x C images into a near-square grid (uint8 rows*H x cols*W x C, white padding)."""
    n, h, w, c = images.shape
    cols = max(1, math.ceil(math.sqrt(n)))
    rows = max(1, math.ceil(n / cols))
    grid = np.full((rows * (h + pad) + pad, cols * (w + pad) + pad, c), 255, dtype=np.uint8)
    for i, img in enumerate(images):
        r, k = divmod(i, cols)
        grid[pad + r * (h + pad): pad + r * (h + pad) + h, pad + k * (w + pad): pad + k * (w + pad) + w] = img
    return grid


def _guided_eps(model: UNet2DModel, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor | None,
                scale: float) -> torch.Tensor:
    """eps = eps(x, null) + s * (eps(x, y) - eps(x, null)); one batched call for both halves."""
    c = x.shape[1]
    if y is None:
        return epsilon_part(model(x, t).sample, c)
    null = torch.full_like(y, null_class_label(model))
    if scale == 1.0:
        return epsilon_part(model(x, t, class_labels=y).sample, c)
    if scale == 0.0:
        return epsilon_part(model(x, t, class_labels=null).sample, c)
    both = epsilon_part(model(torch.cat([x, x]), t, class_labels=torch.cat([y, null])).sample, c)
    cond, uncond = both.chunk(2)
    return uncond + scale * (cond - uncond)


def _resolve_labels(model: UNet2DModel, class_labels: np.ndarray | None, n: int, scale: float) -> np.ndarray | None:
    null = null_class_label(model)
    if null is None:
        if class_labels is not None:
            raise ValueError("class_labels were given but the model is unconditional (no num_class_embeds)")
        if scale != 1.0:
            raise ValueError(f"guidance_scale={scale} needs a class-conditional model; use 1.0 for this one")
        return None
    if class_labels is None:
        return np.arange(n, dtype=np.int64) % null
    labels = np.asarray(class_labels, dtype=np.int64)
    if labels.shape != (n,):
        raise ValueError(f"class_labels must have shape ({n},) (one per sample), got {labels.shape}")
    if len(labels) and (labels.min() < 0 or labels.max() >= null):
        raise ValueError(f"class_labels must lie in [0, {null}) (the null label {null} is reserved for guidance)")
    return labels


def sampling_autocast(device: torch.device, mixed_precision: str | None) -> torch.autocast:
    """Autocast for ``sample.mixed_precision``; None follows the launch (``accelerate launch --mixed_precision``)."""
    return autocast(device, mixed_precision or launch_precision())
