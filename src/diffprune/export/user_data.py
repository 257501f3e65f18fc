"""A user's own dataset as an ``ImageDataset``: a Hugging Face ``datasets.Dataset`` (as diffusers' example
scripts build it, ``set_transform`` and all) or a map-style torch ``Dataset``.

Images are written one batch at a time into a uint8 N x C x H x W array (a memory map in ``cache_dir`` when
given), so the whole dataset is never held as Python objects. A Hugging Face dataset is read from its
underlying table: the raw image and label columns, without the transform (which may drop the labels, flip at
random or normalise). Float pixels have no range of their own: the caller declares it (``value_range``).
"""
from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from rich.progress import track

from diffprune.data import ImageDataset
from diffprune.data.decode import Decode, pil_array, shape_array
from diffprune.data.hf import default_columns
from diffprune.io import atomic_write_json

IMAGE_KEYS = ("image", "img", "pixel_values", "input")
LABEL_KEYS = ("label", "labels")
BATCH = 64  # rows decoded per step of the stream
_FORMAT = "uint8 N x C x H x W"


class CoresetError(ValueError):
    """The coreset cannot be built from these inputs (e.g. the dataset cannot be read as images); the message
    says what to pass instead."""


def is_hf_dataset(obj: Any) -> bool:
    """Whether ``obj`` is a Hugging Face ``datasets.Dataset`` (checked without importing ``datasets``)."""
    return type(obj).__module__.startswith("datasets") and hasattr(obj, "features") and hasattr(obj, "with_format")


def read_dataset(dataset: Any, *, image_column: str | None = None, label_column: str | None = None,
                 value_range: tuple[float, float] | None = None, resolution: int | None = None,
                 resize: str = "resize", cache_dir: str | Path | None = None, progress: bool = False) -> ImageDataset:
    """``dataset`` as an ``ImageDataset`` (uint8 pixels, labels, class names).

    Args:
        dataset: a ``datasets.Dataset`` or a map-style torch ``Dataset`` whose items are an image, an
            ``(image, label)`` pair or a dict with an image (``image_column``, default the first of
            image, img, pixel_values, input) and an optional label (``label_column``, default label/labels).
        image_column, label_column: the columns (keys) holding the image and the class. A Hugging Face
            dataset's default is its first ``Image`` column and its first ``ClassLabel`` column (else
            ``label``); the labels are read from its table, so a transform that drops them does not matter.
        value_range: (low, high) of float pixels, e.g. ``(-1, 1)`` for diffusers' ``Normalize([0.5], [0.5])``
            or ``(0, 1)`` for ``ToTensor``; mapped linearly onto 0..255. uint8 pixels and PIL images are 0..255
            by their type; float pixels without ``value_range`` are an error (their range cannot be told from
            the values).
        resolution, resize: bring every image to ``resolution`` pixels (``resize``: resize, pad or
            center-crop, as ``data.resize``); None keeps the size, which must then be one for all.
        cache_dir: write the pixels to ``cache_dir/images.npy`` (a memory map; a Hugging Face dataset whose
            fingerprint and options match the cached ones is not read again); None: in RAM.
        progress: show a progress bar.
    """
    if value_range is not None:
        value_range = _checked_range(value_range)
    if is_hf_dataset(dataset):
        return _read_hf(dataset, image_column, label_column, value_range, resolution, resize, cache_dir, progress)
    if isinstance(dataset, torch.utils.data.Dataset) and hasattr(dataset, "__len__"):
        items = (_split_item(dataset[i], image_column, label_column) for i in range(len(dataset)))
        classes = list(getattr(dataset, "classes", None) or [])
        return _collect(items, len(dataset), value_range, resolution, resize, cache_dir, progress,
                        type(dataset).__name__, classes)
    raise CoresetError(f"expected a datasets.Dataset or a map-style torch Dataset, got {type(dataset).__name__}; "
                        "wrap the data in one (or pass a dataset spec such as 'imagefolder:PATH')")


def _checked_range(value_range: Any) -> tuple[float, float]:
    try:
        low, high = (float(v) for v in value_range)
    except (TypeError, ValueError):
        raise CoresetError(f"value_range must be (low, high), e.g. (-1, 1), got {value_range!r}") from None
    if not high > low:
        raise CoresetError(f"value_range must be (low, high) with high > low, got {value_range!r}")
    return low, high


