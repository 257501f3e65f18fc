"""What a data kind is: a loader and its description, one entry of ``data.sources.DATA_KINDS``."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from diffprune.data.dataset import ImageDataset


@dataclass(frozen=True)
class LoadOptions:
    """The arguments of ``load_dataset`` a loader may use (see there); ``spec`` is the whole spec string."""

    spec: str
    split: str = "train"
    root: str | None = None
    resolution: int | None = None
    resize: str = "pad"
    channels: int | None = None
    skip_bad: bool = False
    cache_dir: str | None = None
    image_column: str | None = None
    label_column: str | None = None
    id_column: str | None = None
    download: bool = True  # False: fetch nothing and build no cache (a DatasetError instead; dry runs)


@dataclass(frozen=True)
class DataKind:
    """One kind of dataset spec.

    ``name`` is the spec (``digits``) or, with ``arg`` set, its prefix (``imagefolder`` in ``imagefolder:PATH``,
    ``arg`` = ``PATH``). ``load(arg, options)`` returns uint8 N x C x H x W images; with ``decodes`` False it
    returns them at their native size and ``load_dataset`` changes channels and resolution afterwards, with
    ``decodes`` True the loader already did (per image, while decoding)."""

    name: str
    description: str
    load: Callable[[str, LoadOptions], ImageDataset]
    arg: str | None = None
    decodes: bool = False

    @property
    def usage(self) -> str:
        """How a user writes the spec: ``digits``, ``imagefolder:PATH``."""
        return self.name if self.arg is None else f"{self.name}:{self.arg}"
