"""The trainer's checkpoints: ``state/`` (accelerate state, EMA, trainer state) and the exported ``model/``.

``state/`` is written into ``.state.tmp`` and swapped in atomically; its ``trainer_state.json`` holds the step
(the data position), the EMA update count, the metrics line in progress and the training clock, the
trajectory hash that a resume must match (only ``_RESUME_MUTABLE`` fields may change between runs), and the
checksum of the ``model/`` exported at that step. ``model/`` is written before the state that says it is done.
"""
from __future__ import annotations

import errno
import json
import logging
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
from diffprune.io import (
    DiskSpaceError, atomic_write_json, config_hash, disk_full_error, faults, file_checksum, free_space,
    is_disk_full, sync_tree,
)

log = logging.getLogger("diffprune.train")

STATE_FILE = "trainer_state.json"
EMA_FILE = "ema.safetensors"
MODEL_DIR = "model"


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
    """accelerate ``save_state`` + EMA (+ ``hook``'s state, main process) into ``.state.tmp``; then the EMA
    UNet exported to ``model/`` (written and flushed to disk); then ``trainer_state.json``, which records the
    model's checksum, and only then ``.state.tmp`` swapped onto ``state``. Every process takes part (each saves
    its own RNG state).

    The order is the commit order: a kill at any point leaves ``state/`` at this step only once ``model/``
    holds this step's weights, so a resume that finds the final step done never keeps a stale model
    (``refresh_model`` checks the recorded checksum all the same). ``log_window``: first step and loss sum of
    the metrics line in progress, restored on resume. A failed save (a full or read-only disk) removes
    ``.state.tmp``, leaves ``state/`` at the previous checkpoint and says which path failed and what to do."""
    state_dir, tmp = out_dir / "state", out_dir / ".state.tmp"
    if accelerator.is_main_process and tmp.exists():
        shutil.rmtree(tmp)
    accelerator.wait_for_everyone()
    try:
        accelerator.save_state(str(tmp))
        if accelerator.is_main_process:
            save_file({k: v.contiguous() for k, v in ema.state_dict().items()}, tmp / EMA_FILE)
            if hook is not None:
                hook.save(tmp)
            export_model(ema, cfg, dataset, out_dir, step, scheduler)
            atomic_write_json(tmp / STATE_FILE, {
                "step": step, "ema_updates": ema.updates, "images_seen": step * cfg.batch_size,
                "trajectory_hash": trajectory_hash, "config": cfg.model_dump(mode="json"),
                "dataset_fingerprint": dataset.fingerprint, "processes": accelerator.num_processes,
                "log_window_start": int(log_window[0]), "log_window_loss": float(log_window[1]),
                "train_seconds": train_seconds, "model_checksum": model_checksum(out_dir / MODEL_DIR),
            })
    except Exception as e:
        raise _save_failure(e, tmp, out_dir, step) from e
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        _commit_state(tmp, state_dir, out_dir, step)
    accelerator.wait_for_everyone()


def export_model(ema: EMA, cfg: TrainConfig, dataset: ImageDataset, out_dir: Path, step: int,
                 scheduler: DDPMScheduler) -> Path:
    """The EMA model of ``step`` as a diffusers folder ``out_dir/model`` (atomic, flushed to disk)."""
    return save_model(out_dir / MODEL_DIR, ema.module, scheduler, meta={
        "preset": cfg.preset, "steps": step, "images_seen": step * cfg.batch_size, "weights": "ema",
        "ema_decay": cfg.ema_decay, "class_names": list(dataset.class_names),
        "null_class_label": dataset.num_classes if cfg.conditional else None,
        "dataset_fingerprint": dataset.fingerprint, "latent": latent_meta(dataset),
    })


def model_checksum(model_dir: Path) -> str | None:
    """A checksum of every file of an exported model folder (None when it has none)."""
    files = sorted(p for p in Path(model_dir).rglob("*") if p.is_file()) if Path(model_dir).is_dir() else []
    if not files:
        return None
    return config_hash({str(p.relative_to(model_dir)): file_checksum(p) for p in files})


def refresh_model(accelerator: Accelerator, ema: EMA, cfg: TrainConfig, dataset: ImageDataset, out_dir: Path,
                  saved: Mapping[str, Any], scheduler: DDPMScheduler) -> bool:
    """After a resume that had no step left to train: rewrite ``model/`` from the checkpoint's EMA (``ema``,
    as loaded) when it is not the model that checkpoint recorded (a save interrupted before the commit order
    was kept, or a model folder changed since). True when it was rewritten."""
    stale = False
    if accelerator.is_main_process:
        stale = saved.get("model_checksum") is None or model_checksum(out_dir / MODEL_DIR) != saved["model_checksum"]
        if stale:
            log.warning("%s is not the model of the checkpoint of step %s; rewriting it from %s",
                        out_dir / MODEL_DIR, saved["step"], out_dir / "state")
            try:
                export_model(ema, cfg, dataset, out_dir, int(saved["step"]), scheduler)
            except Exception as e:
                raise _save_failure(e, None, out_dir, int(saved["step"])) from e
    accelerator.wait_for_everyone()
    return stale


def _commit_state(tmp: Path, state_dir: Path, out_dir: Path, step: int) -> None:
    """Flush ``tmp`` to disk and swap it onto ``state_dir`` (one numbered write for the fault hook)."""
    try:
        write = faults.before_write(state_dir)
        sync_tree(tmp)
    except Exception as e:
        raise _save_failure(e, tmp, out_dir, step) from e
    old = out_dir / ".state.old"
    shutil.rmtree(old, ignore_errors=True)
    if state_dir.exists():
        os.replace(state_dir, old)
    os.replace(tmp, state_dir)
    shutil.rmtree(old, ignore_errors=True)
    faults.after_write(write, state_dir)


def _save_failure(e: Exception, tmp: Path | None, out_dir: Path, step: int) -> Exception:
    """The one-line error of a failed checkpoint save (``tmp`` removed): which path, the free space of its file
    system, what to do. Nothing already written is damaged: deleting files is never the advice."""
    full = is_disk_full(e) or shutil.disk_usage(out_dir).free < (64 << 20)  # before the cleanup frees space
    if tmp is not None:
        shutil.rmtree(tmp, ignore_errors=True)
    where = getattr(e, "filename", None) or out_dir / "state"  # the checkpoint being written
    if full or isinstance(e, DiskSpaceError):
        full_line = disk_full_error(where).strerror
        return DiskSpaceError(errno.ENOSPC, f"cannot save the checkpoint of step {step}: {full_line}", str(where))
    if isinstance(e, OSError) and e.errno in (errno.EROFS, errno.EACCES, errno.EPERM):
        return TrainError(
            f"cannot save the checkpoint of step {step}: {e.strerror or e} writing {where} ({free_space(where)}); "
            f"make {out_dir} writable (or move runs_dir: --set runs_dir=...), then run the same command to resume "
            f"from the last checkpoint (the stage is not finished)")
    return e
