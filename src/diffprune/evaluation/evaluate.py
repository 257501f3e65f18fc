"""``evaluate``: score generated samples against real images and write ``metrics.json`` with the protocol.

Order of work: the feature network embeds the reference set once (cached) and the samples once; FID, KID,
IS, precision/recall/density/coverage and class-wise FID all use those features. The small classifier (for
unconditional class-wise FID and the classifier Frechet distance) is trained once per dataset and cached.
"""
from __future__ import annotations

import importlib.metadata
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from diffprune.data import ImageDataset
from diffprune.encoders import load_fid_inception
from diffprune.evaluation.classifier import classifier_outputs, load_or_train_classifier
from diffprune.evaluation.classwise import classwise_frechet, mean_of_rows
from diffprune.evaluation.config import EvalConfig
from diffprune.evaluation.errors import EvaluationError, require_finite
from diffprune.evaluation.features import extract_features, has_logits, to_nchw
from diffprune.evaluation.reference import reference_features, save_ref_stats
from diffprune.evaluation.scores import METRICS, Metric, Scoring
from diffprune.io import atomic_write_json, hash_state_dict
from diffprune.runtime import distributed_state, resolve_device

def network_identity(network: torch.nn.Module) -> dict[str, Any]:
    """What identifies a feature network in a protocol and a cache key: name, weights hash, preprocessing."""
    weights = getattr(network, "weights_id", None)
    if not weights or weights == "none":
        weights = hash_state_dict(network.state_dict())
    return {
        "name": str(getattr(network, "name", type(network).__name__)),
        "weights_hash": str(weights),
        "num_features": int(getattr(network, "num_features", 0)),
        "preprocessing": dict(getattr(network, "preprocessing", {}) or {}),
    }


def load_feature_network(config: EvalConfig, device: torch.device) -> torch.nn.Module:
    """The feature network named by ``config.feature`` (the FID Inception from ``diffprune.encoders``)."""
    return load_fid_inception(config.weights, device=str(device))


def evaluate(
    samples: np.ndarray,
    real: ImageDataset,
    config: EvalConfig,
    out_dir: Path | None,
    cache_dir: Path | None = None,
    sample_labels: np.ndarray | None = None,
    protocol: dict[str, Any] | None = None,
    progress: bool = True,
    *,
    real_test: ImageDataset | None = None,
    network: torch.nn.Module | None = None,
    classifier_data: ImageDataset | None = None,
) -> dict[str, Any]:
    """Score ``samples`` against ``real`` and write ``out_dir/metrics.json`` (and ``out_dir/ref_stats.npz``).

    Args:
        samples: uint8 N x H x W x C generated images (N x C x H x W also accepted).
        real: the reference images (e.g. the training split), uint8 N x C x H x W with labels if any.
        config: metrics (names of the metric table ``evaluation.scores.METRICS``), feature network, counts,
            classifier options, seed.
        out_dir: where ``metrics.json`` goes (``eval/<arm>/``); None writes nothing (evaluation during training).
        cache_dir: where reference features/statistics and the classifier are cached (None: no cache).
        sample_labels: int N class labels of conditional samples (None: unconditional, the classifier assigns).
        protocol: the caller's part of the protocol, recorded verbatim (sampler, steps, seed, reference_split, ...).
        real_test: labelled real images held out from training, for the classifier's test accuracy
            (None: a stratified ``config.classifier.holdout`` fraction of ``real``).
        network: a feature network to use instead of ``config.feature`` (tests, custom encoders).
        classifier_data: labelled real images to train the small classifier on instead of ``real``
            (``classifier.data: split``: the dataset's whole split); its test accuracy is on its own holdout.

    Returns:
        The dict written to ``metrics.json``: flat values (``fid``, ``kid``, ``precision``, ...), ``details``,
        ``classwise``, ``protocol`` and ``seconds`` per phase.
    """
    t_start = time.perf_counter()
    timing: dict[str, float] = {}
    fake = to_nchw(samples)
    sample_labels = _check_inputs(fake, real, sample_labels)
    dist_state = distributed_state()
    s = Scoring(config, real, fake, resolve_device(config.device),
                is_main=dist_state is None or dist_state.is_main_process, real_test=real_test,
                sample_labels=sample_labels)
    wanted = [METRICS[name] for name in METRICS if name in config.metrics]  # the table's order

    # 1. Feature-network metrics (FID, KID, IS, PRDC, ...).
    net_id: dict[str, Any] | None = None
    feature_metrics = [m for m in wanted if m.needs == "features"]
    # only a feature metric loads the network: class-wise alone is on the classifier's features (FID Inception
    # at ~0.5 img/s on a CPU would otherwise cost more than everything that was asked for)
    if feature_metrics:
        net = network if network is not None else load_feature_network(config, s.device)
        net_id = network_identity(net)
        _embed(s, net, net_id, any(m.logits for m in feature_metrics), cache_dir, progress, timing)
        t = time.perf_counter()
        for metric in feature_metrics:
            metric.compute(s)
        timing["inception_metrics"] = round(time.perf_counter() - t, 3)

    # 2. The small classifier: class assignment for unconditional samples and the metrics on its features.
    trained = _classifier_phase(s, [m for m in wanted if m.needs == "classifier"], classifier_data, cache_dir,
                                progress, timing)

    # 3. Class-wise FID.
    classwise: dict[str, Any] | None = None
    if config.classwise:
        classwise = _classwise(real, s.ref, s.fake_feats, sample_labels, s.fake_pred, trained, s.real_cf, s.fake_cf,
                               config)
        if classwise.get("mean_fid") is not None:
            s.result["classwise_fid_mean"] = classwise["mean_fid"]

    full_protocol = _protocol(real, s.ref, net_id, len(fake), config, protocol, sample_labels is not None)
    if "kid" in s.details:
        full_protocol["kid"]["subset_size"] = s.details["kid"]["subset_size"]  # capped at the smaller set
    if "prdc" in s.details:
        full_protocol["prdc_k"] = s.details["prdc"]["k"]
    timing["total"] = round(time.perf_counter() - t_start, 3)
    require_finite({k: v for k, v in s.result.items() if not k.endswith("_std")}, f"the evaluation of {len(fake)} "
                   "samples", "check the samples (a diverged model gives NaN or constant images) and the cached "
                   "statistics in the cache folder, then run again")
    record = {**s.result, "details": s.details, "classwise": classwise, "protocol": full_protocol, "seconds": timing}
    if s.is_main and out_dir is not None:
        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        if s.ref is not None:
            save_ref_stats(out_dir / "ref_stats.npz", s.ref.mu, s.ref.sigma, s.ref.count, s.ref.protocol)
        atomic_write_json(out_dir / "metrics.json", record)
    return record


