"""The ``embed`` stage's config."""
from __future__ import annotations

from typing import Any

from pydantic import field_validator

from diffprune.config import Device, StrictModel
from diffprune.encoders.registry import available_encoders


class EmbedConfig(StrictModel):
    """Stage config for ``embed``."""

    encoder: str = "efficientnet-lite0"
    weights: str | None = None
    batch_size: int = 64
    device: Device = "auto"
    chunk_size: int = 4096
    num_workers: int = 0
    autocast: bool = True
    seed: int = 0
    options: dict[str, Any] = {}

    @field_validator("encoder")
    @classmethod
    def _known_encoder(cls, v: str) -> str:
        names = [n for n in available_encoders() if not n.startswith("random-init")]
        if v not in names and not v.startswith("random-init:"):
            raise ValueError(f"must be one of {names} or random-init:<arch>")
        return v

    @field_validator("batch_size", "chunk_size")
    @classmethod
    def _positive(cls, v: int) -> int:
        if v < 1:
            raise ValueError("must be a positive integer")
        return v

    @field_validator("num_workers")
    @classmethod
    def _non_negative(cls, v: int) -> int:
        if v < 0:
            raise ValueError("must be >= 0 (0 loads batches in the main process)")
        return v