def _read_hf(ds: Any, image_column: str | None, label_column: str | None, value_range, resolution, resize,
             cache_dir, progress) -> ImageDataset:
    """A ``datasets.Dataset`` read from its table (``with_format(None)``: no transform, no torch format)."""
    if not hasattr(ds, "__len__"):
        raise CoresetError("a streaming (iterable) datasets.Dataset has no length to select from; load it without "
                           "streaming=True (or save it to disk first)")
    raw = ds.with_format(None)
    feats = raw.features
    given_label = label_column
    image_column, label_column = default_columns(feats, image_column, label_column)
    if image_column not in feats:
        raise CoresetError(f"the dataset has no image column {image_column!r} (columns: {', '.join(feats)}); "
                            "pass image_column=")
    if given_label is not None and label_column not in feats:
        raise CoresetError(f"the dataset has no label column {label_column!r} (columns: {', '.join(feats)}); "
                            "pass label_column= or None")
    labels, names = (None, []) if label_column is None else _labels(list(raw[label_column]), feats[label_column])
    key = {"fingerprint": getattr(ds, "_fingerprint", None), "rows": len(raw), "image_column": image_column,
           "label_column": label_column, "value_range": value_range, "resolution": resolution, "resize": resize}
    cached = _cached(cache_dir, key)
    name = f"datasets:{getattr(ds, 'info', None) and ds.info.dataset_name or 'Dataset'}"
    if cached is not None:
        return ImageDataset(cached, labels, names, name=name)

    def rows() -> Iterator[tuple[Any, None]]:
        for batch in raw.select_columns([image_column]).iter(batch_size=BATCH):
            yield from ((image, None) for image in batch[image_column])

    data = _collect(rows(), len(raw), value_range, resolution, resize, cache_dir, progress, name, names, key)
    return ImageDataset(data.images, labels, names, name=name)


def _labels(values: list[Any], feature: Any) -> tuple[np.ndarray, list[str]]:
    """int64 labels and class names of a label column: a ClassLabel's names, else whole numbers 0..K-1, else
    the distinct values sorted."""
    names = getattr(feature, "names", None)
    if names:
        return np.asarray(values, dtype=np.int64), list(names)
    if all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) for v in values):
        labels = np.asarray(values, dtype=np.int64)
        if len(labels) and labels.min() < 0:
            raise CoresetError(f"labels must be class ids 0..K-1, found {int(labels.min())}; pass label_column=")
        return labels, [str(k) for k in range(int(labels.max()) + 1 if len(labels) else 0)]
    distinct = sorted({str(v) for v in values})
    index = {v: k for k, v in enumerate(distinct)}
    return np.asarray([index[str(v)] for v in values], dtype=np.int64), distinct


def _split_item(item: Any, image_column: str | None, label_column: str | None) -> tuple[Any, Any]:
    """(image, label or None) of one torch Dataset item."""
    if isinstance(item, Mapping):
        key = image_column or next((k for k in IMAGE_KEYS if k in item), None)
        if key not in item:
            raise CoresetError(f"dict items need an image key ({', '.join(IMAGE_KEYS)}), got {sorted(item)}; "
                                "pass image_column=")
        label_key = label_column or next((k for k in LABEL_KEYS if k in item), None)
        return item[key], item.get(label_key) if label_key else None
    if isinstance(item, (tuple, list)):
        return item[0], item[1] if len(item) > 1 else None
    return item, None


