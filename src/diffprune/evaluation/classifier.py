"""A small CNN trained on the real training set: labels unconditional samples for class-wise FID, and its
penultimate features give a Frechet distance that is meaningful for tiny grey images (where Inception's
ImageNet features, computed on 28x28 digits upsampled to 299, are not).

Cached in ``cache_dir/classifier-<key>/`` (``model.safetensors`` + ``info.json`` with the held-out test accuracy),
key = dataset fingerprint + classifier config + seed.
"""
from __future__ import annotations

import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import nn

from diffprune.data import ImageDataset
from diffprune.evaluation.config import ClassifierConfig
from diffprune.evaluation.errors import EvaluationError
from diffprune.evaluation.features import to_nchw
from diffprune.io import atomic_path, atomic_write_json, config_hash
from diffprune.io.lock import folder_lock
from diffprune.runtime import progress_bar


class SmallClassifier(nn.Module):
    """Conv(w)x2 - pool - Conv(2w)x2 - pool - Conv(4w) - global average pool -> ``4w`` features -> K logits.

    Input: uint8 or float N x C x H x W in [0, 255] at the training resolution (C as in training).
    """

    def __init__(self, channels: int, num_classes: int, width: int = 32, resolution: int = 28) -> None:
        super().__init__()
        self.channels, self.num_classes, self.width, self.resolution = channels, num_classes, width, resolution
        w = width

        def block(cin: int, cout: int) -> list[nn.Module]:
            return [nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)]

        self.body = nn.Sequential(
            *block(channels, w), *block(w, w), nn.MaxPool2d(2),
            *block(w, 2 * w), *block(2 * w, 2 * w), nn.MaxPool2d(2),
            *block(2 * w, 4 * w), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
        )
        self.head = nn.Sequential(nn.Dropout(0.2), nn.Linear(4 * w, num_classes))
        self.num_features = 4 * w

    def prepare(self, x: torch.Tensor) -> torch.Tensor:
        """Scale to [-1, 1], match channels (grey <-> RGB) and resolution of the training images."""
        x = x.float() / 127.5 - 1.0
        if x.shape[1] != self.channels:
            x = x.mean(dim=1, keepdim=True) if self.channels == 1 else x.expand(-1, self.channels, -1, -1)
        if x.shape[-1] != self.resolution or x.shape[-2] != self.resolution:
            x = F.interpolate(x, size=(self.resolution, self.resolution), mode="bilinear", align_corners=False,
                              antialias=x.shape[-1] > self.resolution)
        return x

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(self.prepare(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))

    def features_and_logits(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        f = self.features(x)
        return f, self.head(f)


@dataclass
class TrainedClassifier:
    model: SmallClassifier
    info: dict[str, Any]
    cache_hit: bool = False


def stratified_holdout(labels: np.ndarray, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Split indices into (train, test) with ``fraction`` of every class held out (at least one per class)."""
    rng = np.random.default_rng(seed)
    train, test = [], []
    for k in np.unique(labels):
        idx = rng.permutation(np.flatnonzero(labels == k))
        n_test = max(1, int(round(fraction * len(idx)))) if len(idx) > 1 else 0
        test.append(idx[:n_test])
        train.append(idx[n_test:])
    return np.sort(np.concatenate(train)), np.sort(np.concatenate(test))


def train_classifier(
    train: ImageDataset,
    config: ClassifierConfig,
    *,
    test: ImageDataset | None = None,
    seed: int = 0,
    device: str | torch.device = "cpu",
    progress: bool = True,
) -> TrainedClassifier:
    """Train a ``SmallClassifier`` on labelled real images and measure its accuracy on held-out real images.

    ``test``: a separate labelled split; when None, ``config.holdout`` of every class of ``train`` is held out.
    """
    if train.labels is None or train.num_classes < 2:
        raise EvaluationError(
            f"the classifier needs labelled real images with at least 2 classes; {train.name!r} is unlabelled. "
            "Class-wise FID of an unconditional model needs labels (or cluster ids saved as labels)"
        )
    if test is None:
        tr_idx, te_idx = stratified_holdout(train.labels, config.holdout, seed)
        test, train = train.subset(te_idx), train.subset(tr_idx)
    if config.max_train is not None and len(train) > config.max_train:
        keep = np.sort(np.random.default_rng(seed).choice(len(train), config.max_train, replace=False))
        train = train.subset(keep)
    dev = torch.device(device)
    with torch.random.fork_rng(devices=[dev] if dev.type == "cuda" else []):
        torch.manual_seed(seed)  # initialisation, shuffling and dropout: the same classifier on every run
        return _train(train, test, config, seed, dev, progress)


def _train(train: ImageDataset, test: ImageDataset, config: ClassifierConfig, seed: int, dev: torch.device,
           progress: bool) -> TrainedClassifier:
    gen = torch.Generator().manual_seed(seed)
    model = SmallClassifier(train.channels, train.num_classes, config.width, train.resolution).to(dev)
    opt = torch.optim.Adam(model.parameters(), lr=config.lr)
    steps_per_epoch = max(1, int(np.ceil(len(train) / config.batch_size)))
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=config.lr, total_steps=config.epochs * steps_per_epoch)
    images = torch.from_numpy(train.images)
    labels = torch.from_numpy(train.labels)
    t0 = time.perf_counter()
    with progress_bar(enabled=progress, rate="img/s") as bar:
        task = bar.add_task("classifier", total=config.epochs * len(train))
        for _ in range(config.epochs):
            model.train()
            order = torch.randperm(len(train), generator=gen)
            for start in range(0, len(train), config.batch_size):
                idx = order[start : start + config.batch_size]
                x, y = images[idx].to(dev), labels[idx].to(dev)
                if len(idx) < 2:
                    continue  # batch norm needs two images
                loss = F.cross_entropy(model(x), y)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                sched.step()
                bar.update(task, advance=len(idx))
    recompute_batchnorm_statistics(model, images, dev, config.batch_size)
    model.eval()
    pred = predict(model, test.images, device=dev)
    info = {
        "architecture": f"SmallClassifier(width={config.width}, features={model.num_features})",
        "config": config.model_dump(),
        "seed": seed,
        "num_classes": train.num_classes,
        "class_names": list(train.class_names),
        "channels": train.channels,
        "resolution": train.resolution,
        "num_train": len(train),
        "num_test": len(test),
        "test_accuracy": float((pred == test.labels).mean()),
        "train_seconds": round(time.perf_counter() - t0, 3),
    }
    return TrainedClassifier(model, info)


@torch.no_grad()
def recompute_batchnorm_statistics(model: nn.Module, images: torch.Tensor, device: torch.device,
                                   batch_size: int, max_images: int = 4096) -> None:
    """Replace batch-norm running statistics by exact averages over (up to ``max_images``) training images.

    Running averages lag behind the weights after a short training run (a few dozen steps on a small dataset),
    which can wreck eval-mode predictions; exact averages make the trained weights' accuracy what is measured.
    """
    bns = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    for m in bns:
        m.reset_running_stats()
        m.momentum = None  # cumulative moving average = exact mean over the batches seen
    model.train()
    for start in range(0, min(len(images), max_images), batch_size):
        model.features(images[start : min(start + batch_size, max_images)].to(device))
    for m in bns:
        m.momentum = 0.1


@torch.inference_mode()
def classifier_outputs(
    model: SmallClassifier, images: np.ndarray, *, device: str | torch.device = "cpu", batch_size: int = 512
) -> tuple[np.ndarray, np.ndarray]:
    """(features float64 N x 4w, logits float64 N x K) for uint8 images in either layout."""
    nchw = to_nchw(images)
    model = model.to(device).eval()
    feats, logits = [], []
    for start in range(0, len(nchw), batch_size):
        x = torch.from_numpy(nchw[start : start + batch_size]).to(device)
        f, lg = model.features_and_logits(x)
        feats.append(f.double().cpu().numpy())
        logits.append(lg.double().cpu().numpy())
    if not feats:
        return np.zeros((0, model.num_features)), np.zeros((0, model.num_classes))
    return np.concatenate(feats), np.concatenate(logits)


def predict(model: SmallClassifier, images: np.ndarray, *, device: str | torch.device = "cpu") -> np.ndarray:
    """Predicted class indices (int64 N)."""
    return classifier_outputs(model, images, device=device)[1].argmax(axis=1).astype(np.int64)


def load_or_train_classifier(
    train: ImageDataset,
    config: ClassifierConfig,
    *,
    test: ImageDataset | None = None,
    seed: int = 0,
    device: str | torch.device = "cpu",
    cache_dir: Path | None = None,
    progress: bool = True,
    write_cache: bool = True,
) -> TrainedClassifier:
    """``train_classifier`` with a cache in ``cache_dir`` (safetensors weights + info.json)."""
    key = config_hash({"train": train.fingerprint, "test": None if test is None else test.fingerprint,
                       "config": config.model_dump(), "seed": seed})
    folder = Path(cache_dir) / f"classifier-{key}" if cache_dir is not None else None
    if folder is None or not write_cache:
        return _cached_classifier(folder, config) or train_classifier(train, config, test=test, seed=seed,
                                                                      device=device, progress=progress)
    # the workers of a sweep evaluate at the same time: one trains, the others wait for it and load its weights
    def waiting(holder: str) -> None:
        if progress:
            print(f"waiting for {holder} to train the classifier {folder.name}", file=sys.stderr)

    with folder_lock(folder, wait=True, what=f"the classifier {folder.name}", on_wait=waiting):
        cached = _cached_classifier(folder, config)
        if cached is not None:
            return cached
        trained = train_classifier(train, config, test=test, seed=seed, device=device, progress=progress)
        state = {k: v.detach().cpu().contiguous() for k, v in trained.model.state_dict().items()}
        with atomic_path(folder / "model.safetensors") as tmp:
            save_file(state, str(tmp))
        atomic_write_json(folder / "info.json", trained.info)  # last: marks the entry complete
    return trained


def _cached_classifier(folder: Path | None, config: ClassifierConfig) -> TrainedClassifier | None:
    """The classifier cached in ``folder``; None when there is none or the entry is broken (then it is retrained)."""
    if folder is None or not (folder / "info.json").is_file():
        return None
    try:
        info = json.loads((folder / "info.json").read_text())
        model = SmallClassifier(info["channels"], info["num_classes"], config.width, info["resolution"])
        model.load_state_dict(load_file(str(folder / "model.safetensors")))
        return TrainedClassifier(model.eval(), info, cache_hit=True)
    except (OSError, ValueError, KeyError, RuntimeError):
        return None
