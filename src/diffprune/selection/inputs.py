"""Input checks and per-group access to (possibly memory-mapped) feature matrices.

Features may be a plain array or ``np.load(path, mmap_mode="r")``. A memory-mapped file is never loaded
whole: groups are gathered in blocks by sequential scans, and pages already used are released from the
process (``MADV_DONTNEED``; they stay in the OS page cache) so resident memory stays about one block.
"""
from __future__ import annotations

import mmap
from typing import Iterator

import numpy as np

from diffprune.selection.errors import SelectionError

CHECK_ROWS = 1 << 16  # rows per chunk when scanning a large matrix for NaN/inf
BLOCK_BYTES = 2 << 30  # groups gathered per sequential scan of a memory-mapped file
SCAN_BYTES = 64 << 20  # bytes read per step of a scan


def check_features(features: np.ndarray) -> np.ndarray:
    """Validate an N x D float matrix: 2-D, non-empty, finite. Returns it unchanged (no copy)."""
    if not hasattr(features, "shape") or not hasattr(features, "dtype"):
        features = np.asarray(features)
    if features.ndim != 2:
        raise SelectionError(f"features must be a 2-D array N x D, got shape {tuple(features.shape)}")
    if features.shape[0] == 0 or features.shape[1] == 0:
        raise SelectionError(f"features is empty (shape {tuple(features.shape)}); embed the dataset first")
    if not np.issubdtype(features.dtype, np.floating):
        raise SelectionError(f"features must be floating point (float32 or float64), got {features.dtype}")
    for start in range(0, features.shape[0], CHECK_ROWS):
        block = np.asarray(features[start : start + CHECK_ROWS])
        if not np.isfinite(block).all():
            bad = start + np.flatnonzero(~np.isfinite(block).all(axis=1))
            release_pages(features)
            raise SelectionError(
                f"features contain NaN or inf in {len(bad)}+ rows (first: {bad[:5].tolist()}); "
                "re-embed those images or drop them before selecting"
            )
        release_pages(features)
    return features


def check_labels(labels: np.ndarray | None, n: int) -> np.ndarray | None:
    """Validate labels: None or N non-negative integers."""
    if labels is None:
        return None
    labels = np.asarray(labels)
    if labels.ndim != 1 or len(labels) != n:
        raise SelectionError(
            f"labels must be a 1-D array with one entry per feature row ({n}), got shape {labels.shape}"
        )
    if not np.issubdtype(labels.dtype, np.integer):
        if np.issubdtype(labels.dtype, np.floating) and np.all(np.isfinite(labels)) and np.all(labels == np.round(labels)):
            labels = labels.astype(np.int64)
        else:
            raise SelectionError(f"labels must be integers (class indices), got dtype {labels.dtype}")
    if len(labels) and labels.min() < 0:
        raise SelectionError(f"labels must be non-negative class indices, got minimum {labels.min()}")
    return labels.astype(np.int64, copy=False)


def check_ratio(ratio: float) -> float:
    """The kept fraction must lie in (0, 1]."""
    try:
        r = float(ratio)
    except (TypeError, ValueError):
        raise SelectionError(f"ratio must be a number in (0, 1], got {ratio!r}") from None
    if not (0.0 < r <= 1.0) or not np.isfinite(r):
        raise SelectionError(f"ratio must lie in (0, 1] (the kept fraction, e.g. 0.3), got {ratio!r}")
    return r


def group_index(groups: np.ndarray) -> tuple[np.ndarray, list[np.ndarray]]:
    """Distinct group ids (sorted) and, for each, the sorted row indices of its members."""
    order = np.argsort(groups, kind="stable")
    ids, starts = np.unique(groups[order], return_index=True)
    bounds = list(starts[1:]) + [len(order)]
    return ids, [order[s:e] for s, e in zip(starts, bounds)]


def release_pages(features: np.ndarray) -> None:
    """Drop a memory map's pages from this process (they stay in the OS page cache)."""
    mm = getattr(features, "_mmap", None)
    if isinstance(mm, mmap.mmap) and hasattr(mm, "madvise") and hasattr(mmap, "MADV_DONTNEED"):
        try:
            mm.madvise(mmap.MADV_DONTNEED)
        except (OSError, ValueError):
            pass


def gather_rows(features: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """``features[rows]`` as an in-memory array (rows sorted so a memory map is read front to back)."""
    if is_memory_mapped(features):
        out = np.asarray(features[np.sort(rows)] if not _is_sorted(rows) else features[rows])
        if not _is_sorted(rows):  # restore the caller's order
            out = out[np.argsort(np.argsort(rows))]
        release_pages(features)
        return np.ascontiguousarray(out)
    return np.ascontiguousarray(features[rows])


def is_memory_mapped(features: np.ndarray) -> bool:
    return isinstance(features, np.memmap) or getattr(features, "_mmap", None) is not None


def iter_groups(
    features: np.ndarray, members: list[np.ndarray], block_bytes: int | None = None
) -> Iterator[tuple[int, np.ndarray]]:
    """Yield (group position, rows of that group as an in-memory array), one group at a time.

    For a memory-mapped matrix, consecutive groups are packed into blocks of at most ``block_bytes``; each
    block is filled by ONE sequential scan over the file rows it spans (in ``SCAN_BYTES`` chunks), so the
    file is read front to back whatever the row order of the labels (one pass in all when the labels are
    sorted), and resident memory stays about one block.
    """
    if not is_memory_mapped(features):
        for g, rows in enumerate(members):
            yield g, np.ascontiguousarray(features[rows])
        return
    block_bytes = BLOCK_BYTES if block_bytes is None else block_bytes
    row_bytes = features.shape[1] * features.dtype.itemsize
    block: list[int] = []
    size = 0
    for g, rows in enumerate(members):
        if block and size + len(rows) * row_bytes > block_bytes:
            yield from _scan_block(features, members, block)
            block, size = [], 0
        block.append(g)
        size += len(rows) * row_bytes
    if block:
        yield from _scan_block(features, members, block)


def _scan_block(features: np.ndarray, members: list[np.ndarray], block: list[int]) -> Iterator[tuple[int, np.ndarray]]:
    rows = np.concatenate([members[g] for g in block])
    offsets = np.cumsum([0] + [len(members[g]) for g in block])
    dest = np.arange(len(rows))
    order = np.argsort(rows, kind="stable")
    rows_sorted, dest_sorted = rows[order], dest[order]
    buf = np.empty((len(rows), features.shape[1]), dtype=features.dtype)
    scan_rows = max(1, SCAN_BYTES // (features.shape[1] * features.dtype.itemsize))
    lo, hi = int(rows_sorted[0]), int(rows_sorted[-1]) + 1
    for start in range(lo, hi, scan_rows):
        stop = min(hi, start + scan_rows)
        a, b = np.searchsorted(rows_sorted, [start, stop])
        if a == b:
            continue
        chunk = np.asarray(features[start:stop])
        buf[dest_sorted[a:b]] = chunk[rows_sorted[a:b] - start]
        release_pages(features)
    for i, g in enumerate(block):
        yield g, buf[offsets[i] : offsets[i + 1]]


def _is_sorted(a: np.ndarray) -> bool:
    return bool(len(a) < 2 or np.all(a[1:] >= a[:-1]))
