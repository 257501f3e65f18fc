"""The run layout: the folder of every stage inside ``runs/<name>/`` (docs/architecture.md, "Run directory").

One place names the folders, so the stages, the run files (``arms.json``, ``stages.json``) and the CLI's messages
agree; readers of a finished run (report, export) follow ``arms.json`` instead of rebuilding the names.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from diffprune.io import hash_arrays


def features_name(embed: Any) -> str:
    """``<encoder>``, suffixed by the encoder's options and weights when they are set (each combination embeds
    into its own folder): the options themselves when short, else a hash."""
    name = embed.encoder.replace(":", "-")
    if embed.options or embed.weights:
        parts = [f"{k}{v}" for k, v in sorted(embed.options.items())]
        slug = "-".join(parts)
        if embed.weights or len(slug) > 40 or not all(ch.isalnum() or ch in "._-" for ch in slug):
            key = repr((sorted(embed.options.items()), embed.weights)).encode()
            slug = hash_arrays(np.frombuffer(key, np.uint8))[:8]
        name += f"-{slug}"
    return name


def selection_name(select: Any, seed: int | None, options: dict[str, Any]) -> str:
    """``<method>-r<ratio>`` of a resolved select config, with ``-<keep>``, ``-global``, ``-s<seed>`` (an arm's
    own seed) and a hash of the arm's method options when they differ from the defaults."""
    name = f"{select.method}-r{select.ratio:g}"
    if select.keep != "top":
        name += f"-{select.keep}"
    if not select.per_class:
        name += "-global"
    if seed is not None:
        name += f"-s{seed}"
    if options:
        name += "-" + hash_arrays(np.frombuffer(repr(sorted(options.items())).encode(), np.uint8))[:6]
    return name


def latents_name(latent: Any) -> str:
    """``<vae>-<dtype>``, the VAE spec made a folder name (its last 60 characters)."""
    slug = "".join(ch if ch.isalnum() or ch in "._-" else "_" for ch in latent.vae.strip("/"))[-60:]
    return f"{slug}-{latent.dtype}"


@dataclass(frozen=True)
class RunLayout:
    """The stage folders of the run directory ``root``."""

    root: Path

    def features(self, embed: Any) -> Path:
        return self.root / "features" / features_name(embed)

    def selection(self, name: str) -> Path:
        return self.root / "selection" / name

    def reweight(self, name: str) -> Path:
        return self.root / "reweight" / name

    def reference(self, null: bool = False, selection: str | None = None) -> Path:
        """``reference/`` (``reference-null/`` for the null control), per selection when references train on
        each coreset (``reference_data: coreset``)."""
        folder = self.root / ("reference-null" if null else "reference")
        return folder / selection if selection else folder

    def latents(self, latent: Any) -> Path:
        return self.root / "latents" / latents_name(latent)

    def train(self, arm: str) -> Path:
        return self.root / "train" / arm

    def samples(self, arm: str) -> Path:
        return self.root / "samples" / arm

    def eval(self, arm: str | None = None) -> Path:
        """``eval/<arm>``; ``eval/`` alone is the cache of real-image statistics and the classifier."""
        return self.root / "eval" / arm if arm else self.root / "eval"

    def export(self, arm: str) -> Path:
        return self.root / "export" / arm

    def relative(self, path: Path) -> str:
        return str(path.relative_to(self.root))
