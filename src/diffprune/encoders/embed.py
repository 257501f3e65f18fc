"""``embed_dataset``: run a frozen encoder over a dataset into ``features.npy`` (float32 N x D) + ``meta.json``.

Resumable: rows are written chunk by chunk into ``features.partial.npy`` (a memory map) and each finished
chunk leaves a marker in ``progress/``; a killed run continues with the missing chunks. When every chunk is
done the file is renamed to ``features.npy`` and ``meta.json`` is written last, so a complete pair always
means complete features. A finished pair whose meta matches (encoder, weights, preprocessing, dataset
fingerprint) is returned without recomputation.

Sharded: under ``accelerate launch`` every process embeds the chunks i with i % num_processes == rank into the
shared memory map; rank 0 checks that all chunks are done and publishes the result.
"""
from __future__ import annotations

import os
import shutil
import time
from pathlib import Path


import numpy as np
import torch

from diffprune.encoders.base import Encoder, EncoderError
from diffprune.encoders.config import EmbedConfig
from diffprune.encoders.registry import get_encoder
from diffprune.io import atomic_write_json, ensure_free_space, faults, read_json
from diffprune.runtime import distributed_state, progress_bar, resolve_device

FEATURES = "features.npy"
PARTIAL = "features.partial.npy"
PARTIAL_META = "partial.json"
META = "meta.json"
PROGRESS = "progress"


class _Batches(torch.utils.data.Dataset):
    """Yields whole batches (lists of indices -> uint8 tensor) so a DataLoader worker slices numpy once."""

    def __init__(self, images: np.ndarray) -> None:
        self.images = images

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, rows: list[int]) -> torch.Tensor:
        return torch.from_numpy(np.ascontiguousarray(self.images[rows[0] : rows[-1] + 1]))


def _dist_state():
    """(rank, world size, barrier, device) of this process: accelerate's under a multi-process launch."""
    state = distributed_state()
    if state is None:
        return 0, 1, (lambda: None), None
    return state.process_index, state.num_processes, state.wait_for_everyone, state.device


def _meta_key(meta: dict) -> dict:
    keys = ("encoder", "weights_hash", "preprocessing", "dim", "num_images", "dataset_fingerprint", "options")
    return {k: meta.get(k) for k in keys}


def build_encoder(config: EmbedConfig, dataset, device) -> Encoder:
    enc = get_encoder(config.encoder, config.weights, device=device, seed=config.seed, **config.options)
    if getattr(enc, "requires_fit", False):
        enc.fit(dataset.images, seed=config.seed)
    if not enc.dim:
        with torch.inference_mode():
            enc.dim = int(enc(torch.from_numpy(np.ascontiguousarray(dataset.images[:1]))).shape[1])
    return enc


