"""``diffprune.coreset(...)``: the pruned, weighted training set as a torch ``Subset`` and samplers, for a
trainer that is not diffprune's (a diffusers example script, a DiT/EDM fork, a hand-written loop)."""
from __future__ import annotations

import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from diffprune.config import validate_config
from diffprune.data import DataConfig, ImageDataset, load_dataset
from diffprune.diffusion.batches import class_weight_vector, example_weights
from diffprune.export.samplers import WeightedDistributedSampler, epoch_generator
from diffprune.export.table import coreset_rows, write_coreset
from diffprune.export.user_data import CoresetError, is_hf_dataset, read_dataset
from diffprune.io import read_json, read_yaml
from diffprune.reweighting import load_class_weights
from diffprune.selection import Selection


@dataclass
class Coreset:
    """The kept examples of a dataset and the weights that reproduce diffprune's training on them.

    Attributes:
        indices: sorted int64 n rows of the source dataset that are kept.
        groups: int64 n group id (class, or cluster) of each kept example; ``group_names`` names them.
        scores: float64 n selection scores of the kept examples.
        probabilities: float64 n, sums to 1: draw probability of each kept example that gives group k the
            share ``class_weights[k]`` (uniform 1/n without class weights). The samplers draw with these;
            train with an unweighted loss then.
        loss_weights: float64 n: a_k / p_k (K * a_k for balanced groups), the per-example loss multiplier that
            gives the same expected class shares under uniform sampling (all 1 without class weights). Use these
            *or* the samplers.
        source_ids: n ids (file paths relative to the dataset root, or row indices).
        dataset: the source dataset when known (``subset()`` uses it by default).
    """

    indices: np.ndarray
    groups: np.ndarray
    group_names: list[str]
    scores: np.ndarray
    probabilities: np.ndarray
    loss_weights: np.ndarray
    source_ids: list[str]
    class_weights: dict[str, float] | None = None
    dataset: Any = field(default=None, repr=False)
    _selection: Any = field(default=None, repr=False)
    _image_dataset: Any = field(default=None, repr=False)

    def __len__(self) -> int:
        return len(self.indices)

    def subset(self, dataset: Any = None) -> torch.utils.data.Subset:
        """``torch.utils.data.Subset`` of ``dataset`` (default: the one the coreset was built from) holding
        the kept rows, in index order; position j of the subset is ``indices[j]`` of the dataset. An
        ``ImageDataset`` yields (uint8 C x H x W tensor, label) pairs (``ImageTensors``)."""
        dataset = self.dataset if dataset is None else dataset
        if dataset is None:
            raise CoresetError("this coreset was loaded from a run; pass the dataset: core.subset(my_dataset)")
        if len(dataset) <= int(self.indices.max()):
            raise CoresetError(f"the dataset has {len(dataset)} rows but the coreset indexes row "
                               f"{int(self.indices.max())}: is it the dataset the coreset was selected from?")
        if isinstance(dataset, ImageDataset):
            dataset = ImageTensors(dataset)
        return torch.utils.data.Subset(dataset, self.indices.tolist())

    def sampler(self, num_samples: int | None = None, seed: int = 0) -> torch.utils.data.WeightedRandomSampler:
        """A single-process ``WeightedRandomSampler`` over ``subset()`` positions drawing with
        ``probabilities`` (``num_samples`` per epoch, default n). Its first epoch equals epoch 0 of
        ``distributed_sampler(seed=seed)`` over all ranks. Under ``accelerator.prepare(dataloader)``
        accelerate shards its batches itself."""
        return torch.utils.data.WeightedRandomSampler(
            torch.from_numpy(self.probabilities), num_samples or len(self), replacement=True,
            generator=epoch_generator(seed, 0))

    def distributed_sampler(self, num_samples: int | None = None, num_replicas: int | None = None,
                            rank: int | None = None, seed: int = 0) -> WeightedDistributedSampler:
        """A weighted sampler over ``subset()`` positions that shards across DDP ranks (see
        ``WeightedDistributedSampler``); call ``set_epoch`` every epoch. Do not pass its DataLoader to
        ``accelerator.prepare`` (that would shard it twice); move batches to the device yourself."""
        return WeightedDistributedSampler(self.probabilities, num_samples, num_replicas, rank, seed)

    def save(self, out_dir: str | Path, weighting: str = "loss") -> tuple[Path, Path]:
        """Write ``coreset.csv`` and ``coreset.jsonl`` (``export.table``) with ``weighting``'s columns."""
        if self._selection is None or self._image_dataset is None:
            raise CoresetError("save() needs a coreset built by diffprune.coreset(...)")
        return write_coreset(out_dir, coreset_rows(self._image_dataset, self._selection, self.class_weights,
                                                    weighting))


