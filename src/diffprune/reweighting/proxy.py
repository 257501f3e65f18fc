"""One DRO run: the proxy trained by ``diffusion.train`` with a ``DROHook`` against a frozen reference."""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch

from diffprune.data import ImageDataset
from diffprune.diffusion import TrainConfig, TrainingInterrupted, count_parameters, create_model, load_model, train
from diffprune.io import config_hash, hash_state_dict, read_json
from diffprune.reweighting.checkpoint import CheckpointMismatchError
from diffprune.reweighting.checks import check_reference, check_schedule
from diffprune.reweighting.config import ReweightConfig
from diffprune.reweighting.errors import DROInterrupted, ReweightError
from diffprune.reweighting.hook import DROHook, saved_identity
from diffprune.reweighting.reference import reference_setting

logger = logging.getLogger("diffprune.reweighting")

# Fields that do not change what one proxy run computes: its checkpoint stays valid when only these differ. The
# pipeline extends a finished stage for RESUME_MUTABLE only; a change of rounds reruns the stage, whose rounds
# then resume from their own checkpoints.
_RESUMABLE_FIELDS = ReweightConfig.RESUME_MUTABLE | {"rounds", "rounds_tol"}
PROXY_DIR = "proxy"  # the trainer's folder of the proxy run (state/ is its checkpoint) inside the stage folder


def build_proxy(config: ReweightConfig, dataset: ImageDataset) -> torch.nn.Module:
    """A fresh proxy of ``config.proxy_preset`` sized for the dataset, initialised from ``config.seed``."""
    overrides = {
        "sample_size": dataset.resolution,
        "in_channels": dataset.channels,
        "out_channels": dataset.channels,
        **config.model_overrides,
    }
    torch.manual_seed(config.seed)
    return create_model(config.proxy_preset, **overrides)


def _identity(config: ReweightConfig, dataset: ImageDataset, reference: torch.nn.Module) -> dict[str, Any]:
    """What a checkpoint must match to be resumed: the config (but ``_RESUMABLE_FIELDS``), the data and the
    reference's weights (a retrained or replaced reference invalidates the checkpoint)."""
    stable = config.model_dump(mode="json", exclude=set(_RESUMABLE_FIELDS))
    return {
        "config_hash": config_hash(stable),
        "dataset": dataset.fingerprint,
        "reference_weights": hash_state_dict(reference.state_dict()),
    }


def proxy_train_config(config: ReweightConfig) -> TrainConfig:
    """The ``diffusion.TrainConfig`` of the proxy: its preset and overrides, Adam at ``proxy_lr`` with
    ``proxy_warmup_steps`` of linear warm-up, ``grad_clip``, no flips (the null control pairs on the same x0),
    unconditional, one metrics line (and a cross-process stop check) per step."""
    return TrainConfig(preset=config.proxy_preset, model_overrides=dict(config.model_overrides), steps=config.steps,
                       batch_size=config.batch_size, lr=config.proxy_lr(), warmup_steps=config.proxy_warmup_steps(),
                       grad_clip=config.grad_clip, hflip=False, conditional=False, seed=config.seed, ema_warmup=True,
                       checkpoint_every=config.checkpoint_every, log_every=1, mixed_precision=config.mixed_precision)


def _check_resumable(state_dir: Path, identity: dict[str, Any], steps: int) -> None:
    trainer_state = state_dir / "trainer_state.json"
    if not trainer_state.is_file():
        return
    saved = saved_identity(state_dir) or {}
    diffs = [k for k in identity if saved.get(k) != identity[k]]
    if diffs:
        raise CheckpointMismatchError(
            f"the checkpoint in '{state_dir}' belongs to another run ({', '.join(diffs)} differ); "
            "delete that folder or write to another output folder to start afresh"
        )
    step = int(read_json(trainer_state)["step"])
    if step > steps:
        raise CheckpointMismatchError(
            f"the checkpoint in '{state_dir}' is at step {step}, beyond the requested {steps} steps; "
            "raise steps or write to another folder"
        )


def train_proxy(config: ReweightConfig, dataset: ImageDataset, reference_dir: str | Path, out_dir: Path,
                progress: bool, resume: bool):
    """One DRO run: the proxy trained by ``diffusion.train`` in ``out_dir/proxy`` with a ``DROHook`` against
    the reference in ``reference_dir``. Returns (the hook, with the run's final DRO state and log; the
    proxy/reference setting for the summary)."""
    reference, scheduler = load_model(str(reference_dir))
    check_reference(reference, scheduler, dataset, str(reference_dir))
    check_schedule(scheduler, config.proxy_preset, str(reference_dir))
    identity = _identity(config, dataset, reference)
    proxy_dir = Path(out_dir) / PROXY_DIR
    if resume:
        _check_resumable(proxy_dir / "state", identity, config.steps)
    hook = DROHook(config, dataset, reference, scheduler, identity)
    try:
        summary = train(proxy_train_config(config), dataset, proxy_dir, resume=resume, progress=progress,
                        step_hook=hook)
    except TrainingInterrupted:
        raise DROInterrupted(
            f"DRO stopped by a signal after step {len(hook.log.losses)}/{config.steps}; the checkpoint is in "
            f"'{proxy_dir / 'state'}'; rerun to continue"
        ) from None
    if not hook.log.update_steps:
        raise ReweightError(
            f"no DRO update happened: steps ({config.steps}) < update_every ({config.update_every}); "
            "raise steps or lower update_every"
        )
    setting = reference_setting(config, count_parameters(reference), int(summary["params"]))
    if setting["setting"] != "doremi":
        logger.info("proxy and reference differ from DoReMi's setting: %s", "; ".join(setting["notes"]))
    return hook, {"proxy_reference": setting, "processes": summary["processes"],
                  "mixed_precision": summary["mixed_precision"]}