def embed_dataset(dataset, config: EmbedConfig, out_dir: str | Path, progress: bool = True,
                  max_chunks: int | None = None) -> np.ndarray:
    """Embed ``dataset.images`` (uint8 N x C x H x W) into ``out_dir/features.npy``; returns it memory-mapped.

    ``max_chunks`` stops after that many new chunks (for tests of resumption); the call then raises
    ``EmbedInterrupted`` and a later call continues.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    rank, world, barrier, dist_device = _dist_state()
    device = resolve_device(dist_device if dist_device is not None and config.device == "auto" else config.device)
    enc = build_encoder(config, dataset, device)
    n = len(dataset)
    meta = {
        "encoder": config.encoder,
        "weights": config.weights,
        "weights_hash": enc.weights_id,
        "dim": int(enc.dim),
        "dtype": "float32",
        "num_images": int(n),
        "preprocessing": enc.preprocessing,
        "options": dict(config.options),
        "dataset": getattr(dataset, "name", "dataset"),
        "dataset_fingerprint": dataset.fingerprint,
        "input_shape": list(dataset.images.shape[1:]),
        "chunk_size": config.chunk_size,
    }
    final = out / FEATURES
    if final.is_file() and (out / META).is_file() and _meta_key(read_json(out / META)) == _meta_key(meta):
        if rank == 0:  # a kill right after meta.json was written leaves the progress bookkeeping behind
            shutil.rmtree(out / PROGRESS, ignore_errors=True)
            (out / PARTIAL_META).unlink(missing_ok=True)
        return np.load(final, mmap_mode="r")

    n_chunks = max(1, -(-n // config.chunk_size))
    partial, marks = out / PARTIAL, out / PROGRESS
    if rank == 0:
        fresh = not (partial.is_file() and (out / PARTIAL_META).is_file()
                     and _meta_key(read_json(out / PARTIAL_META)) == _meta_key(meta)
                     and read_json(out / PARTIAL_META).get("chunk_size") == config.chunk_size)
        if fresh:
            shutil.rmtree(marks, ignore_errors=True)
            partial.unlink(missing_ok=True)
            # the map is sparse until written: on a full disk the writes would die with SIGBUS, so check first
            ensure_free_space(partial, n * int(enc.dim) * 4 + 4096)
            np.lib.format.open_memmap(partial, mode="w+", dtype=np.float32, shape=(n, int(enc.dim))).flush()
            atomic_write_json(out / PARTIAL_META, meta)
        marks.mkdir(exist_ok=True)
    barrier()

    todo = [i for i in range(n_chunks) if i % world == rank and not (marks / f"{i:06d}.done").exists()]
    started = time.time()
    if todo:
        store = np.load(partial, mmap_mode="r+")
        _run_chunks(enc, dataset.images, store, todo, config, marks, progress and rank == 0, max_chunks)
        del store
    barrier()
    if rank == 0:
        missing = [i for i in range(n_chunks) if not (marks / f"{i:06d}.done").exists()]
        if missing:
            raise EmbedInterrupted(f"{len(missing)} of {n_chunks} chunks are not embedded yet; call again to resume")
        write = faults.before_write(final)  # a numbered write for the fault-injection hook (off by default)
        os.replace(partial, final)
        faults.after_write(write, final)
        atomic_write_json(out / META, {**meta, "seconds_last_run": round(time.time() - started, 3),
                                       "num_processes": world})
        shutil.rmtree(marks, ignore_errors=True)
        (out / PARTIAL_META).unlink(missing_ok=True)
    barrier()
    return np.load(final, mmap_mode="r")


class EmbedInterrupted(EncoderError):
    """Embedding stopped before every chunk was written; calling ``embed_dataset`` again resumes it."""


def _run_chunks(enc: Encoder, images: np.ndarray, store: np.ndarray, todo: list[int], config: EmbedConfig,
                marks: Path, progress: bool, max_chunks: int | None) -> None:
    n = len(images)
    device = enc.device
    use_autocast = config.autocast and device.type == "cuda" and getattr(enc, "autocast_ok", True)
    total = sum(min(n, (i + 1) * config.chunk_size) - i * config.chunk_size for i in todo)
    bar = progress_bar(enabled=progress, rate="img/s", transient=True)
    bar.start()
    task = bar.add_task(f"embedding ({enc.name})", total=total)
    try:
        for count, chunk in enumerate(todo):
            if max_chunks is not None and count >= max_chunks:
                raise EmbedInterrupted(f"stopped after {max_chunks} chunks (max_chunks); call again to resume")
            lo, hi = chunk * config.chunk_size, min(n, (chunk + 1) * config.chunk_size)
            sampler = torch.utils.data.BatchSampler(range(lo, hi), config.batch_size, drop_last=False)
            loader = torch.utils.data.DataLoader(_Batches(images), sampler=sampler, batch_size=None,
                                                 num_workers=config.num_workers,
                                                 pin_memory=device.type == "cuda")
            row = lo
            for batch in loader:
                with torch.inference_mode(), torch.autocast("cuda", enabled=use_autocast):
                    feats = enc(batch).float().cpu().numpy()
                store[row : row + len(feats)] = feats
                row += len(feats)
                bar.update(task, advance=len(feats))
            if not np.isfinite(store[lo:hi]).all():
                raise EncoderError(f"{enc.name} produced NaN/inf features for images {lo}..{hi - 1}; "
                                   "check the input images or disable autocast")
            store.flush()
            (marks / f"{chunk:06d}.done").touch()
    finally:
        bar.stop()
