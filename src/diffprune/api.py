"""The whole method from Python, on a user's own dataset: embed -> select -> reweight (Group DRO against a given
or trained reference) -> a ``Coreset`` with class weights, its samplers and its loss weights.

The stages are ``diffprune run``'s own (``pipeline.Pipeline``): each is cached in the folder the caller names
(with its resolved config and manifest), locked against a second writer and resumed when interrupted, so a
script that calls ``prune_and_reweight`` again reuses everything that is done. Under ``accelerate launch`` with
several processes, the main one computes the stages in a single-process child (``python -m diffprune.api``) while
the others wait; then every process reads the same cached result.
"""
from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from diffprune.config import validate_config
from diffprune.data import ImageDataset
from diffprune.export.coreset import Coreset, from_selection, load_source
from diffprune.export.user_data import CoresetError
from diffprune.io import atomic_save_npy, atomic_write_json, read_json
from diffprune.pipeline.config import RunConfig
from diffprune.pipeline.runner import Pipeline
from diffprune.runtime import launch_world, process_state

IMAGES = "images"  # the pixels, a memory map (export.user_data)
DATASET = "dataset.json"  # labels, class names and fingerprint beside them, for the processes of a launch
RUN_CONFIG = "run.json"  # what the stages' own process computes under a multi-process launch


def prune_and_reweight(
    dataset: Any,
    cache_dir: str | Path,
    *,
    method: str = "gaussian",
    ratio: float = 0.5,
    encoder: str = "efficientnet-lite0",
    reference: str | Path | None = None,
    reweight: Mapping[str, Any] | None = None,
    image_column: str | None = None,
    label_column: str | None = None,
    value_range: tuple[float, float] | None = None,
    resolution: int | None = None,
    seed: int = 0,
    progress: bool = True,
) -> Coreset:
    """Prune ``dataset`` to ``ratio`` of each class and weight the kept classes by DRO.

    Args:
        dataset: a ``datasets.Dataset`` (its table is read, not its transform), a map-style torch ``Dataset``,
            a dataset spec or an ``ImageDataset`` (see ``diffprune.coreset`` and ``export.user_data``).
        cache_dir: the folder that keeps every stage (``images/``, ``features/``, ``selection/``,
            ``reference/``, ``reweight/``); a second call with the same inputs reuses them.
        method, ratio: the selection (``diffprune select``'s methods; ratio kept per class).
        encoder: the frozen surrogate that embeds the images (``pixels`` needs no weights).
        reference: the DRO reference, a diffusers model folder or hub id modelling the same images; None: one
            is trained on the whole dataset with the proxy's recipe and budget (DoReMi's setting).
        reweight: fields of the ``reweight`` config section (``ReweightConfig``), e.g.
            ``{"steps": 500, "batch_size": 64, "proxy_preset": "ddpm-tiny"}``.
        image_column, label_column, value_range, resolution: how to read ``dataset`` (``read_dataset``).
        seed: of the selection, the proxy and a trained reference.
        progress: show progress bars and the stage lines.

    Returns:
        The ``Coreset``: ``class_weights`` ({class: a_k}), ``sampler()`` / ``distributed_sampler()`` drawing
        class k with share a_k, ``loss_weights`` for uniform sampling instead, ``subset(dataset)``.
    """
    folder = Path(cache_dir).expanduser().resolve()
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._+-]*", folder.name):
        raise CoresetError(f"cache_dir '{folder}': its name may hold letters, digits and . _ + - only; rename it")
    rw = {**(reweight or {}), **({"reference": str(reference)} if reference is not None else {})}
    cfg = {"name": folder.name, "runs_dir": str(folder.parent), "seed": seed, "embed": {"encoder": encoder},
           "select": {"ratio": ratio}, "reweight": rw, "arms": [{"method": method, "reweight": True}]}
    read = {"image_column": image_column, "label_column": label_column, "value_range": value_range,
            "resolution": resolution, "cache_dir": folder / IMAGES, "progress": progress}
    rank, world = launch_world()
    if world == 1:
        return _coreset(cfg, _labelled(load_source(dataset, **read)), dataset, progress)
    # under `accelerate launch` the stages run once, in a process of their own, while the others wait
    if rank == 0:
        _share(_labelled(load_source(dataset, **read)), folder / IMAGES)
        atomic_write_json(folder / RUN_CONFIG, {"config": cfg, "progress": progress})
        done = subprocess.run([sys.executable, "-m", "diffprune.api", str(folder)], env=_single_process_env())
        if done.returncode:
            raise CoresetError(f"computing the stages in '{folder}' failed (exit status {done.returncode}, see "
                               "above); fix the cause and run again (finished stages are kept)")
    process_state().wait_for_everyone()
    return _coreset(cfg, _shared(folder / IMAGES), dataset, progress)


def _labelled(data: ImageDataset) -> ImageDataset:
    if data.labels is None or data.num_classes < 2:
        raise CoresetError(f"the dataset has {data.num_classes} classes; DRO weights classes, so it needs a label "
                           "column with at least 2 (pass label_column=)")
    return data


def _coreset(config: dict[str, Any], data: ImageDataset, source: Any, progress: bool) -> Coreset:
    """Select and reweight through the pipeline's stages (cached ones are loaded), as a ``Coreset``."""
    cfg = validate_config(RunConfig, config)
    pipe = Pipeline(cfg, progress=progress, dataset=data)
    pipe.console.quiet = not progress
    arm = cfg.arms[0]
    selection, _ = pipe.select(arm)
    weights, _ = pipe.reweight(arm)
    return from_selection(data, selection, weights, source=None if isinstance(source, str) else source)


def _share(data: ImageDataset, folder: Path) -> None:
    """Leave ``data`` in ``folder`` (``images.npy`` and ``dataset.json``) for the other processes."""
    pixels = folder / "images.npy"
    if Path(getattr(data.images, "filename", None) or "") != pixels:  # not already that memory map
        folder.mkdir(parents=True, exist_ok=True)
        atomic_save_npy(pixels, np.asarray(data.images))
    atomic_write_json(folder / DATASET, {"labels": data.labels.tolist(), "class_names": data.class_names,
                                         "name": data.name, "fingerprint": data.fingerprint})


def _shared(folder: Path) -> ImageDataset:
    meta = read_json(folder / DATASET)
    return ImageDataset(np.load(folder / "images.npy", mmap_mode="r"), np.asarray(meta["labels"]),
                        meta["class_names"], name=meta["name"], fingerprint=meta["fingerprint"])


def _single_process_env() -> dict[str, str]:
    """This environment without the launcher's process-group variables (the precision stays)."""
    group = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "GROUP_RANK", "ROLE_RANK", "MASTER_ADDR",
             "MASTER_PORT", "ACCELERATE_NUM_PROCESSES")
    return {k: v for k, v in os.environ.items() if k not in group and not k.startswith("TORCHELASTIC_")}


def main(folder: str) -> None:
    """``python -m diffprune.api FOLDER``: the stages of ``FOLDER/run.json`` on ``FOLDER/images``, one process."""
    spec = read_json(Path(folder) / RUN_CONFIG)
    _coreset(spec["config"], _shared(Path(folder) / IMAGES), None, spec["progress"])


if __name__ == "__main__":
    main(sys.argv[1])
