"""Save and load diffusion models in diffusers format (safetensors + config JSON, never pickle).

Accepted by ``load_model``:
- a diffprune train directory (``<dir>/model/config.json``),
- a diffusers UNet directory (``config.json`` + weights, scheduler in ``scheduler/`` or ``scheduler_config.json``),
- a diffusers pipeline directory (``model_index.json`` with ``unet/`` and ``scheduler/``),
- a Hugging Face hub id such as ``google/ddpm-cifar10-32`` (downloaded on first use; with ``HF_HUB_OFFLINE=1``
  only a cached copy works).
"""
from __future__ import annotations

import copy
import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from diffusers import DDPMScheduler, UNet2DModel

from diffprune.diffusion.models import ModelError, create_scheduler
from diffprune.io import atomic_path

META_FILE = "diffprune.json"


def save_model(path: str | os.PathLike, model: UNet2DModel, scheduler: DDPMScheduler,
               meta: Mapping[str, Any] | None = None) -> Path:
    """Write ``path`` atomically: ``save_pretrained`` of ``model`` (safetensors), ``scheduler/`` and
    ``diffprune.json`` (``meta``). ``UNet2DModel.from_pretrained(path)`` and
    ``DDPMScheduler.from_pretrained(path, subfolder="scheduler")`` load it; so does ``load_model(path)``."""
    if any(not t.is_contiguous() for t in model.state_dict().values()):  # e.g. channels_last training
        model = copy.deepcopy(model).to(memory_format=torch.contiguous_format)
    with atomic_path(path, is_dir=True) as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        scheduler.save_pretrained(tmp / "scheduler")
        if meta is not None:
            (tmp / META_FILE).write_text(json.dumps(dict(meta), indent=2) + "\n", encoding="utf-8")
    return Path(path)


def read_meta(path: str | os.PathLike) -> dict[str, Any]:
    """The ``diffprune.json`` written beside a saved model ({} for foreign models)."""
    p = _model_dir(Path(path)) if Path(path).is_dir() else Path(path)
    f = p / META_FILE
    return json.loads(f.read_text(encoding="utf-8")) if f.exists() else {}


def load_model(path_or_hub: str | os.PathLike, device: str | None = None) -> tuple[UNet2DModel, DDPMScheduler]:
    """Load ``(UNet2DModel, DDPMScheduler)`` in eval mode from a directory or hub id (see module doc).

    A directory without a scheduler config gets the original DDPM schedule (``create_scheduler``).
    """
    path = Path(path_or_hub)
    if not path.exists():
        path = _download(str(path_or_hub))
    if not path.is_dir():
        raise ModelError(f"{path} is not a directory; pass a diffusers model directory, a train dir or a hub id")
    root = _model_dir(path)
    if (root / "model_index.json").exists() and (root / "unet" / "config.json").exists():
        unet_dir, sched_dirs = root / "unet", [root / "scheduler"]
    elif (root / "config.json").exists():
        unet_dir, sched_dirs = root, [root / "scheduler", root]
    else:
        raise ModelError(
            f"{path} holds no diffusers model (expected config.json, model/config.json or model_index.json + unet/)"
        )
    try:
        model = UNet2DModel.from_pretrained(unet_dir, use_safetensors=_has_safetensors(unet_dir) or None)
    except (OSError, ValueError) as e:
        raise ModelError(f"could not load a UNet2DModel from {unet_dir}: {e}") from None
    scheduler = None
    for d in sched_dirs:
        if (d / "scheduler_config.json").exists():
            scheduler = DDPMScheduler.from_pretrained(d)
            break
    if scheduler is None:
        scheduler = create_scheduler("ddpm-cifar10")
    model.eval()
    if device is not None:
        model.to(device)
    return model, scheduler


def _model_dir(path: Path) -> Path:
    """A diffprune train dir keeps its exported model in ``model/``."""
    return path / "model" if (path / "model" / "config.json").exists() else path


def _has_safetensors(d: Path) -> bool:
    return any(d.glob("*.safetensors"))


def _download(repo_id: str) -> Path:
    if repo_id.count("/") != 1 or repo_id.startswith((".", "/")):
        raise ModelError(f"{repo_id!r} is neither an existing directory nor a hub id like 'google/ddpm-cifar10-32'")
    from huggingface_hub import snapshot_download

    try:
        local = snapshot_download(repo_id, allow_patterns=["*.json", "*.safetensors"])
        if not any(Path(local).rglob("*.safetensors")):  # older repos ship only pickled .bin weights
            local = snapshot_download(repo_id, allow_patterns=["*.json", "*.bin"])
    except Exception as e:  # network, offline mode, missing repo: one clear message
        offline = os.environ.get("HF_HUB_OFFLINE", "") not in ("", "0")
        hint = " (HF_HUB_OFFLINE is set and it is not in the local cache)" if offline else ""
        raise ModelError(
            f"could not fetch hub model {repo_id!r}{hint}: {type(e).__name__}; download it once with internet, "
            f"or pass a local diffusers directory"
        ) from None
    return Path(local)
