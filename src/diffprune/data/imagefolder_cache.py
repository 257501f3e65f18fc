"""The resumable on-disk cache of a decoded image folder (``load_dataset(..., cache_dir=DIR)``).

Layout::

    <cache_dir>/<folder name>-<key>/  images.npy  uint8 N_files x C x S x S memmap; the first num_images rows
                                                  hold the readable files in file order (unreadable ones are
                                                  skipped, not left as holes, so the tail rows go unused)
                                      state.json  decode progress (next file, rows written, skipped file indices),
                                                  rewritten atomically every CHECKPOINT_EVERY files
                                      labels.npy, meta.json  written last; meta.json marks the cache complete

The key hashes the folder path, every file's relative path, size, mtime and label, and the decode options,
so editing, adding or removing a file (or changing an option) gives a new cache instead of a stale one.
"""
from __future__ import annotations

import hashlib
import json
import re
import shutil
from pathlib import Path

import numpy as np

from diffprune.data.dataset import ImageDataset
from diffprune.data.decode import DatasetError, Decode, decode_stream, probe_mode, relative_ids
from diffprune.io import atomic_save_npy, atomic_write_json, folder_lock, hash_arrays, read_json
from diffprune.runtime import progress_bar

CACHE_VERSION = 1  # bump when decoding changes, so old caches are not reused
CHECKPOINT_EVERY = 4096  # files decoded between resumable checkpoints of an imagefolder cache


def _cache_key(root: Path, files: list[tuple[Path, int]], size: int, resize: str, channels: int | None) -> str:
    """16 hex digits identifying the folder's files (paths, sizes, mtimes, labels) and the decode options."""
    h = hashlib.sha256(json.dumps([CACHE_VERSION, str(root.resolve()), size, resize, channels]).encode())
    for f, k in files:
        try:
            st = f.stat()
            size_b, mtime = st.st_size, st.st_mtime_ns
        except OSError:  # a dangling link: decoding reports it as unreadable
            size_b, mtime = -1, -1
        h.update(f"{f.relative_to(root) if f.is_relative_to(root) else f}\0{size_b}\0{mtime}\0{k}\n".encode())
    return h.hexdigest()[:16]


def cached_imagefolder(
    root: Path, class_names: list[str], files: list[tuple[Path, int]], skip_bad: bool,
    size: int, resize: str, channels: int | None, cache_dir: Path, build: bool = True,
) -> ImageDataset:
    """Open the decoded cache of ``files`` (building or resuming it first if needed; ``build=False``: a
    ``DatasetError`` instead) as a read-only memmap."""
    key = _cache_key(root, files, size, resize, channels)
    d = cache_dir / f"{re.sub(r'[^A-Za-z0-9_.-]', '_', root.resolve().name)}-{key}"
    if not (d / "meta.json").exists() and not build:
        raise DatasetError(f"the decoded image cache {d} is not built yet (it is built when the data is first read)")
    if not (d / "meta.json").exists():
        d.mkdir(parents=True, exist_ok=True)
        # processes of one multi-GPU run never decode into one file at once: the others wait, then reuse it
        with folder_lock(d, wait=True, what=f"image cache {d}"):
            if not (d / "meta.json").exists():  # another process may have finished it while we waited
                _build_cache(d, root, class_names, files, skip_bad, size, resize, channels)
    meta = read_json(d / "meta.json")
    skipped = [str(files[i][0]) for i in meta["skipped_index"]]  # paths as this call spells them
    if skipped and not skip_bad:
        raise DatasetError(f"cannot read image {skipped[0]} (recorded in the cache {d}); "
                           "fix or remove it, or skip unreadable files with --set data.skip_bad=true")
    if not meta["num_images"]:
        raise DatasetError(f"imagefolder: none of the {meta['num_files']} images under '{root}' could be read")
    images = np.load(d / "images.npy", mmap_mode="r")[: meta["num_images"]]
    labels = np.load(d / "labels.npy") if class_names else None
    # content-addressed by the key (files, sizes, mtimes, options) instead of hashing every pixel
    fingerprint = hash_arrays(np.frombuffer(f"imagefolder-cache:{key}".encode(), np.uint8), labels)
    return ImageDataset(images, labels, class_names, name=f"imagefolder:{root}", fingerprint=fingerprint,
                        skipped=skipped, source_ids=relative_ids(root, files, set(meta["skipped_index"])))


def _checkpoint(mm: np.memmap, path: Path, state: dict) -> None:
    """Flush decoded rows to disk, then record them: a crash in between only redoes some rows."""
    mm.flush()
    atomic_write_json(path, state)


def _start_cache(d: Path, files: list[tuple[Path, int]], size: int, channels: int | None) -> tuple[np.memmap, dict]:
    """The memmap and progress state to decode into: resumed from ``state.json`` when there is one."""
    state_path, npy = d / "state.json", d / "images.npy"
    if state_path.exists() and npy.exists():
        return np.lib.format.open_memmap(npy, mode="r+"), read_json(state_path)
    mode = probe_mode(files, channels)
    shape = (len(files), channels or (1 if mode == "L" else 3), size, size)
    need = int(np.prod(shape))
    if shutil.disk_usage(d).free < need:  # fail now, not with SIGBUS when the mapped pages run out of disk
        raise DatasetError(f"imagefolder cache: {need / 1e9:.1f} GB needed in '{d}', "
                           f"{shutil.disk_usage(d).free / 1e9:.1f} GB free; choose another cache_dir")
    mm = np.lib.format.open_memmap(npy, mode="w+", dtype=np.uint8, shape=shape)  # sparse until written
    state = {"mode": mode, "next": 0, "written": 0, "skipped_index": []}
    _checkpoint(mm, state_path, state)
    return mm, state


def _build_cache(
    d: Path, root: Path, class_names: list[str], files: list[tuple[Path, int]], skip_bad: bool,
    size: int, resize: str, channels: int | None,
) -> None:
    """Decode ``files`` into ``d``/images.npy in one streaming, resumable pass; write meta.json last."""
    from PIL import __version__ as pil_version

    state_path = d / "state.json"
    mm, state = _start_cache(d, files, size, channels)
    dec = Decode(state["mode"], size, resize, channels)
    try:
        with progress_bar(enabled=True, rate="img/s", transient=True) as bar:
            task = bar.add_task(f"decoding {root.name} into cache", total=len(files), completed=state["next"])
            for i, a in decode_stream(files, dec, skip_bad, start=state["next"]):
                if a is None:
                    state["skipped_index"].append(i)
                else:
                    mm[state["written"]] = a
                    state["written"] += 1
                state["next"] = i + 1
                if state["next"] % CHECKPOINT_EVERY == 0:
                    _checkpoint(mm, state_path, state)
                bar.advance(task)
    finally:  # an error or Ctrl-C keeps what was decoded; the next load resumes at state["next"]
        _checkpoint(mm, state_path, state)
    row_shape = list(mm.shape[1:])
    del mm
    skipped = set(state["skipped_index"])
    atomic_save_npy(d / "labels.npy", np.asarray([k for i, (_, k) in enumerate(files) if i not in skipped], np.int64))
    atomic_write_json(d / "meta.json", {
        "version": CACHE_VERSION, "root": str(root.resolve()), "num_files": len(files),
        "num_images": state["written"], "shape": [state["written"], *row_shape], "resolution": size,
        "resize": resize, "channels": channels, "read_mode": state["mode"], "class_names": class_names,
        "skipped_index": state["skipped_index"], "skipped": [str(files[i][0]) for i in state["skipped_index"]],
        "pillow": pil_version,
    })
    state_path.unlink()
