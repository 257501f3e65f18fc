"""Latent diffusion data: images encoded once by a frozen ``AutoencoderKL`` into a resumable on-disk cache.

``load_vae(spec)`` accepts a hub id (``stabilityai/sd-vae-ft-ema``, ``stabilityai/sd-vae-ft-mse``), a local VAE
directory (``config.json`` + safetensors), a Stable Diffusion pipeline directory (its ``vae/``) or
``tiny-random[:SEED]`` (a small random VAE for tests and smoke runs). Weights are fetched and read under
``diffprune.hub``'s policy: safetensors only, unless ``DIFFPRUNE_ALLOW_PICKLE_WEIGHTS=1``.

Latents are ``(posterior mean - shift_factor) * scaling_factor``: deterministic, so a cache is a pure function
of (images, VAE). DiT's fast-feature scripts instead store one posterior *sample* per image; the mean removes
that noise from the data (the diffusion noise dominates it anyway at SD's ~0.18 scaling).

A ``LatentCache`` directory holds::

    latents.npy   N x C_lat x h x w float16 (or float32) memory map over the WHOLE dataset's N slots
    done.npy      bool N: which slots hold finished latents (rewritten atomically after each chunk)
    meta.json     VAE spec, config and weights hashes, scaling/shift, image and latent shapes, dataset fingerprint
    labels.npy    int64 N labels of the dataset (absent when unlabelled)

``ensure(dataset, indices, vae)`` encodes only the slots not done yet, chunk by chunk: the memory map is flushed
before ``done.npy`` marks a chunk, so a crash loses at most the chunk in flight and a rerun re-encodes nothing
already done. Reopening with another dataset or VAE raises ``LatentError`` (a cache silently wiped because a
path was mistyped would cost hours of encoding); ``recreate=True`` starts the cache over instead.

Single process: under ``accelerate launch`` fill the cache on the main process, then let every rank open it.
"""
from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from diffusers import AutoencoderKL

from diffprune import hub
from diffprune.data.config import LatentConfig
from diffprune.data.dataset import ArrayShapes
from diffprune.io import (
    atomic_path,
    atomic_save_npy,
    atomic_write_json,
    config_hash,
    ensure_free_space,
    hash_arrays,
    hash_state_dict,
    read_json,
)
from diffprune.runtime import progress_bar

LATENTS, DONE, META, LABELS = "latents.npy", "done.npy", "meta.json", "labels.npy"


TINY_RANDOM = "tiny-random"
_VAE_FILES = ["config.json", "diffusion_pytorch_model.safetensors", "model_index.json", "vae/config.json",
              "vae/diffusion_pytorch_model.safetensors"]
# meta fields that must match for a cache to be reused (the rest is informational)
_KEY = ("vae_config_hash", "vae_weights_hash", "scaling_factor", "shift_factor", "image_shape", "latent_shape",
        "num_images", "dataset_fingerprint", "dtype")


class LatentError(ValueError):
    """A VAE cannot be loaded or a latent cache does not fit its dataset/VAE; the message says what to do."""


# ---- the VAE ----------------------------------------------------------------------------------------------


def load_vae(spec: str | os.PathLike, device: torch.device | str | None = None) -> AutoencoderKL:
    """An ``AutoencoderKL`` in eval mode with gradients off, float32, on ``device`` (default CPU).

    ``spec``: ``tiny-random`` / ``tiny-random:SEED``, a local VAE or Stable Diffusion directory, or a hub id.
    """
    spec = str(spec)
    if spec == TINY_RANDOM or spec.startswith(TINY_RANDOM + ":"):
        vae = tiny_random_vae(_tiny_seed(spec))
    else:
        vae = _load_vae_dir(_vae_dir(spec))
    vae.eval().requires_grad_(False)
    return vae.to(device) if device is not None else vae


def tiny_random_vae(seed: int = 0) -> AutoencoderKL:
    """A 2-level random ``AutoencoderKL`` (downsample factor 2, 4 latent channels); same seed, same weights."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return AutoencoderKL(
            in_channels=3, out_channels=3, latent_channels=4, layers_per_block=1, norm_num_groups=8,
            block_out_channels=(32, 32), down_block_types=("DownEncoderBlock2D",) * 2,
            up_block_types=("UpDecoderBlock2D",) * 2, sample_size=32,
        )


def vae_downsample_factor(vae: AutoencoderKL) -> int:
    """Pixels per latent cell along each side: 2 ** (number of levels - 1), 8 for Stable Diffusion's VAE."""
    return 2 ** (len(vae.config.block_out_channels) - 1)


def vae_factors(vae: AutoencoderKL) -> tuple[float, float]:
    """(scaling_factor, shift_factor) of ``vae``'s config; a missing shift is 0."""
    return float(vae.config.scaling_factor), float(vae.config.shift_factor or 0.0)


