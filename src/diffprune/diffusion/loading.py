"""Save and load diffusion models in diffusers format (safetensors + config JSON, never pickle).

Accepted by ``load_model``:
- a diffprune train directory (``<dir>/model/config.json``),
- a model directory (``config.json`` + weights, scheduler in ``scheduler/`` or ``scheduler_config.json``),
- a diffusers pipeline directory (``model_index.json`` with ``unet/`` or ``transformer/``, and ``scheduler/``),
- a Hugging Face hub id such as ``google/ddpm-cifar10-32`` or ``facebook/DiT-XL-2-256`` (downloaded on first use;
  with ``HF_HUB_OFFLINE=1`` only a cached copy works).

The model class comes from ``config.json``'s ``_class_name``: ``UNet2DModel``; ``DiT`` (diffprune's); diffusers'
``DiTTransformer2DModel`` (or the legacy ``Transformer2DModel`` with ``norm_type="ada_norm_zero"``, as in
``facebook/DiT-XL-2-256``), converted to diffprune's ``DiT`` with identical outputs; ``ClassPromptUNet``
(``diffprune.diffusion.sd``).

Weights are read from safetensors only. Older hub repos that ship only pickled ``.bin`` weights load when the user
allows it with ``DIFFPRUNE_ALLOW_PICKLE_WEIGHTS=1`` (the policy of ``diffprune.hub``; diffusers then reads them with
``torch.load(weights_only=True)``).
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
from diffusers.models.modeling_utils import ModelMixin

from diffprune import hub
from diffprune.diffusion.dit import DiT, dit_from_diffusers
from diffprune.diffusion.models import ModelError, create_scheduler
from diffprune.io import atomic_path

META_FILE = "diffprune.json"


def save_model(path: str | os.PathLike, model: ModelMixin, scheduler: DDPMScheduler,
               meta: Mapping[str, Any] | None = None) -> Path:
    """Write ``path`` atomically: ``save_pretrained`` of ``model`` (safetensors), ``scheduler/`` and
    ``diffprune.json`` (``meta``). ``UNet2DModel.from_pretrained(path)`` (``DiT.from_pretrained``) and
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


def load_model(path_or_hub: str | os.PathLike, device: str | None = None) -> tuple[ModelMixin, DDPMScheduler]:
    """Load ``(model, DDPMScheduler)`` in eval mode from a directory or hub id (see module doc); the model is a
    ``UNet2DModel``, a ``DiT`` or a ``ClassPromptUNet``.

    A directory without a scheduler config gets its preset family's schedule (``create_scheduler``): DDPM's
    for a UNet, the DiT presets' for a DiT.
    """
    path = Path(path_or_hub)
    if not path.exists():
        path = hub.snapshot(str(path_or_hub), hub.MODEL_PATTERNS, error=ModelError, what="hub model")
    if not path.is_dir():
        raise ModelError(f"{path} is not a directory; pass a diffusers model directory, a train dir or a hub id")
    model_dir, sched_dirs = _locate(_model_dir(path), path)
    model = _load_weights(model_dir)
    scheduler = None
    for d in sched_dirs:
        if (d / "scheduler_config.json").exists():
            scheduler = DDPMScheduler.from_pretrained(d)
            break
    if scheduler is None:
        scheduler = create_scheduler("dit-xl-2" if isinstance(model, DiT) else "ddpm-cifar10")
    model.eval()
    if device is not None:
        model.to(device)
    return model, scheduler


_PIPELINE_MODELS = ("unet", "transformer")  # the denoiser's folder in a diffusers pipeline


def _locate(root: Path, given: Path) -> tuple[Path, list[Path]]:
    """(the model's folder, the folders that may hold its scheduler config)."""
    if (root / "model_index.json").exists():
        for sub in _PIPELINE_MODELS:
            if (root / sub / "config.json").exists():
                return root / sub, [root / "scheduler"]
    if (root / "config.json").exists():
        return root, [root / "scheduler", root]
    raise ModelError(
        f"{given} holds no diffusers model (expected config.json, model/config.json or model_index.json + "
        f"unet/ or transformer/)"
    )


def _load_weights(model_dir: Path) -> ModelMixin:
    """The model of ``model_dir``, its class chosen by ``config.json``'s ``_class_name``."""
    config = json.loads((model_dir / "config.json").read_text(encoding="utf-8"))
    name = config.get("_class_name", "UNet2DModel")
    is_diffusers_dit = name == "DiTTransformer2DModel" or (
        name == "Transformer2DModel" and config.get("norm_type") == "ada_norm_zero")
    if name == "UNet2DModel":
        cls = UNet2DModel
    elif name == "DiT":
        cls = DiT
    elif is_diffusers_dit:
        from diffusers import DiTTransformer2DModel as cls
    elif name == "ClassPromptUNet":
        cls = _class_prompt_unet_class()
    else:
        raise ModelError(f"{model_dir} holds a {name}; load_model reads UNet2DModel, DiT, DiTTransformer2DModel "
                         f"(or a DiT Transformer2DModel) and ClassPromptUNet models")
    model = hub.from_pretrained(cls, model_dir, ModelError, what=name)
    return dit_from_diffusers(model) if is_diffusers_dit else model


def _class_prompt_unet_class() -> type:
    try:  # imported here so that a broken Stable Diffusion install fails only the folders that need it
        from diffprune.diffusion.sd import ClassPromptUNet
    except ImportError as e:
        raise ModelError(f"this model is a ClassPromptUNet, but diffprune.diffusion.sd does not import: {e}") from None
    return ClassPromptUNet


def _model_dir(path: Path) -> Path:
    """A diffprune train dir keeps its exported model in ``model/``."""
    return path / "model" if (path / "model" / "config.json").exists() else path
