"""The reference model of the DRO stage: a given one (folder, checkpoint or hub id) or one trained here.

``prepare_reference`` always returns a folder that ``diffprune.diffusion.load_model`` reads offline, so the
DRO run (and any rerun) does not touch the network again.
"""
from __future__ import annotations

import logging
from pathlib import Path

from diffprune.data import ImageDataset
from diffprune.diffusion import TrainConfig, load_model, save_model, train
from diffprune.reweighting.checks import check_dataset, check_reference
from diffprune.reweighting.config import ReweightConfig
from diffprune.reweighting.errors import ReweightError

logger = logging.getLogger("diffprune.reweighting")

MODEL_DIR = "model"


def _is_diffusers_folder(path: Path) -> bool:
    return path.is_dir() and (path / "config.json").is_file()


def reference_train_config(config: ReweightConfig, dataset: ImageDataset, seed: int | None = None) -> TrainConfig:
    """The ``diffusion.TrainConfig`` of a reference trained on ``dataset`` with uniform class weights:
    ``reference_preset`` (default: the proxy's preset) with its recipe (lr, warm-up, EMA decay) and EMA warm-up,
    ``reference_steps`` steps (default: the proxy's ``steps``), the proxy's batch size, and ``seed`` (default:
    the proxy's). Unset, proxy and reference share architecture and budget, as in DoReMi. The trainer sizes
    the model for the dataset (resolution, channels)."""
    preset = config.reference_preset or config.proxy_preset
    overrides = dict(config.model_overrides) if preset == config.proxy_preset else {}
    return TrainConfig(
        preset=preset,
        model_overrides=overrides,
        steps=config.reference_budget,
        batch_size=config.batch_size,
        seed=config.seed if seed is None else seed,
        ema_warmup=True,  # a constant decay keeps decay**steps of the random initialisation in short runs
        checkpoint_every=config.checkpoint_every,
    )


def reference_setting(config: ReweightConfig, reference_params: int | None, proxy_params: int) -> dict:
    """How proxy and reference relate, for the summary and the report: ``doremi`` when a trained reference
    shares the proxy's preset and budget, else what differs (a given pre-trained reference, another preset,
    another budget), with both parameter counts."""
    notes = []
    if config.reference is not None:
        notes.append(f"pre-trained reference {config.reference}")
    else:
        if (config.reference_preset or config.proxy_preset) != config.proxy_preset:
            notes.append(f"reference preset {config.reference_preset} != proxy preset {config.proxy_preset}")
        if config.reference_budget != config.steps:
            notes.append(f"reference trained {config.reference_budget} steps, proxy {config.steps}")
    if reference_params is not None and reference_params != proxy_params:
        notes.append(f"reference {reference_params:,} parameters, proxy {proxy_params:,}")
    return {"setting": "doremi" if not notes else "differs", "notes": notes,
            "reference_params": reference_params, "proxy_params": proxy_params}


def prepare_reference(
    config: ReweightConfig, dataset: ImageDataset, out_dir: str | Path, progress: bool = True, null: bool = False
) -> Path:
    """Resolve or train the reference model; return a diffusers model folder.

    Args:
        config: the reweight section. ``config.reference`` (a local diffusers folder, a diffprune checkpoint or
            a hub id) is loaded with ``diffusion.load_model`` and checked against the dataset; a folder is
            returned as is, anything else is saved as a diffusers folder ``out_dir/model``. Without a
            reference, one is trained on ``dataset`` with uniform weights by ``diffusion.train`` in
            ``out_dir`` (resumable: an interrupted call continues).
        dataset: the data the reference must model (its resolution and channels are checked).
        out_dir: the stage folder (``runs/<name>/reference``).
        progress: show progress bars.
        null: the null control's second reference instead: ``config.null_reference``, or one trained with
            ``config.null_reference_seed`` (same recipe otherwise).
    """
    out_dir = Path(out_dir)
    source = config.null_reference if null else config.reference
    if source is not None:
        model, scheduler = load_model(source)
        check_reference(model, scheduler, dataset, source)
        local = Path(source).expanduser()
        if _is_diffusers_folder(local):
            return local.resolve()
        target = save_model(out_dir / MODEL_DIR, model, scheduler, meta={"source": str(source)})
        logger.info("reference %s saved as %s", source, target)
        return target

    check_dataset(dataset)
    seed = config.null_reference_seed if null else None
    summary = train(reference_train_config(config, dataset, seed=seed), dataset, out_dir, class_weights=None,
                    resume=True, progress=progress)
    logger.info("reference trained: %s", summary)
    target = out_dir / MODEL_DIR
    if not _is_diffusers_folder(target):
        raise ReweightError(f"reference training finished but wrote no model folder at '{target}'")
    return target
