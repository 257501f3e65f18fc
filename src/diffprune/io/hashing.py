"""Content hashes: stable across runs and machines (sha256 over canonical bytes)."""
from __future__ import annotations

import hashlib
import json
import os
from typing import Any, Mapping

import numpy as np


def hash_arrays(*arrays: np.ndarray | None, length: int = 16) -> str:
    """sha256 of dtype, shape and C-ordered bytes of each array (None hashes as a marker)."""
    h = hashlib.sha256()
    for a in arrays:
        if a is None:
            h.update(b"<none>")
            continue
        a = np.ascontiguousarray(a)
        h.update(f"{a.dtype.str}|{a.shape}|".encode())
        h.update(memoryview(a).cast("B"))
    return h.hexdigest()[:length]


def hash_file(path: str | os.PathLike, length: int = 16, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()[:length]


def file_checksum(path: str | os.PathLike, *, full_below: int = 256 << 20, samples: int = 64,
                  block: int = 1 << 16) -> str:
    """A cache-integrity checksum: sha256 of the size and the whole file when it is under ``full_below``
    bytes, else of the size and ``samples`` blocks of ``block`` bytes at evenly spaced offsets (first and last
    included), so a multi-gigabyte feature file is checked in milliseconds."""
    size = os.path.getsize(path)
    if size < full_below:
        return f"{size}:{hash_file(path, length=32)}"
    h = hashlib.sha256(str(size).encode())
    with open(path, "rb") as f:
        for k in range(samples):
            f.seek((size - block) * k // (samples - 1))
            h.update(f.read(block))
    return f"{size}:s{h.hexdigest()[:32]}"


def hash_state_dict(state: Mapping[str, Any], length: int = 16) -> str:
    """Hash a torch state dict by names, shapes and values (for weights identity in manifests)."""
    h = hashlib.sha256()
    for name in sorted(state):
        t = state[name]
        arr = t.detach().cpu().contiguous().float().numpy() if hasattr(t, "detach") else np.asarray(t)
        h.update(name.encode())
        h.update(hash_arrays(arr, length=64).encode())
    return h.hexdigest()[:length]


def config_hash(config: Any, length: int = 16) -> str:
    """sha256 of the canonical JSON form (sorted keys) of a config mapping or pydantic model."""
    if hasattr(config, "model_dump"):
        config = config.model_dump(mode="json")
    blob = json.dumps(config, sort_keys=True, default=str, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()[:length]
