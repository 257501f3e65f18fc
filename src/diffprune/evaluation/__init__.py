"""Stage 5: evaluation users can trust (every number carries its protocol) and honest speed-up accounting.

Public API:
    frechet_distance, fid_from_features, gaussian_stats   the Frechet distance (FID on Inception features)
    EvalConfig, ClassifierConfig                           settings
    extract_features                                       batched, GPU, sharded under ``accelerate launch``
    evaluate                                               all metrics + ``metrics.json`` with the protocol
    prdc                                                   precision/recall/density/coverage (Naeem et al. 2020)
    compute_speedup, time_to_target, read_metrics_jsonl    speed-up by wall-clock and by images processed
"""
from diffprune.evaluation.classifier import SmallClassifier, load_or_train_classifier, train_classifier
from diffprune.evaluation.config import ClassifierConfig, EvalConfig
from diffprune.evaluation.errors import EvaluationError
from diffprune.evaluation.evaluate import evaluate, network_identity
from diffprune.evaluation.features import extract_features
from diffprune.evaluation.frechet import (
    fid_from_features,
    frechet_distance,
    frechet_distance_to_features,
    gaussian_stats,
)
from diffprune.evaluation.prdc import prdc
from diffprune.evaluation.reference import load_ref_stats, save_ref_stats
from diffprune.evaluation.speedup import (
    DEFAULT_TOLERANCES,
    compute_speedup,
    cost_to_reach,
    fid_curve,
    plateau_change,
    read_metrics_jsonl,
    summarise_cost,
    time_to_target,
)

__all__ = [
    "DEFAULT_TOLERANCES",
    "cost_to_reach",
    "ClassifierConfig",
    "EvalConfig",
    "EvaluationError",
    "SmallClassifier",
    "compute_speedup",
    "evaluate",
    "extract_features",
    "fid_curve",
    "fid_from_features",
    "frechet_distance",
    "frechet_distance_to_features",
    "gaussian_stats",
    "load_or_train_classifier",
    "load_ref_stats",
    "network_identity",
    "plateau_change",
    "prdc",
    "read_metrics_jsonl",
    "save_ref_stats",
    "summarise_cost",
    "time_to_target",
    "train_classifier",
]
