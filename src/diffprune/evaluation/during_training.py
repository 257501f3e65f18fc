"""Evaluation during training: the callable the trainer runs at every ``train.eval_every`` steps.

It samples the EMA model with the fixed seed of ``train.eval`` (``diffusion.sample_images``, sharded across
processes under ``accelerate launch``) and scores the images with ``evaluate`` under the run's protocol:
same feature network (loaded once), same cached real-image statistics and classifier as the final
evaluation stage. Nothing is written here; the trainer appends the returned values to ``metrics.jsonl``.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from diffprune.data import ImageDataset
from diffprune.diffusion.config import SampleConfig, TrainEvalConfig
from diffprune.diffusion.sampling import LatentDecoder, _resolve_labels, sample_images
from diffprune.evaluation.config import EvalConfig
from diffprune.evaluation.evaluate import evaluate, load_feature_network
from diffprune.runtime import resolve_device

# flat values of ``evaluate``'s record that go into a metrics line, per requested metric
_RECORD_KEYS = {"fid": ("fid",), "kid": ("kid", "kid_std"), "classifier_fd": ("classifier_fd",)}


class TrainingEvaluator:
    """``evaluator(model, scheduler, step) -> {fid, kid, kid_std, classifier_fd, eval_samples}``.

    Args:
        config: ``train.eval`` (sample count, sampler, steps, seed, metrics).
        protocol: the run's ``evaluate`` section (feature network, ``num_real``, KID subsets, classifier).
        real: the real images the final evaluation compares against (pixels, even for latent runs).
        cache_dir: the run's evaluation cache (``runs/<name>/eval``), shared with the evaluate stage.
        guidance_scale: classifier-free guidance of conditional models (the run's ``sample`` setting).
        latent: the ``latent`` entry of the model's ``diffprune.json`` for latent runs (samples are decoded).
        network: a feature network to use instead of ``protocol.feature`` (tests).
        classifier_data: what the small classifier trains on instead of ``real`` (``classifier.data: split``).
    """

    def __init__(self, config: TrainEvalConfig, protocol: EvalConfig, real: ImageDataset,
                 cache_dir: Path | None, guidance_scale: float = 1.0, latent: dict[str, Any] | None = None,
                 network: torch.nn.Module | None = None, progress: bool = False,
                 classifier_data: ImageDataset | None = None) -> None:
        self.config = config
        self.protocol = protocol.model_copy(update={
            "metrics": list(config.metrics), "classwise": False, "fid_floor": False, "cross_check": False})
        self.real = real
        self.cache_dir = cache_dir
        self.guidance_scale = guidance_scale
        self.latent = latent
        self.progress = progress
        self._network = network
        self.classifier_data = classifier_data
        self._decoder = None

    def sample_config(self):
        c = self.config
        return SampleConfig(num_samples=c.samples, sampler=c.sampler, steps=c.steps, batch_size=c.batch_size,
                            seed=c.seed, guidance_scale=self.guidance_scale)

    def __call__(self, model: torch.nn.Module, scheduler: Any, step: int) -> dict[str, Any]:
        device = next(model.parameters()).device
        if self._network is None:
            self._network = load_feature_network(self.protocol, resolve_device(self.protocol.device))
        if self.latent is not None and self._decoder is None:
            self._decoder = LatentDecoder.from_meta(self.latent, model.config.sample_size, device)
        sc = self.sample_config()
        labels = _resolve_labels(model, None, sc.num_samples, sc.guidance_scale)
        was_training = model.training
        images = sample_images(model, scheduler, sc, class_labels=labels, progress=self.progress, device=device,
                               decoder=self._decoder)
        model.train(was_training)
        record = evaluate(images, self.real, self.protocol, None, cache_dir=self.cache_dir,
                          sample_labels=labels, progress=self.progress, network=self._network,
                          classifier_data=self.classifier_data)
        row: dict[str, Any] = {"eval_samples": int(len(images))}
        for metric in self.config.metrics:
            for key in _RECORD_KEYS[metric]:
                value = record.get(key)
                row[key] = None if value is None else float(np.asarray(value))
        return row