def _tiny_seed(spec: str) -> int:
    try:
        return int(spec.split(":", 1)[1]) if ":" in spec else 0
    except ValueError:
        raise LatentError(f"bad VAE spec {spec!r}: use tiny-random or tiny-random:SEED (an integer)") from None


def _vae_dir(spec: str) -> Path:
    path = Path(spec).expanduser()
    if not path.exists():
        path = hub.snapshot(spec, _VAE_FILES, error=LatentError, what="VAE")
    if (path / "vae" / "config.json").is_file():  # a Stable Diffusion pipeline directory
        return path / "vae"
    if (path / "config.json").is_file():
        return path
    raise LatentError(f"{path} holds no AutoencoderKL (expected config.json + safetensors, or a vae/ subfolder)")


def _load_vae_dir(path: Path) -> AutoencoderKL:
    return hub.from_pretrained(AutoencoderKL, path, LatentError)


# ---- encode / decode --------------------------------------------------------------------------------------


@torch.inference_mode()
def encode_images(vae: AutoencoderKL, images: np.ndarray, batch_size: int = 32) -> np.ndarray:
    """Encode uint8 N x C x H x W images (C = 1 or 3) into float32 N x C_lat x H/f x W/f scaled latents.

    Pixels map to [-1, 1]; grey images are repeated to RGB. Each latent is the posterior mean, shifted and
    scaled: ``(mean - shift_factor) * scaling_factor`` (unit-variance-ish inputs for the diffusion model).
    """
    images = np.asarray(images)
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[1] not in (1, 3):
        raise LatentError(f"images must be uint8 N x C x H x W with C in (1, 3), got {images.dtype} {images.shape}")
    param = next(vae.parameters())
    scale, shift = vae_factors(vae)
    out = []
    for lo in range(0, len(images), batch_size):
        x = torch.from_numpy(np.ascontiguousarray(images[lo: lo + batch_size])).to(param.device)
        x = x.to(param.dtype) / 127.5 - 1.0
        if x.shape[1] == 1:
            x = x.expand(-1, 3, -1, -1)
        mean = vae.encode(x).latent_dist.mean
        out.append(((mean.float() - shift) * scale).cpu().numpy())
    if not out:
        return np.zeros((0, vae.config.latent_channels, 0, 0), dtype=np.float32)
    return np.concatenate(out)


