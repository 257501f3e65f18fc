"""Datasets of image files: ``imagefolder:PATH`` (class = sub-folder) and ``csv:PATH`` (``path``, ``label``
rows), decoded per image (resized and channel-converted while decoding), directly or through the resumable
memmap cache (``data.imagefolder_cache``)."""
from __future__ import annotations

import csv
import os
from pathlib import Path

import numpy as np

from diffprune.data.dataset import ImageDataset
from diffprune.data.decode import DatasetError, Decode, decode_stream, probe_mode, relative_ids, stack_decoded
from diffprune.data.imagefolder_cache import cached_imagefolder
from diffprune.data.kind import LoadOptions

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff"}


def list_image_files(root: str | os.PathLike) -> tuple[list[str], list[tuple[Path, int]]]:
    """(class names, (file, label) pairs) of an image folder, in the order that defines dataset indices.

    The order, which a reader can reproduce: class names are the sub-folders of ``root`` not starting with
    ``.``, sorted by name (label k = k-th name); inside each, every file at any depth whose suffix
    (case-insensitive) is in ``IMAGE_SUFFIXES``, sorted by path components (``sorted(Path.rglob("*"))``). A folder
    without sub-folders is unlabelled (label -1, no names): its image files sorted by name. Files that cannot
    be decoded are skipped with ``skip_bad`` and do not take an index, so dataset index i is the i-th
    *readable* file; ``ImageDataset.source_ids`` holds each index's path relative to ``root``.
    torchvision's ``ImageFolder`` lists other suffixes (no ``.gif``) and keeps unreadable files, so its indices
    can differ: use the paths, not the indices, to move a coreset between the two.
    """
    root = Path(root)
    if not root.is_dir():
        raise DatasetError(f"imagefolder: '{root}' is not a directory")
    subdirs = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if subdirs:
        class_names = [p.name for p in subdirs]
        files = [(f, k) for k, d in enumerate(subdirs) for f in sorted(d.rglob("*"))
                 if f.suffix.lower() in IMAGE_SUFFIXES and not f.is_dir()]
        empty = sorted(set(class_names) - {class_names[k] for _, k in files})
        if empty and files:
            raise DatasetError(f"imagefolder: class folder(s) {', '.join(repr(e) for e in empty[:10])} under '{root}' "
                               f"hold no images; remove them (an empty class would still get a DRO weight)")
    else:
        class_names = []
        files = [(f, -1) for f in sorted(root.iterdir()) if f.suffix.lower() in IMAGE_SUFFIXES and not f.is_dir()]
    if not files:
        raise DatasetError(f"imagefolder: no images ({', '.join(sorted(IMAGE_SUFFIXES))}) under '{root}'")
    _check_utf8_names(root, files)
    return class_names, files


def _check_utf8_names(root: Path, files: list[tuple[Path, int]]) -> None:
    """Every name must be UTF-8: the coreset tables and manifests list them (checked now, not after selection)."""
    bad = []
    for f, _ in files:
        try:
            str(f.relative_to(root)).encode("utf-8")
        except UnicodeEncodeError:
            bad.append(os.fsencode(f.relative_to(root)))
    if bad:
        raise DatasetError(f"imagefolder: {len(bad)} file name(s) under '{root}' are not valid UTF-8 (e.g. "
                           f"{bad[0]!r}), so the coreset files cannot list them; rename them to UTF-8 (e.g. convmv "
                           f"-f latin1 -t utf8 -r --notest '{root}')")


def _imagefolder(
    path: str, skip_bad: bool, size: int | None, resize: str, channels: int | None, cache_dir: str | None,
    build: bool = True,
) -> ImageDataset:
    """A folder of images, resized (``size``/``resize``) and channel-converted per image while decoding."""
    root = Path(path)
    class_names, files = list_image_files(root)
    return _image_files(root, class_names, files, skip_bad, size, resize, channels, cache_dir, f"imagefolder:{root}",
                        build)


def _image_files(
    root: Path, class_names: list[str], files: list[tuple[Path, int]], skip_bad: bool, size: int | None,
    resize: str, channels: int | None, cache_dir: str | None, name: str, build: bool = True,
) -> ImageDataset:
    """Decode ``files`` ((path, label) pairs; ids relative to ``root``), directly or through the memmap cache
    (``build=False``: an existing cache only)."""
    if cache_dir is not None:
        if size is None:
            raise DatasetError("imagefolder: cache_dir needs a fixed resolution (every cached image has one size); "
                               "set resolution=")
        return cached_imagefolder(root, class_names, files, skip_bad, size, resize, channels, Path(cache_dir),
                                  build=build)
    dec = Decode(probe_mode(files, channels), size, resize, channels)
    from rich.progress import track  # rich is imported when a bar is drawn

    arrays, labels, skipped, skipped_index = [], [], [], set()
    stream = decode_stream(files, dec, skip_bad)
    for i, a in track(stream, total=len(files), description=f"reading {root.name}", transient=True):
        if a is None:
            skipped.append(str(files[i][0]))
            skipped_index.add(i)
            continue
        arrays.append(a)
        labels.append(files[i][1])
    images = stack_decoded(arrays, len(files), name)
    lab = np.asarray(labels, dtype=np.int64) if class_names else None
    return ImageDataset(images, lab, class_names, name=name, skipped=skipped,
                        source_ids=relative_ids(root, files, skipped_index))


def list_csv_files(path: str | os.PathLike) -> tuple[list[str], list[tuple[Path, int]]]:
    """(class names, (file, label) pairs) of a CSV with a ``path`` column and an optional ``label`` column.

    Relative paths are relative to the CSV's folder; rows keep the file's order (dataset index = row, minus
    unreadable files with ``skip_bad``). Class names are the distinct labels sorted (as ImageFolder's folders);
    no ``label`` column: unlabelled.
    """
    p = Path(path)
    try:
        with p.open(newline="", encoding="utf-8") as f:
            rows = list(csv.DictReader(f))
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        raise DatasetError(f"csv: cannot read '{p}': {e}") from None
    if not rows or "path" not in rows[0]:
        raise DatasetError(f"csv: '{p}' needs a header with a 'path' column (and optionally 'label'), "
                           f"got {list(rows[0]) if rows else 'no rows'}")
    labelled = "label" in rows[0]
    class_names = sorted({r["label"] for r in rows}) if labelled else []
    index = {n: k for k, n in enumerate(class_names)}
    files = [(p.parent / r["path"], index[r["label"]] if labelled else -1) for r in rows]
    return class_names, files




def load_imagefolder(arg: str, o: LoadOptions) -> ImageDataset:
    return _imagefolder(arg, o.skip_bad, o.resolution, o.resize, o.channels, o.cache_dir, o.download)


def load_csv(arg: str, o: LoadOptions) -> ImageDataset:
    names, files = list_csv_files(arg)
    return _image_files(Path(arg).parent, names, files, o.skip_bad, o.resolution, o.resize, o.channels,
                        o.cache_dir, o.spec, o.download)
