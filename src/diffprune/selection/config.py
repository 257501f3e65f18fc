"""The ``select`` stage's config."""
from __future__ import annotations

from typing import Any, Literal

from pydantic import field_validator

from diffprune.config import Device, StrictModel
from diffprune.selection.registry import available_methods


class SelectConfig(StrictModel):
    """Stage config for ``select``: ``options`` are passed to the method (see ``available_methods()``)."""

    method: str = "gaussian"
    ratio: float = 0.5
    per_class: bool = True
    keep: Literal["top", "bottom", "middle"] = "top"
    seed: int = 0
    clusters: int | None = None
    device: Device = "auto"
    options: dict[str, Any] = {}

    @field_validator("method")
    @classmethod
    def _known_method(cls, v: str) -> str:
        names = sorted(available_methods())
        if v not in names:
            raise ValueError(f"must be one of {names}")
        return v

    @field_validator("ratio")
    @classmethod
    def _ratio_range(cls, v: float) -> float:
        if not (0.0 < v <= 1.0):
            raise ValueError("must lie in (0, 1]: the kept fraction, e.g. 0.3")
        return v

    @field_validator("clusters")
    @classmethod
    def _clusters_positive(cls, v: int | None) -> int | None:
        if v is not None and v < 1:
            raise ValueError("must be a positive number of k-means clusters, or null to use the labels")
        return v
