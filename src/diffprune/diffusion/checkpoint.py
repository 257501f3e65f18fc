"""The trainer's checkpoints: ``state/`` (accelerate state, EMA, trainer state) and the exported ``model/``.

``state/`` is written into ``.state.tmp`` and swapped in atomically; its ``trainer_state.json`` holds the step
(the data position), the EMA update count, the metrics line in progress and the training clock, and the
trajectory hash that a resume must match (only ``_RESUME_MUTABLE`` fields may change between runs).
"""
from __future__ import annotations

import errno
import json
import os
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from accelerate import Accelerator
from diffusers import DDPMScheduler
from safetensors.torch import load_file, save_file

from diffprune.data import ImageDataset
from diffprune.diffusion.batches import latent_meta
from diffprune.diffusion.config import _RESUME_MUTABLE, TrainConfig, TrainError
from diffprune.diffusion.ema import EMA
from diffprune.diffusion.loading import save_model
from diffprune.io import DiskSpaceError, atomic_write_json, config_hash

STATE_FILE = "trainer_state.json"
EMA_FILE = "ema.safetensors"


def checkpoint_step(out_dir: str | os.PathLike) -> int | None:
    """The step of the checkpoint in ``out_dir/state`` (None when there is none or it is unreadable)."""
    try:
        return int(json.loads((Path(out_dir) / "state" / STATE_FILE).read_text())["step"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def trajectory_hash(cfg: TrainConfig, dataset: ImageDataset, class_weights: Mapping[str, float] | None) -> str:
    """What a resume must match: the config less its resume-mutable fields, the data, the class weights."""
    fixed = {k: v for k, v in cfg.model_dump(mode="json").items() if k not in _RESUME_MUTABLE}
    weights = None if class_weights is None else {k: float(v) for k, v in sorted(class_weights.items())}
    return config_hash({"config": fixed, "data": dataset.fingerprint, "class_weights": weights})


def load_checkpoint(accelerator: Accelerator, ema: EMA, state_dir: Path, trajectory_hash: str) -> dict[str, Any]:
    """Restore ``state_dir`` (written by ``save_checkpoint``) into the accelerator and EMA; its trainer state.

    A damaged checkpoint (truncated safetensors, corrupt JSON, a pickle that weights-only loading refuses)
    raises ``TrainError`` naming the file and how to start over, instead of the library's bare message."""
    try:
        saved = json.loads((state_dir / STATE_FILE).read_text())
    except (ValueError, UnicodeDecodeError) as e:
        raise TrainError(f"checkpoint file {state_dir / STATE_FILE} is corrupt ({e}); delete {state_dir} to "
                         f"restart this training from step 0, or rerun with --force") from None
    if saved.get("trajectory_hash") != trajectory_hash:
        raise TrainError(
            f"{state_dir} was written with a different config or dataset (only {sorted(_RESUME_MUTABLE)} may "
            f"change on resume); saved config: {saved.get('config')}"
        )
    try:
        accelerator.load_state(str(state_dir))
        ema.load_state_dict(load_file(state_dir / EMA_FILE, device="cpu"), saved["ema_updates"])  # copied to device
    except Exception as e:  # safetensors, pickle refusal, torch's RuntimeError on a short file, KeyError
        first = " ".join(str(e).split())[:200] or type(e).__name__
        raise TrainError(f"checkpoint {state_dir} cannot be loaded ({type(e).__name__}: {first}); delete "
                         f"{state_dir} to restart this training from step 0, or rerun with --force") from None
    return saved


def save_checkpoint(accelerator: Accelerator, ema: EMA, cfg: TrainConfig, dataset: ImageDataset,
                     out_dir: Path, step: int, trajectory_hash: str, scheduler: DDPMScheduler,
                     log_window: tuple[int, float] = (0, 0.0), train_seconds: float = 0.0,
                     hook: Any = None) -> None:
    """accelerate ``save_state`` + EMA + trainer state into ``state.tmp``, then swapped onto ``state``;
    and the EMA UNet exported to ``model/``. Every process takes part (each saves its own RNG state);
    ``hook`` saves its state into the same folder (main process).

    ``log_window``: first step and loss sum of the metrics line in progress, restored on resume. A failed
    save (a full disk) removes ``.state.tmp`` and says how much space is free."""
    state_dir, tmp = out_dir / "state", out_dir / ".state.tmp"
    if accelerator.is_main_process and tmp.exists():
        shutil.rmtree(tmp)
    accelerator.wait_for_everyone()
    try:
        accelerator.save_state(str(tmp))
        if accelerator.is_main_process:
            save_file({k: v.contiguous() for k, v in ema.state_dict().items()}, tmp / EMA_FILE)
            atomic_write_json(tmp / STATE_FILE, {
                "step": step, "ema_updates": ema.updates, "images_seen": step * cfg.batch_size,
                "trajectory_hash": trajectory_hash, "config": cfg.model_dump(mode="json"),
                "dataset_fingerprint": dataset.fingerprint, "processes": accelerator.num_processes,
                "log_window_start": int(log_window[0]), "log_window_loss": float(log_window[1]),
                "train_seconds": train_seconds,
            })
            if hook is not None:
                hook.save(tmp)
    except Exception as e:
        shutil.rmtree(tmp, ignore_errors=True)
        free = shutil.disk_usage(out_dir).free
        if isinstance(e, OSError) or free < (64 << 20):  # torch reports a full disk as "unexpected pos N vs M"
            raise DiskSpaceError(errno.ENOSPC, f"cannot save the checkpoint of step {step} in {out_dir} "
                                 f"({type(e).__name__}: {' '.join(str(e).split())[:120]}; {free / 1e6:.1f} MB "
                                 f"free); free some space or move runs_dir (--set runs_dir=...), then rerun "
                                 f"to resume from the last checkpoint", str(tmp)) from e
        raise
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        old = out_dir / ".state.old"
        shutil.rmtree(old, ignore_errors=True)
        if state_dir.exists():
            os.replace(state_dir, old)
        os.replace(tmp, state_dir)
        shutil.rmtree(old, ignore_errors=True)
        save_model(out_dir / "model", ema.module, scheduler, meta={
            "preset": cfg.preset, "steps": step, "images_seen": step * cfg.batch_size, "weights": "ema",
            "ema_decay": cfg.ema_decay, "class_names": list(dataset.class_names),
            "null_class_label": dataset.num_classes if cfg.conditional else None,
            "dataset_fingerprint": dataset.fingerprint, "latent": latent_meta(dataset),
        })
    accelerator.wait_for_everyone()
