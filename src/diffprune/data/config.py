"""The data sections of a run config: ``data`` (``DataConfig``) and ``latent`` (``LatentConfig``)."""
from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator, model_validator

from diffprune.config import Device, StrictModel
from diffprune.data.sources import DATA_KINDS, data_kind, load_dataset


class DataConfig(StrictModel):
    """Which dataset to load and at what resolution (see ``diffprune datasets``)."""

    spec: str = "digits"
    split: Literal["train", "test"] = "train"
    root: str | None = None
    resolution: int | None = Field(default=None, ge=4, le=1024)
    resize: Literal["pad", "resize", "center-crop"] = "pad"
    channels: Literal[1, 3] | None = None
    limit: int | None = Field(default=None, ge=1)
    skip_bad: bool = False
    # imagefolder / csv: decode once into a memmapped .npy under this folder (see ``load_dataset``)
    cache_dir: str | None = None
    # hf / hf-disk: the image, label and id columns (default: first Image / ClassLabel column, row index);
    # webdataset: the image and class members of a sample (default: first image extension; cls, json:label)
    image_column: str | None = None
    label_column: str | None = None
    id_column: str | None = None

    @field_validator("spec")
    @classmethod
    def _known_spec(cls, v: str) -> str:
        if data_kind(v) is not None:
            return v
        usages = [kind.usage for kind in DATA_KINDS.values()]
        raise ValueError(f"choose one of {', '.join(usages[:-1])} or {usages[-1]}")

    @model_validator(mode="after")
    def _cache_needs_resolution(self) -> "DataConfig":
        if self.cache_dir is not None and self.spec.startswith("imagefolder:") and self.resolution is None:
            raise ValueError("cache_dir needs a fixed resolution (every cached image has one size); set resolution")
        return self

    def load(self, download: bool = True):
        return load_dataset(
            self.spec, self.split, root=self.root, resolution=self.resolution, resize=self.resize,
            channels=self.channels, limit=self.limit, skip_bad=self.skip_bad, cache_dir=self.cache_dir,
            image_column=self.image_column, label_column=self.label_column, id_column=self.id_column,
            download=download,
        )


class LatentConfig(StrictModel):
    """The ``latent`` section of a run: train in the latent space of this VAE (None in the run = pixel space)."""

    vae: str = "stabilityai/sd-vae-ft-ema"  # hub id, local VAE dir, SD pipeline dir (its vae/), or tiny-random[:SEED]
    batch_size: int = Field(default=32, ge=1)  # images per VAE forward pass while encoding
    dtype: Literal["float16", "float32"] = "float16"  # of the cache (N x 4 x H/8 x W/8: 2 KB per 256 px image)
    device: Device = "auto"  # where the VAE encodes
