"""The whole method from Python, on a user's own dataset: embed -> select -> reweight (Group DRO against a given
or trained reference) -> a ``Coreset`` with class weights, its samplers and its loss weights.

The stages are ``diffprune run``'s own (``pipeline.Pipeline``): each is cached in the folder the caller names
(with its resolved config and manifest), locked against a second writer and resumed when interrupted, so a
script that calls ``prune_and_reweight`` again reuses everything that is done.
"""
from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from diffprune.export.coreset import Coreset, from_selection, load_source
from diffprune.export.user_data import CoresetError


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
    from diffprune.pipeline import Pipeline, RunConfig
    from diffprune.config import validate_config

    folder = Path(cache_dir).expanduser().resolve()
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._+-]*", folder.name):
        raise CoresetError(f"cache_dir '{folder}': its name may hold letters, digits and . _ + - only; rename it")
    data = load_source(dataset, image_column=image_column, label_column=label_column, value_range=value_range,
                       resolution=resolution, cache_dir=folder / "images", progress=progress)
    if data.labels is None or data.num_classes < 2:
        raise CoresetError(f"the dataset has {data.num_classes} classes; DRO weights classes, so it needs a label "
                           "column with at least 2 (pass label_column=)")
    rw = {**(reweight or {}), **({"reference": str(reference)} if reference is not None else {})}
    cfg = validate_config(RunConfig, {
        "name": folder.name, "runs_dir": str(folder.parent), "seed": seed, "embed": {"encoder": encoder},
        "select": {"ratio": ratio}, "reweight": rw, "arms": [{"method": method, "reweight": True}]})
    pipe = Pipeline(cfg, progress=progress, dataset=data)
    if not progress:
        pipe.console.quiet = True
    arm = cfg.arms[0]
    selection, _ = pipe.select(arm)
    weights, _ = pipe.reweight(arm)
    return from_selection(data, selection, weights, source=None if isinstance(dataset, str) else dataset)