def _collect(items: Iterator[tuple[Any, Any]], n: int, value_range, resolution, resize, cache_dir, progress,
             name: str, classes: list[str], key: dict | None = None) -> ImageDataset:
    """Decode ``n`` (image, label) items into one uint8 array (a memmap under ``cache_dir``), row by row."""
    if n == 0:
        raise CoresetError("the dataset is empty")
    images, labels, mode = None, [], None
    for i, (image, label) in track(enumerate(items), total=n, description="reading dataset", disable=not progress,
                                   transient=True):
        if mode is None:
            mode = getattr(image, "mode", None) in ("L", "1", "I;16") and "L" or "RGB"
        a = to_uint8_chw(image, value_range, Decode(mode, resolution, resize, None))
        if images is None:
            images = _allocate(cache_dir, (n, *a.shape))
        elif a.shape != images.shape[1:]:
            raise CoresetError(f"image {i} has shape {a.shape}, image 0 {images.shape[1:]}; pass resolution= "
                                "(or add a resize transform) so that they share one")
        images[i] = a
        labels.append(None if label is None else int(label))
    if cache_dir is not None:
        images.flush()
        if key is not None:  # written after the pixels: a complete meta means complete pixels
            atomic_write_json(Path(cache_dir) / "images.json", {"format": _FORMAT, **key})
    lab = None if any(v is None for v in labels) else np.asarray(labels, dtype=np.int64)
    names = [] if lab is None else (classes or [str(k) for k in range(int(lab.max()) + 1)])
    return ImageDataset(images, lab, names, name=name)


def _allocate(cache_dir: str | Path | None, shape: tuple[int, ...]) -> np.ndarray:
    if cache_dir is None:
        return np.empty(shape, dtype=np.uint8)
    folder = Path(cache_dir)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "images.json").unlink(missing_ok=True)  # the pixels below are being replaced
    return np.lib.format.open_memmap(folder / "images.npy", mode="w+", dtype=np.uint8, shape=shape)


def _cached(cache_dir: str | Path | None, key: dict) -> np.ndarray | None:
    """The cached pixels when ``cache_dir`` holds complete ones for ``key`` (a dataset fingerprint is needed)."""
    if cache_dir is None or key.get("fingerprint") is None:
        return None
    meta, pixels = Path(cache_dir) / "images.json", Path(cache_dir) / "images.npy"
    if not (meta.is_file() and pixels.is_file()):
        return None
    if json.loads(meta.read_text()) != json.loads(json.dumps({"format": _FORMAT, **key})):
        return None
    return np.load(pixels, mmap_mode="r")


def to_uint8_chw(image: Any, value_range: tuple[float, float] | None, dec: Decode) -> np.ndarray:
    """One image -> uint8 C x H x W (C = 1 or 3) at ``dec``'s size: PIL images and uint8 arrays as they are,
    float arrays mapped from ``value_range`` onto 0..255."""
    if hasattr(image, "convert") and hasattr(image, "mode"):  # PIL
        return shape_array(pil_array(image, dec.mode, dec.size if dec.resize == "center-crop" else None), dec)
    a = image.detach().cpu().numpy() if isinstance(image, torch.Tensor) else np.asarray(image)
    if a.ndim == 3 and a.shape[0] in (1, 3) and a.shape[-1] not in (1, 3):
        a = a.transpose(1, 2, 0)  # C x H x W -> H x W x C, the layout shape_array takes
    elif a.ndim == 3 and a.shape[0] in (1, 3) and a.shape[-1] in (1, 3) and a.shape[0] <= a.shape[-1]:
        a = a.transpose(1, 2, 0)
    if a.ndim == 3 and a.shape[-1] == 1:
        a = a[..., 0]
    if a.ndim not in (2, 3) or (a.ndim == 3 and a.shape[-1] != 3):
        raise CoresetError(f"an image must be H x W, C x H x W or H x W x C with C = 1 or 3; got shape {a.shape}")
    return shape_array(_to_uint8(a, value_range), dec)


def _to_uint8(a: np.ndarray, value_range: tuple[float, float] | None) -> np.ndarray:
    if a.dtype == np.uint8 and value_range in (None, (0.0, 255.0)):
        return a
    if value_range is None:
        raise CoresetError(f"images are {a.dtype} pixels, whose range cannot be told from the values; pass "
                            "value_range=(-1, 1) (diffusers' Normalize([0.5], [0.5])), (0, 1) (ToTensor) or (0, 255)")
    low, high = value_range
    a = a.astype(np.float64)
    slack = 1e-3 * (high - low)
    if a.min() < low - slack or a.max() > high + slack:
        raise CoresetError(f"a pixel value {a.min():.4g}..{a.max():.4g} lies outside value_range {value_range}; "
                            "declare the range the images are in")
    return np.clip(np.rint((a - low) * (255.0 / (high - low))), 0, 255).astype(np.uint8)