def _check_inputs(fake: np.ndarray, real: ImageDataset, sample_labels: np.ndarray | None) -> np.ndarray | None:
    if len(fake) < 2:
        raise EvaluationError(f"need at least 2 generated images, got {len(fake)}")
    if len(real) < 2:
        raise EvaluationError(f"need at least 2 real images, got {len(real)}")
    if sample_labels is not None:
        sample_labels = np.asarray(sample_labels, dtype=np.int64)
        if sample_labels.shape != (len(fake),):
            raise EvaluationError(f"sample_labels must have shape ({len(fake)},), got {sample_labels.shape}")
    return sample_labels


def _embed(s: Scoring, net: torch.nn.Module, net_id: dict[str, Any], want_logits: bool, cache_dir: Path | None,
           progress: bool, timing: dict[str, float]) -> None:
    """The reference features (cached) and the sample features (with logits when a metric wants them)."""
    config = s.config
    t = time.perf_counter()

    def embed(images: np.ndarray, what: str) -> np.ndarray:
        return extract_features(images, net, config.batch_size, progress, device=s.device, description=what)

    s.embed = embed
    s.ref = reference_features(s.real, lambda x: embed(x, "real features"), net_id,
                               num_real=config.num_real, seed=config.seed, cache_dir=cache_dir,
                               write_cache=s.is_main)
    timing["reference_features"] = round(time.perf_counter() - t, 3)
    t = time.perf_counter()
    if want_logits and has_logits(net):
        s.fake_feats, s.logits = extract_features(s.fake, net, config.batch_size, progress, device=s.device,
                                                  description="sample features", with_logits=True)
    else:
        s.fake_feats = embed(s.fake, "sample features")
    timing["sample_features"] = round(time.perf_counter() - t, 3)


