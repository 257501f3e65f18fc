"""``npz:PATH``: an .npz archive with uint8 ``images`` (N x H x W, N x C x H x W or N x H x W x C), optional
``labels`` and ``class_names``."""
from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np

from diffprune.data.dataset import ImageDataset
from diffprune.data.decode import DatasetError
from diffprune.data.kind import LoadOptions


def load_npz(arg: str, options: LoadOptions) -> ImageDataset:
    return _npz(arg)


def _npz(path: str) -> ImageDataset:
    p = Path(path)
    if not p.is_file():
        raise DatasetError(f"npz: no file '{p}'; check the path in data.spec")
    if not zipfile.is_zipfile(p):
        raise DatasetError(f"npz: '{p}' is not an .npz archive (np.savez writes one: images uint8 N x H x W [x C], "
                           f"optional labels int N and class_names); convert it or fix data.spec")
    try:
        data = np.load(p, allow_pickle=False)
        with data:
            key = "images" if "images" in data else ("arr_0" if "arr_0" in data else None)
            if key is None:
                raise DatasetError(f"npz: '{p}' has no 'images' array (found: {', '.join(data.files)})")
            images = np.asarray(data[key])
            labels = _npz_labels(p, data["labels"]) if "labels" in data else None
            names = [str(n) for n in data["class_names"]] if "class_names" in data else None
    except (OSError, ValueError, zipfile.BadZipFile) as e:
        if isinstance(e, DatasetError):
            raise
        raise DatasetError(f"npz: cannot read '{p}': {' '.join(str(e).split())}") from None
    if images.dtype != np.uint8:
        raise DatasetError(f"npz: '{p}' images must be uint8, got {images.dtype}")
    if images.ndim == 3:
        images = images[:, None]
    elif images.ndim == 4 and images.shape[-1] in (1, 3) and images.shape[1] not in (1, 3):
        images = images.transpose(0, 3, 1, 2)  # N x H x W x C -> N x C x H x W
    if labels is not None and names is None:
        names = [str(i) for i in range(int(labels.max()) + 1)]
    if labels is not None:
        if len(labels) != len(images):
            raise DatasetError(f"npz: '{p}' has {len(images)} images but {len(labels)} labels")
        if labels.min() < 0 or labels.max() >= len(names):
            raise DatasetError(f"npz: '{p}' labels must be in 0..{len(names) - 1} (one per class name), "
                               f"got {int(labels.min())}..{int(labels.max())}")
        empty = [names[k] for k in np.flatnonzero(np.bincount(labels, minlength=len(names)) == 0)]
        if empty:
            raise DatasetError(f"npz: '{p}' has classes without images: {', '.join(empty[:10])}; "
                               f"relabel to drop them (a class with no images would still get a DRO weight)")
    return ImageDataset(np.ascontiguousarray(images), labels, names or [], name=f"npz:{p}")


def _npz_labels(p: Path, raw: np.ndarray) -> np.ndarray:
    """int64 labels; floats are accepted only when every value is a whole number (0.5 is refused, not cut)."""
    raw = np.asarray(raw)
    if raw.dtype.kind in "iu":
        return raw.astype(np.int64)
    if raw.dtype.kind == "f" and np.all(np.isfinite(raw)) and np.all(raw == np.round(raw)):
        return raw.astype(np.int64)
    bad = raw[:3].tolist()
    raise DatasetError(f"npz: '{p}' labels must be integer class ids, got {raw.dtype} values such as {bad}")