class ImageTensors(torch.utils.data.Dataset):
    """An ``ImageDataset`` as a torch ``Dataset`` of (uint8 C x H x W tensor, label; -1 when unlabelled)."""

    def __init__(self, data: ImageDataset) -> None:
        self.data = data

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        label = -1 if self.data.labels is None else int(self.data.labels[i])
        return torch.from_numpy(np.array(self.data.images[i])), label


def from_selection(dataset: ImageDataset, selection, class_weights: Mapping[str, float] | None = None,
                   source: Any = None) -> Coreset:
    """The ``Coreset`` of a ``Selection`` over ``dataset`` with optional class weights ({group name: a_k})."""
    idx = np.asarray(selection.indices, dtype=np.int64)
    groups = np.asarray(selection.groups, dtype=np.int64)[idx]
    a = None if class_weights is None else class_weight_vector(class_weights, selection.group_names)
    probs = example_weights(groups, a, "resample")[0]
    weights = example_weights(groups, a, "loss")[1]
    return Coreset(idx, groups, list(selection.group_names), np.asarray(selection.scores)[idx], probs, weights,
                   dataset.source_ids_of(idx) or [str(i) for i in idx.tolist()],
                   None if class_weights is None else dict(class_weights),
                   dataset=source if source is not None else dataset, _selection=selection, _image_dataset=dataset)


def coreset(
    source: Any,
    arm: str | None = None,
    *,
    method: str = "gaussian",
    ratio: float = 0.5,
    features: np.ndarray | None = None,
    labels: np.ndarray | None = None,
    class_weights: Mapping[str, float] | None = None,
    encoder: str = "efficientnet-lite0",
    resolution: int | None = None,
    image_column: str | None = None,
    label_column: str | None = None,
    value_range: tuple[float, float] | None = None,
    seed: int = 0,
    work_dir: str | Path | None = None,
    progress: bool = False,
) -> Coreset:
    """The coreset of ``source``, ready for another trainer.

    ``source`` is one of
      - a diffprune run directory (``runs/<name>``, with ``arm``; default its first pruned arm): that arm's
        selection and DRO class weights, read from the run (the stages must have run);
      - a dataset spec (``"imagefolder:PATH"``, ``"npz:PATH"``, ``"cifar10"``, ...) or an ``ImageDataset``;
      - a Hugging Face ``datasets.Dataset`` (e.g. diffusers' imagefolder with ``set_transform``): images and
        labels are read from its table (``image_column``, ``label_column``; default the first ``Image`` and
        ``ClassLabel`` columns), not through its transform;
      - any map-style torch ``Dataset`` whose items are ``image``, ``(image, label)`` or a dict with an image
        (``image_column``, default image, img, pixel_values or input) and an optional label; images are PIL
        images, uint8 arrays/tensors (C x H x W or H x W x C) or float tensors whose range ``value_range``
        declares, e.g. ``(-1, 1)`` for diffusers' ``Normalize([0.5], [0.5])`` (never guessed).
    ``resolution`` brings every image to one size. Unless ``features`` (N x D) are given, the images are
    embedded with ``encoder``; then ``method`` keeps ``ratio`` of each class (``labels`` override the
    dataset's). ``work_dir`` keeps the pixels (a memory map) and the features (a temporary folder by default).
    ``class_weights`` ({class name: a_k}, e.g. a run's ``class_weights.json``) weight the groups; for DRO
    weights computed here use ``diffprune.prune_and_reweight``.
    """
    if isinstance(source, (str, Path)) and (Path(source) / "arms.json").is_file():
        return _from_run(Path(source), arm)
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(work_dir) if work_dir is not None else Path(tmp)
        data = load_source(source, image_column=image_column, label_column=label_column, value_range=value_range,
                           resolution=resolution, cache_dir=out / "images", progress=progress)
        if labels is not None:
            names = data.class_names or [str(k) for k in range(int(np.max(labels)) + 1)]
            data = ImageDataset(data.images, labels, names, name=data.name, source_ids=data.source_ids)
        if features is None:
            from diffprune.encoders import EmbedConfig, embed_dataset

            features = np.array(embed_dataset(data, EmbedConfig(encoder=encoder), out / "features" / encoder,
                                              progress=progress))
        elif len(features) != len(data):
            raise CoresetError(f"features have {len(features)} rows but the dataset has {len(data)} examples")
        if work_dir is None and _is_user_dataset(source):
            data = ImageDataset(np.array(data.images), data.labels, data.class_names, name=data.name,
                                fingerprint=data.fingerprint, source_ids=data.source_ids)  # off the temporary map
    from diffprune.selection import select

    sel = select(np.asarray(features, dtype=np.float32), data.labels, method, ratio, seed=seed,
                 class_names=data.class_names or None)
    # subset() indexes the user's own dataset (its transforms apply) when one was given
    return from_selection(data, sel, class_weights, source=source if _is_user_dataset(source) else None)


