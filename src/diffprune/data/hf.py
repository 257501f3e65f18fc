"""``hf:NAME[:SPLIT]`` and ``hf-disk:PATH``: Hugging Face ``datasets`` (an extra), decoded row by row."""
from __future__ import annotations

from typing import Any

import numpy as np

from diffprune.data.dataset import ImageDataset
from diffprune.data.decode import DatasetError, Decode, pil_array, shape_array, stack_decoded
from diffprune.data.kind import LoadOptions


def load_hf(arg: str, o: LoadOptions) -> ImageDataset:
    dec = Decode("RGB", o.resolution, o.resize, o.channels)
    return _hf(o.spec, o.split, o.image_column, o.label_column, o.id_column, dec, o.skip_bad)


def _hf(spec: str, split: str, image_column: str | None, label_column: str | None, id_column: str | None,
        dec: Decode, skip_bad: bool = False) -> ImageDataset:
    """A Hugging Face dataset (``hf:NAME[:SPLIT]`` via ``datasets.load_dataset``, ``hf-disk:PATH`` via
    ``load_from_disk``), decoded row by row; labels from a ``ClassLabel`` column (names kept) or an int column."""
    try:
        import datasets  # the [hf] extra
    except ImportError:
        raise DatasetError(f"'{spec}' needs the datasets package: pip install diffprune[hf]") from None
    kind, _, arg = spec.partition(":")
    try:
        if kind == "hf-disk":
            ds = datasets.load_from_disk(arg)
        else:
            name, _, explicit = arg.partition(":")
            split = explicit or split
            ds = datasets.load_dataset(name, split=split)
    except (FileNotFoundError, ValueError, ConnectionError) as e:
        raise DatasetError(f"{spec}: cannot load it ({type(e).__name__}: {e})") from None
    if isinstance(ds, datasets.DatasetDict):
        if split not in ds:
            raise DatasetError(f"{spec}: no split '{split}' (splits: {', '.join(ds)}); set data.split")
        ds = ds[split]
    feats = ds.features
    image_column, label_column = default_columns(feats, image_column, label_column)
    if image_column not in feats:
        raise DatasetError(f"{spec}: no image column {image_column!r} (columns: {', '.join(feats)}); "
                           "set data.image_column")
    for what, col in (("label", label_column), ("id", id_column)):
        if col is not None and col not in feats:
            raise DatasetError(f"{spec}: no {what} column {col!r} (columns: {', '.join(feats)})")
    first = ds[0][image_column]
    dec = Decode("L" if first.mode in ("L", "1", "I;16") else "RGB", dec.size, dec.resize, dec.channels)
    crop = dec.size if dec.resize == "center-crop" else None
    from rich.progress import track  # rich is imported when a bar is drawn

    arrays, keep = [], []
    for i, row in track(enumerate(ds), total=len(ds), description=f"reading {spec}", transient=True):
        try:
            arrays.append(shape_array(pil_array(row[image_column], dec.mode, crop), dec))
            keep.append(i)
        except (OSError, ValueError, AttributeError) as e:  # AttributeError: a row without an image
            if not skip_bad:
                raise DatasetError(f"{spec}: cannot read the image of row {i}: {e}; skip unreadable rows with "
                                   "--set data.skip_bad=true") from None
    images = stack_decoded(arrays, len(ds), spec)
    labels, names = None, []
    if label_column is not None:
        labels = np.asarray(ds[label_column], dtype=np.int64)[keep]
        feat = feats[label_column]
        names = list(feat.names) if isinstance(feat, datasets.ClassLabel) else [str(k) for k in range(int(labels.max()) + 1)]
    ids = [str(v) for v in (ds[id_column] if id_column else range(len(ds)))]
    ids = [ids[i] for i in keep]
    return ImageDataset(images, labels, names, name=spec, source_ids=ids,
                        skipped=[f"row {i}" for i in sorted(set(range(len(ds))) - set(keep))])


def default_columns(features: Any, image_column: str | None, label_column: str | None) -> tuple[str | None, str | None]:
    """The image and label columns of a ``datasets`` table: the given ones, else its first ``Image`` column and
    its first ``ClassLabel`` column (else one named "label", else none)."""
    import datasets  # optional dependency (diffprune[hf])

    image_column = image_column or next((c for c, f in features.items() if isinstance(f, datasets.Image)), None)
    if label_column is None:
        label_column = next((c for c, f in features.items() if isinstance(f, datasets.ClassLabel)),
                            "label" if "label" in features else None)
    return image_column, label_column
