"""The one in-memory dataset type every stage consumes."""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from diffprune.io.hashing import hash_arrays


class ArrayShapes:
    """Size accessors of a dataset held as an N x C x H x W ``images`` array with ``class_names``."""

    images: np.ndarray
    class_names: list[str]

    def __len__(self) -> int:
        return len(self.images)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def resolution(self) -> int:
        return int(self.images.shape[-1])

    @property
    def channels(self) -> int:
        return int(self.images.shape[1])


@dataclass
class ImageDataset(ArrayShapes):
    """Images and optional labels, held as plain arrays.

    Attributes:
        images: uint8 array, N x C x H x W (C is 1 or 3), values 0-255.
        labels: int64 array of N class indices in [0, K), or None when unlabelled.
        class_names: K names, index-aligned with ``labels`` (empty when unlabelled).
        name: the spec the dataset was loaded from (for manifests and reports).
        fingerprint: content hash of images and labels; stable across runs and machines.
        skipped: files that could not be read and were skipped (``skip_bad=True``).
        source_ids: N ids of where each example came from (a folder's file path relative to its root, in
            the order documented in ``data.folders.list_image_files``), or None: the row index is the id.
    """

    images: np.ndarray
    labels: np.ndarray | None
    class_names: list[str]
    name: str = "dataset"
    fingerprint: str = ""
    skipped: list[str] = field(default_factory=list)
    source_ids: list[str] | None = None

    def __post_init__(self) -> None:
        if self.images.dtype != np.uint8 or self.images.ndim != 4:
            raise ValueError(
                f"images must be uint8 N x C x H x W, got {self.images.dtype} with shape {self.images.shape}"
            )
        if self.images.shape[1] not in (1, 3):
            raise ValueError(f"images must have 1 or 3 channels (N x C x H x W), got shape {self.images.shape}")
        if self.labels is not None:
            self.labels = np.asarray(self.labels, dtype=np.int64)
            if self.labels.shape != (len(self.images),):
                raise ValueError(f"labels must have shape ({len(self.images)},), got {self.labels.shape}")
            if len(self.labels) and (self.labels.min() < 0 or self.labels.max() >= len(self.class_names)):
                raise ValueError(
                    f"labels must lie in [0, {len(self.class_names)}) to match class_names, "
                    f"got range [{self.labels.min()}, {self.labels.max()}]"
                )
        if self.source_ids is not None and len(self.source_ids) != len(self.images):
            raise ValueError(f"source_ids must have one id per image ({len(self.images)}), got {len(self.source_ids)}")
        if not self.fingerprint:
            self.fingerprint = hash_arrays(self.images, self.labels)

    def source_id(self, index: int) -> str:
        """Where example ``index`` came from: its file path relative to the dataset root, or the row index."""
        return str(index) if self.source_ids is None else self.source_ids[index]

    def source_ids_of(self, indices: np.ndarray) -> list[str] | None:
        """``source_ids`` of ``indices`` (None when the dataset has none)."""
        return None if self.source_ids is None else [self.source_ids[i] for i in np.asarray(indices).tolist()]

    def subset(self, indices: np.ndarray) -> "ImageDataset":
        """A new dataset holding ``indices`` (int array) in the given order; fingerprint recomputed."""
        indices = np.asarray(indices, dtype=np.int64)
        return ImageDataset(
            images=self.images[indices],
            labels=None if self.labels is None else self.labels[indices],
            class_names=list(self.class_names),
            name=f"{self.name}[subset]",
            source_ids=self.source_ids_of(indices),
        )

    def class_counts(self) -> np.ndarray:
        """int64 K array of images per class (empty when unlabelled)."""
        if self.labels is None:
            return np.zeros(0, dtype=np.int64)
        return np.bincount(self.labels, minlength=self.num_classes).astype(np.int64)

    def summary(self) -> dict:
        return {
            "name": self.name,
            "num_images": len(self),
            "shape": list(self.images.shape[1:]),
            "num_classes": self.num_classes,
            "labelled": self.labels is not None,
            "fingerprint": self.fingerprint,
        }
