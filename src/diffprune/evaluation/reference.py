"""Reference (real-image) features and statistics, computed once and cached.

Cache layout (``cache_dir/ref-<key>/``), key = dataset fingerprint + network identity + subset choice:
    features.npy   float32 N x D (memory-mapped on load; KID, PRDC and class-wise FID need the rows)
    indices.npy    int64 N, which images of the reference dataset were used
    ref_stats.npz  pytorch-fid's format: ``mu`` (D,), ``sigma`` (D x D) float64, plus ``count`` and ``protocol``
                   (a JSON string), so ``np.load(path)["mu"]`` works in any FID tool
A cache entry is written atomically and validated on load (shapes, counts); a broken entry is recomputed.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np

from diffprune.data import ImageDataset
from diffprune.evaluation.errors import EvaluationError
from diffprune.evaluation.frechet import gaussian_stats
from diffprune.io import atomic_save_npy, atomic_save_npz, config_hash


@dataclass
class ReferenceFeatures:
    """Real-image features with the statistics FID needs; ``labels`` aligned with ``features`` (or None)."""

    features: np.ndarray
    indices: np.ndarray
    labels: np.ndarray | None
    mu: np.ndarray
    sigma: np.ndarray
    protocol: dict[str, Any]
    cache_hit: bool = False
    folder: Path | None = None  # the cache entry, when cached

    @property
    def count(self) -> int:
        return int(len(self.features))

    @property
    def stats(self) -> tuple[np.ndarray, np.ndarray, int]:
        return self.mu, self.sigma, self.count


def choose_reference_indices(n_total: int, num_real: int | None, seed: int) -> np.ndarray:
    """All indices, or a seeded random subset of ``num_real`` of them, sorted (int64)."""
    if num_real is None or num_real >= n_total:
        return np.arange(n_total, dtype=np.int64)
    rng = np.random.default_rng(seed)
    return np.sort(rng.choice(n_total, size=num_real, replace=False)).astype(np.int64)


def save_ref_stats(path: Path, mu: np.ndarray, sigma: np.ndarray, count: int, protocol: dict[str, Any]) -> Path:
    """Write ``ref_stats.npz`` (pytorch-fid keys ``mu``/``sigma`` + ``count`` + JSON ``protocol``) atomically."""
    return atomic_save_npz(
        path, mu=np.asarray(mu, np.float64), sigma=np.asarray(sigma, np.float64),
        count=np.asarray(count, np.int64), protocol=np.asarray(json.dumps(protocol, sort_keys=True)),
    )


def load_ref_stats(path: Path) -> tuple[np.ndarray, np.ndarray, int, dict[str, Any]]:
    """Read a ``ref_stats.npz`` (also pytorch-fid's own ``.npz``, whose count and protocol are unknown: -1, {})."""
    with np.load(path, allow_pickle=False) as z:
        mu, sigma = z["mu"], z["sigma"]
        count = int(z["count"]) if "count" in z.files else -1
        protocol = json.loads(str(z["protocol"])) if "protocol" in z.files else {}
    for name, array in (("mu", mu), ("sigma", sigma)):
        if not np.isfinite(array).all():
            raise EvaluationError(f"statistics file {path} holds NaN or infinite values in '{name}'; recompute it "
                                  f"from images (delete it and run the same command, or pass the image folder)")
    return mu, sigma, count, protocol


def reference_features(
    real: ImageDataset,
    embed: Callable[[np.ndarray], np.ndarray],
    network_id: dict[str, Any],
    *,
    num_real: int | None,
    seed: int,
    cache_dir: Path | None,
    write_cache: bool = True,
) -> ReferenceFeatures:
    """Features and statistics of the reference images, from ``cache_dir`` when present, else by ``embed``.

    Args:
        real: the reference dataset (uint8 N x C x H x W).
        embed: uint8 images -> float64 N x D features (e.g. ``extract_features`` bound to the network).
        network_id: identifies the feature network (name, weights hash, preprocessing); part of the cache key.
        num_real: how many reference images (None = all), a seeded random subset when fewer.
        write_cache: False on all but the main process of a multi-process run.
    """
    indices = choose_reference_indices(len(real), num_real, seed)
    protocol = {
        "dataset": real.name,
        "fingerprint": real.fingerprint,
        "num_images_available": len(real),
        "count": int(len(indices)),
        "subset_seed": None if len(indices) == len(real) else seed,
        "feature_network": network_id,
    }
    key = config_hash(protocol)
    folder = Path(cache_dir) / f"ref-{key}" if cache_dir is not None else None
    labels_all = real.labels
    if folder is not None:
        cached = _load(folder, len(indices))
        if cached is not None:
            feats, mu, sigma = cached
            labels = None if labels_all is None else labels_all[indices]
            return ReferenceFeatures(feats, indices, labels, mu, sigma, protocol, cache_hit=True, folder=folder)
    feats = embed(real.images[indices])
    mu, sigma = gaussian_stats(feats)
    if folder is not None and write_cache:
        folder.mkdir(parents=True, exist_ok=True)
        atomic_save_npy(folder / "features.npy", feats.astype(np.float32))
        atomic_save_npy(folder / "indices.npy", indices)
        save_ref_stats(folder / "ref_stats.npz", mu, sigma, len(indices), protocol)  # written last: the commit mark
    labels = None if labels_all is None else labels_all[indices]
    return ReferenceFeatures(feats, indices, labels, mu, sigma, protocol, cache_hit=False,
                             folder=folder if write_cache else None)


def floor_features(
    real: ImageDataset,
    ref: ReferenceFeatures,
    count: int,
    embed: Callable[[np.ndarray], np.ndarray],
    *,
    seed: int,
    held_out: ImageDataset | None = None,
    write_cache: bool = True,
) -> tuple[np.ndarray, str] | None:
    """Features of ``count`` real images that are not in the reference set (from ``held_out`` when given, else the
    reference dataset's images outside the reference subset), cached beside the reference features.

    Their FID against the reference is the FID a perfect generator would get with this many samples: the floor
    set by finite-sample bias. Returns (features, description) or None when fewer than 2 such images exist.
    """
    if held_out is not None:
        images, pool = held_out.images, np.arange(len(held_out))
        source = f"{held_out.name} ({held_out.fingerprint}), held out"
    else:
        mask = np.ones(len(real), dtype=bool)
        mask[ref.indices] = False
        # indices, not a copy: the images may be a memory map larger than RAM
        images, pool = real.images, np.flatnonzero(mask)
        source = f"{real.name} images outside the reference subset"
    n = int(min(count, len(pool)))
    if n < 2:
        return None
    pick = pool[np.sort(np.random.default_rng(seed + 1).choice(len(pool), n, replace=False))]
    key = config_hash({"source": source, "n": n, "seed": seed})
    path = ref.folder / f"floor-{key}.npy" if ref.folder is not None else None
    if path is not None and path.is_file():
        try:
            feats = np.load(path)
            if feats.shape == (n, ref.features.shape[1]):
                return feats.astype(np.float64), source
        except (OSError, ValueError):
            pass
    feats = embed(images[pick])
    if path is not None and write_cache:
        atomic_save_npy(path, feats.astype(np.float32))
    return feats, source


def _load(folder: Path, count: int) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
    try:
        mu, sigma, n, _ = load_ref_stats(folder / "ref_stats.npz")
        feats = np.load(folder / "features.npy", mmap_mode="r")
    except (FileNotFoundError, OSError, ValueError, KeyError):
        return None
    if n != count or feats.shape[0] != count or mu.shape != (feats.shape[1],) or sigma.shape != (len(mu), len(mu)):
        return None
    return np.asarray(feats, dtype=np.float64), mu, sigma
