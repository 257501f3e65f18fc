"""``diffprune fid A B``: FID, KID and PRDC between any two image sets, outside a run.

Each side is a folder of images (``imagefolder``), an ``.npz`` of images (``samples.npz``: ``arr_0`` or
``images``), an ``.npz`` of saved statistics (``mu``/``sigma``, e.g. ``ref_stats.npz``, also pytorch-fid's),
or a dataset spec (``cifar10``, ``npz:PATH``, ...). Image sides are embedded with the FID Inception and
cached with ``reference_features``, the same cache ``evaluate`` uses (``--cache-dir runs/<name>/eval`` reuses
a run's real statistics). KID and PRDC need features on both sides, so they are skipped when one side is
statistics only.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from diffprune.data import ImageDataset, load_dataset
from diffprune.evaluation.config import EvalConfig
from diffprune.evaluation.errors import EvaluationError, require_finite
from diffprune.evaluation.evaluate import load_feature_network, network_identity
from diffprune.evaluation.features import extract_features
from diffprune.evaluation.frechet import frechet_distance
from diffprune.evaluation.metrics import torchmetrics_kid
from diffprune.evaluation.prdc import prdc
from diffprune.evaluation.reference import load_ref_stats, reference_features
from diffprune.runtime import resolve_device


@dataclass
class Side:
    """One input: its statistics, and its features when it was embedded (None for saved statistics)."""

    name: str
    mu: np.ndarray
    sigma: np.ndarray
    count: int
    features: np.ndarray | None
    cache_hit: bool = False


def load_side(spec: str, resolution: int | None = None,
              skip_bad: bool = False) -> ImageDataset | tuple[np.ndarray, np.ndarray, int]:
    """A side as images (``ImageDataset``) or as saved statistics (mu, sigma, count). A folder skips unreadable
    files; a dataset spec does with ``skip_bad`` (``data.skip_bad``)."""
    path = Path(spec)
    if path.is_dir():
        return load_dataset(f"imagefolder:{path}", resolution=resolution, skip_bad=True)
    if path.suffix == ".npz" and path.is_file():
        with np.load(path, allow_pickle=False) as z:
            is_stats = "mu" in z.files and "sigma" in z.files
        if is_stats:
            mu, sigma, count, _ = load_ref_stats(path)
            return mu, sigma, count
        return load_dataset(f"npz:{path}", resolution=resolution)
    if path.suffix == ".npz":
        raise EvaluationError(f"'{spec}' not found (expected a folder, an .npz file or a dataset spec)")
    return load_dataset(spec, resolution=resolution, skip_bad=skip_bad)  # its error lists the dataset specs


def compare(a: str, b: str, config: EvalConfig | None = None, cache_dir: Path | None = None,
            resolution: int | None = None, progress: bool = True,
            network: torch.nn.Module | None = None, skip_bad: bool = False) -> dict[str, Any]:
    """FID (and KID, PRDC when both sides have images) between ``a`` and ``b``; ``config`` gives the batch
    size, device, KID subsets and PRDC k (``EvalConfig`` defaults); ``skip_bad`` skips unreadable images of a
    dataset spec. Returns flat values plus ``inputs``."""
    config = config or EvalConfig()
    device = resolve_device(config.device)
    net = network
    sides = []
    for spec in (a, b):
        loaded = load_side(spec, resolution, skip_bad)
        if isinstance(loaded, tuple):
            sides.append(Side(spec, *loaded, features=None))
            continue
        if net is None:
            net = load_feature_network(config, device)
        ref = reference_features(
            loaded, lambda x, s=spec: extract_features(x, net, config.batch_size, progress, device=device,
                                                       description=f"features of {s}"),
            network_identity(net), num_real=None, seed=config.seed, cache_dir=cache_dir)
        sides.append(Side(spec, ref.mu, ref.sigma, ref.count, np.asarray(ref.features), ref.cache_hit))
    sa, sb = sides
    result: dict[str, Any] = {"fid": frechet_distance(sa.mu, sa.sigma, sb.mu, sb.sigma)}
    if sa.features is not None and sb.features is not None:
        kid = torchmetrics_kid(sa.features, sb.features, config.kid_subsets, config.kid_subset_size, config.seed)
        result["kid"], result["kid_std"] = kid["value"], kid["std"]
        k = min(config.prdc_k, len(sa.features) - 1, len(sb.features) - 1)
        scores = prdc(sa.features, sb.features, k=k, device=device)  # a = real, b = generated
        result.update({m: scores[m] for m in ("precision", "recall", "density", "coverage")})
    require_finite({k: v for k, v in result.items() if not k.endswith("_std")}, f"{a} vs {b}",
                   "check both inputs (a NaN or constant image set, a damaged statistics file) and run again")
    result["inputs"] = [{"input": s.name, "count": s.count, "statistics_only": s.features is None,
                         "cache_hit": s.cache_hit} for s in sides]
    return result