def _is_user_dataset(source: Any) -> bool:
    torch_dataset = isinstance(source, torch.utils.data.Dataset) and not isinstance(source, ImageDataset)
    return is_hf_dataset(source) or torch_dataset


def load_source(source: Any, *, cache_dir: Path | None = None, resolution: int | None = None,
                progress: bool = False, **columns: Any) -> ImageDataset:
    """The ``ImageDataset`` of a dataset spec, an ``ImageDataset`` or a user's dataset (``read_dataset``)."""
    if isinstance(source, str):
        return load_dataset(source, resolution=resolution)
    if isinstance(source, ImageDataset):
        return source
    if _is_user_dataset(source):
        return read_dataset(source, resolution=resolution, cache_dir=cache_dir, progress=progress, **columns)
    raise CoresetError(f"source must be a run directory, a dataset spec, an ImageDataset, a datasets.Dataset or a "
                       f"torch Dataset; got {type(source).__name__}")


def _from_run(run_dir: Path, arm: str | None) -> Coreset:
    """An arm's coreset from a finished run, read from its files as the report reads them: ``arms.json`` names
    the arm's stage folders, ``selection.npz`` / ``selection.json`` hold the selection, ``class_weights.json``
    the DRO weights, and ``config.yaml``'s data section loads the dataset."""
    run_dir = run_dir.resolve()
    arms = read_json(run_dir / "arms.json")
    pruned = [a for a in arms if a["method"] != "full"]
    if not pruned:
        raise CoresetError(f"run '{run_dir}' has no pruned arm (only 'full')")
    if arm:
        chosen = next((a for a in arms if a["arm"] == arm), None)
        if chosen is None:
            raise KeyError(f"no arm '{arm}' in the config; arms: {', '.join(a['arm'] for a in arms)}")
    else:
        chosen = pruned[0]
    if chosen["method"] == "full":
        raise CoresetError("arm 'full' trains on all data; it has no coreset")
    selection_dir = run_dir / chosen["selection"]
    if not (selection_dir / "selection.npz").is_file():
        raise CoresetError(f"arm '{chosen['arm']}' of run '{run_dir}' has no selection yet ('{selection_dir}'); "
                           "run the run's select stage first")
    weights = None
    if chosen.get("reweight"):
        weights_file = run_dir / chosen["reweight"] / "class_weights.json"
        if not weights_file.is_file():
            raise CoresetError(f"arm '{chosen['arm']}' of run '{run_dir}' has no class weights yet "
                               f"('{weights_file}'); run the run's reweight stage first")
        weights = load_class_weights(weights_file)
    data = validate_config(DataConfig, (read_yaml(run_dir / "config.yaml") or {}).get("data") or {}).load()
    return from_selection(data, Selection.load(selection_dir), weights)