@torch.inference_mode()
def decode_latents(vae: AutoencoderKL, latents: np.ndarray | torch.Tensor, scaling_factor: float | None = None,
                   shift_factor: float | None = None, channels: int = 3, batch_size: int = 32) -> np.ndarray:
    """Decode scaled latents (N x C_lat x h x w) into uint8 N x H x W x ``channels`` images (as ``sample_images``).

    ``z / scaling_factor + shift_factor`` goes through ``vae.decode``; the [-1, 1] output is rounded to uint8
    exactly as ``sampling.to_uint8`` does. ``channels=1`` averages RGB so samples match grey training data.
    Factors left at None come from ``vae.config``.
    """
    if channels not in (1, 3):
        raise LatentError(f"channels must be 1 or 3, got {channels}")
    cfg_scale, cfg_shift = vae_factors(vae)
    scale = cfg_scale if scaling_factor is None else float(scaling_factor)
    shift = cfg_shift if shift_factor is None else float(shift_factor)
    param = next(vae.parameters())
    z_all = torch.as_tensor(latents)
    out = []
    for lo in range(0, len(z_all), batch_size):
        z = z_all[lo: lo + batch_size].to(param.device, param.dtype)
        x = vae.decode(z / scale + shift).sample.float()
        if channels == 1:
            x = x.mean(dim=1, keepdim=True)
        out.append(((x.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy())
    if not out:
        return np.zeros((0, 0, 0, channels), dtype=np.uint8)
    return np.concatenate(out)


# ---- the dataset of latents ---------------------------------------------------------------------------------


@dataclass
class LatentDataset(ArrayShapes):
    """Latents standing in for an ``ImageDataset`` in the trainer (same attribute names).

    Attributes:
        images: float16/float32 N x C_lat x h x w scaled latents (train on them as is: no /127.5).
        labels: int64 N class indices, or None.
        scaling_factor, shift_factor: how the latents were scaled (``decode_latents`` undoes it).
        image_channels: channels of the source images (1 for grey data: decode with ``channels=1``).
        vae_spec: the VAE that encoded them (``load_vae(vae_spec)`` decodes samples).
    """

    images: np.ndarray
    labels: np.ndarray | None
    class_names: list[str]
    scaling_factor: float
    shift_factor: float
    image_channels: int
    vae_spec: str
    name: str = "latents"
    fingerprint: str = ""
    skipped: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        if self.images.ndim != 4 or self.images.dtype not in (np.float16, np.float32):
            raise LatentError(f"latents must be float16/32 N x C x h x w, got {self.images.dtype} {self.images.shape}")
        if self.labels is not None:
            self.labels = np.asarray(self.labels, dtype=np.int64)
        if not self.fingerprint:
            self.fingerprint = hash_arrays(self.images, self.labels)

    def subset(self, indices: np.ndarray) -> "LatentDataset":
        """A new dataset holding ``indices`` (int array) in the given order; fingerprint recomputed."""
        indices = np.asarray(indices, dtype=np.int64)
        return LatentDataset(
            images=self.images[indices], labels=None if self.labels is None else self.labels[indices],
            class_names=list(self.class_names), scaling_factor=self.scaling_factor, shift_factor=self.shift_factor,
            image_channels=self.image_channels, vae_spec=self.vae_spec, name=f"{self.name}[subset]",
        )


# ---- the cache ---------------------------------------------------------------------------------------------


class LatentCache:
    """Resumable latents of one dataset under one VAE (see the module doc for the files)."""

    def __init__(self, path: Path, meta: dict[str, Any], latents: np.ndarray, done: np.ndarray) -> None:
        self.path, self.meta, self.latents, self.done = path, meta, latents, done

    @classmethod
    def open(cls, path: str | os.PathLike, dataset: Any, vae_spec: str, vae: AutoencoderKL,
             dtype: Literal["float16", "float32"] = "float16", recreate: bool = False) -> "LatentCache":
        """Reopen the cache in ``path`` or create an empty one for ``dataset`` (an ``ImageDataset``).

        Raises ``LatentError`` when ``path`` holds latents of another dataset, VAE, dtype or image shape,
        unless ``recreate=True``, which discards them and starts over.
        """
        path = Path(path)
        meta = _cache_meta(dataset, vae_spec, vae, dtype)
        old = read_json(path / META) if (path / META).is_file() else None
        if old is not None and _key(old) != _key(meta) and not recreate:
            diff = sorted(k for k in _KEY if old.get(k) != meta.get(k))
            raise LatentError(
                f"{path} caches latents of another dataset or VAE (differs in {', '.join(diff)}); "
                f"use another directory, or recreate=True to discard them and encode again"
            )
        if old is not None and _key(old) == _key(meta):
            with contextlib.suppress(OSError, ValueError):  # a damaged file: fall through and recreate
                return cls._reopen(path, old)
        return cls._create(path, meta, dataset.labels)

    @classmethod
    def _reopen(cls, path: Path, meta: dict[str, Any]) -> "LatentCache":
        shape = (meta["num_images"], *meta["latent_shape"])
        latents = np.load(path / LATENTS, mmap_mode="r+")
        done = np.load(path / DONE)
        if latents.shape != shape or latents.dtype != np.dtype(meta["dtype"]) or done.shape != shape[:1]:
            raise ValueError("cache files do not match meta.json")
        return cls(path, meta, latents, done.astype(bool))

    @classmethod
    def _create(cls, path: Path, meta: dict[str, Any], labels: np.ndarray | None) -> "LatentCache":
        path.mkdir(parents=True, exist_ok=True)
        (path / META).unlink(missing_ok=True)  # meta.json is written last: without it the cache is empty
        shape = (meta["num_images"], *meta["latent_shape"])
        ensure_free_space(path / LATENTS, int(np.prod(shape)) * np.dtype(meta["dtype"]).itemsize + 4096)
        with atomic_path(path / LATENTS) as tmp:
            np.lib.format.open_memmap(tmp, mode="w+", dtype=np.dtype(meta["dtype"]), shape=shape).flush()
        done = np.zeros(shape[0], dtype=bool)
        atomic_save_npy(path / DONE, done)
        (path / LABELS).unlink(missing_ok=True)
        if labels is not None:
            atomic_save_npy(path / LABELS, np.asarray(labels, dtype=np.int64))
        atomic_write_json(path / META, meta)
        return cls(path, meta, np.load(path / LATENTS, mmap_mode="r+"), done)

    def __len__(self) -> int:
        return len(self.done)

    @property
    def num_done(self) -> int:
        return int(self.done.sum())

    def missing(self, indices: np.ndarray | None = None) -> np.ndarray:
        """Sorted unique int64 indices (of ``indices``, default all) whose latents are not cached yet."""
        idx = np.arange(len(self)) if indices is None else self._check_indices(indices)
        idx = np.unique(idx)
        return idx[~self.done[idx]]

    def ensure(self, dataset: Any, indices: np.ndarray | None, vae: AutoencoderKL, batch_size: int = 32,
               chunk_size: int = 1024, progress: bool = True) -> None:
        """Encode the images of ``indices`` (default all) that are not cached yet, ``chunk_size`` at a time."""
        self._check_inputs(dataset, vae)
        todo = self.missing(indices)
        if not len(todo):
            return
        with progress_bar(enabled=progress, rate="img/s", transient=True) as bar:
            task = bar.add_task(f"encoding latents ({self.meta['vae_spec']})", total=len(todo))
            for lo in range(0, len(todo), chunk_size):
                chunk = todo[lo: lo + chunk_size]
                for b in range(0, len(chunk), batch_size):
                    rows = chunk[b: b + batch_size]
                    self.latents[rows] = encode_images(vae, dataset.images[rows], batch_size)
                    bar.update(task, advance=len(rows))
                if not np.isfinite(self.latents[chunk]).all():
                    raise LatentError(f"the VAE produced NaN/inf latents for images {chunk[:5].tolist()}...; "
                                      "check the images, or use float32 (fp16 overflow)")
                self.latents.flush()  # data on disk before the chunk is marked done
                self.done[chunk] = True
                atomic_save_npy(self.path / DONE, self.done)

    def dataset(self, indices: np.ndarray | None = None, name: str | None = None, labels: np.ndarray | None = None,
                class_names: list[str] | None = None, fingerprint: str = "") -> LatentDataset:
        """An in-memory ``LatentDataset`` of ``indices`` (default all; in the given order), all encoded already.

        ``labels`` / ``class_names`` default to the cached dataset's; a ``fingerprint`` given by the caller
        (e.g. derived from the images' fingerprint and the VAE) spares hashing the latents."""
        idx = np.arange(len(self)) if indices is None else self._check_indices(indices)
        if not self.done[idx].all():
            raise LatentError(f"{int((~self.done[idx]).sum())} of the requested latents are not encoded yet; "
                              f"call ensure(dataset, indices, vae) first")
        if labels is None and (self.path / LABELS).is_file():
            labels = np.load(self.path / LABELS)[idx]
        return LatentDataset(
            images=np.asarray(self.latents[idx]), labels=labels,
            class_names=list(self.meta["class_names"] if class_names is None else class_names),
            scaling_factor=self.meta["scaling_factor"], shift_factor=self.meta["shift_factor"],
            image_channels=self.meta["image_shape"][0], vae_spec=self.meta["vae_spec"],
            name=name or f"{self.meta['dataset']}[latents]", fingerprint=fingerprint,
        )

    def _check_indices(self, indices: np.ndarray) -> np.ndarray:
        idx = np.asarray(indices, dtype=np.int64).reshape(-1)
        if len(idx) and (idx.min() < 0 or idx.max() >= len(self)):
            raise LatentError(f"indices must lie in [0, {len(self)}), got range [{idx.min()}, {idx.max()}]")
        return idx

    def _check_inputs(self, dataset: Any, vae: AutoencoderKL) -> None:
        if dataset.fingerprint != self.meta["dataset_fingerprint"]:
            raise LatentError(f"dataset {dataset.fingerprint} is not the one cached in {self.path} "
                              f"({self.meta['dataset_fingerprint']})")
        if config_hash(_vae_config(vae)) != self.meta["vae_config_hash"]:
            raise LatentError(f"this VAE's config differs from the one that filled {self.path}")


def _vae_config(vae: AutoencoderKL) -> dict[str, Any]:
    return {k: v for k, v in dict(vae.config).items() if not k.startswith("_")}


def _cache_meta(dataset: Any, vae_spec: str, vae: AutoencoderKL, dtype: str) -> dict[str, Any]:
    if dtype not in ("float16", "float32"):
        raise LatentError(f"latent dtype must be float16 or float32, got {dtype!r}")
    c, h, w = (int(s) for s in dataset.images.shape[1:])
    f = vae_downsample_factor(vae)
    if h % f or w % f:
        raise LatentError(f"images of {h} x {w} px do not divide by the VAE's downsampling factor {f}; "
                          f"resize them to a multiple of {f}")
    scale, shift = vae_factors(vae)
    return {
        "vae_spec": str(vae_spec),
        "vae_config_hash": config_hash(_vae_config(vae)),
        "vae_weights_hash": hash_state_dict(vae.state_dict()),
        "scaling_factor": scale,
        "shift_factor": shift,
        "image_shape": [c, h, w],
        "latent_shape": [int(vae.config.latent_channels), h // f, w // f],
        "num_images": len(dataset),
        "dataset": getattr(dataset, "name", "dataset"),
        "dataset_fingerprint": dataset.fingerprint,
        "class_names": list(getattr(dataset, "class_names", [])),
        "dtype": dtype,
        "posterior": "mean",
    }


def _key(meta: dict[str, Any]) -> dict[str, Any]:
    return {k: meta.get(k) for k in _KEY}


__all__: list[str] = [
    "LatentCache", "LatentConfig", "LatentDataset", "LatentError", "decode_latents", "encode_images", "load_vae",
    "tiny_random_vae", "vae_downsample_factor", "vae_factors",
]