def _classifier_phase(s: Scoring, metrics: list[Metric], classifier_data: ImageDataset | None,
                      cache_dir: Path | None, progress: bool, timing: dict[str, float]):
    """Train (or load) the small classifier (on ``classifier_data``, default the reference images) when a metric
    or unconditional class-wise FID needs it; run the classifier ``metrics``. Returns the trained classifier
    (None when not needed or the data are unlabelled)."""
    config, real = s.config, s.real
    if not metrics and not (config.classwise and s.sample_labels is None):
        return None
    cls_train, cls_test = (real, s.real_test) if classifier_data is None else (classifier_data, None)
    if cls_train.labels is None:
        reason = "the reference images are unlabelled, so no classifier can be trained"
        for metric in metrics:
            s.details[metric.name] = {"value": None, "available": False, "reason": reason}
            s.result[metric.name] = None
        return None
    t = time.perf_counter()
    trained = load_or_train_classifier(cls_train, config.classifier, test=cls_test, seed=config.seed,
                                       device=s.device, cache_dir=cache_dir, progress=progress and s.is_main,
                                       write_cache=s.is_main)
    timing["classifier"] = round(time.perf_counter() - t, 3)
    t = time.perf_counter()
    idx = s.ref.indices if s.ref is not None else np.arange(len(real))
    s.real_cf, _ = classifier_outputs(trained.model, real.images[idx], device=s.device)
    s.fake_cf, fake_logits = classifier_outputs(trained.model, s.fake, device=s.device)
    s.fake_pred = fake_logits.argmax(axis=1)
    cls_info = {k: trained.info[k] for k in ("architecture", "test_accuracy", "num_train", "num_test", "seed")}
    cls_info["cache_hit"] = trained.cache_hit
    s.classifier_info = cls_info
    s.result["classifier_test_accuracy"] = trained.info["test_accuracy"]
    if s.sample_labels is not None:
        s.result["classifier_label_agreement"] = float((s.fake_pred == s.sample_labels).mean())
    for metric in metrics:
        metric.compute(s)
    s.details["classifier"] = cls_info
    timing["classifier_metrics"] = round(time.perf_counter() - t, 3)
    return trained


def _classwise(real, ref, fake_feats, sample_labels, fake_pred, trained, real_cf, fake_cf, config) -> dict[str, Any]:
    if real.labels is None:
        return {"available": False, "reason": "the reference images are unlabelled"}
    if sample_labels is not None:
        labels, source = sample_labels, "conditioning labels of the samples"
    elif fake_pred is not None:
        labels = fake_pred
        source = f"predicted by the small classifier (test accuracy {trained.info['test_accuracy']:.4f})"
    else:
        return {"available": False, "reason": "no class labels for the samples"}
    out: dict[str, Any] = {"available": True, "label_source": source,
                           "generated_class_counts": np.bincount(labels, minlength=real.num_classes).tolist()}
    if ref is not None and fake_feats is not None:
        rows = classwise_frechet(ref.features, ref.labels, fake_feats, labels, real.class_names,
                                 min_per_class=config.min_per_class)
        out["fid"] = rows
        out["mean_fid"] = mean_of_rows(rows)
    if real_cf is not None and fake_cf is not None:
        idx = ref.indices if ref is not None else np.arange(len(real))
        rows = classwise_frechet(real_cf, real.labels[idx], fake_cf, labels, real.class_names,
                                 min_per_class=config.min_per_class)
        out["classifier_fd"] = rows
        out["mean_classifier_fd"] = mean_of_rows(rows)
    if "fid" not in out and "classifier_fd" not in out:
        return {"available": False, "reason": "no features to compare per class: evaluate fid or classifier_fd"}
    return out


def _versions() -> dict[str, str]:
    out = {}
    for name in ("diffprune", "torch", "torchmetrics", "numpy", "scipy"):
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            pass
    return out


def _protocol(real, ref, net_id, num_fake, config, caller, conditional) -> dict[str, Any]:
    caller = dict(caller or {})
    prep = (net_id or {}).get("preprocessing", {})
    return {
        "feature_network": net_id,
        "resize": prep.get("resize", "n/a"),
        "input": "uint8 images; grey repeated to RGB; " + str(prep.get("scale", "")),
        "num_real": None if ref is None else ref.count,
        "num_generated": int(num_fake),
        "reference": {
            "dataset": real.name,
            "fingerprint": real.fingerprint,
            "split": caller.get("reference_split", caller.get("split", "unrecorded")),
            "num_images_available": len(real),
            "subset_seed": None if ref is None else ref.protocol.get("subset_seed"),
            "statistics_cache_hit": None if ref is None else ref.cache_hit,
        },
        "conditional": conditional,
        "metrics": list(config.metrics),
        "prdc_k": config.prdc_k,
        "kid": {"subsets": config.kid_subsets, "subset_size": config.kid_subset_size, "kernel": "poly3"},
        "fid_formula": config.fid_backend + (" (cross-checked)" if config.cross_check else ""),
        "seed": config.seed,
        "caller": caller,
        "versions": _versions(),
    }
