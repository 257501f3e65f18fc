"""A trained arm as a diffusers pipeline folder (``DDPMPipeline`` / ``DDIMPipeline.from_pretrained``), and
``push`` of that folder to the Hugging Face hub when the user has a token."""
from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path

from diffprune.io import atomic_path, atomic_write_json, env_flag, hash_file, read_json

WEIGHTS = "diffusion_pytorch_model.safetensors"


class PipelineExportError(ValueError):
    """The model cannot become a diffusers pipeline folder, or cannot be pushed; the message says why."""


def pipeline_kind(model_dir: str | os.PathLike) -> str | None:
    """"DDPMPipeline" when ``model_dir`` (a diffprune ``model/``) is an unconditional pixel ``UNet2DModel``,
    else None (class-conditional, latent and DiT models need diffprune's ``load_model`` + ``generate``)."""
    model_dir = Path(model_dir)
    config = read_json(model_dir / "config.json")
    meta = read_json(model_dir / "diffprune.json") if (model_dir / "diffprune.json").is_file() else {}
    if config.get("_class_name") != "UNet2DModel" or config.get("num_class_embeds") or meta.get("latent"):
        return None
    return "DDPMPipeline"


def _link_or_copy(src: Path, dst: Path) -> None:
    try:
        os.link(src, dst)  # no second copy of the weights on disk
    except OSError:
        shutil.copy2(src, dst)


def write_pipeline(model_dir: str | os.PathLike, out_dir: str | os.PathLike) -> Path:
    """Write ``out_dir`` (atomically) as a diffusers pipeline folder of the model in ``model_dir``:
    ``model_index.json``, ``unet/`` (the weights, hard-linked when possible) and ``scheduler/``.
    ``DDPMPipeline.from_pretrained(out_dir)`` loads it, and so does ``DDIMPipeline.from_pretrained`` (which
    converts the scheduler to DDIM)."""
    from diffusers import __version__ as diffusers_version

    model_dir, out_dir = Path(model_dir), Path(out_dir)
    kind = pipeline_kind(model_dir)
    if kind is None:
        raise PipelineExportError(
            f"{model_dir} is a class-conditional, latent or DiT model, which no stock diffusers pipeline samples; "
            "load it with diffprune.diffusion.load_model and sample with `diffprune sample` "
            "(diffprune.diffusion.generate)")
    with atomic_path(out_dir, is_dir=True) as tmp:
        (tmp / "unet").mkdir()
        (tmp / "scheduler").mkdir()
        _link_or_copy(model_dir / "config.json", tmp / "unet" / "config.json")
        _link_or_copy(model_dir / WEIGHTS, tmp / "unet" / WEIGHTS)
        _link_or_copy(model_dir / "scheduler" / "scheduler_config.json", tmp / "scheduler" / "scheduler_config.json")
        index = {"_class_name": kind, "_diffusers_version": diffusers_version,
                 "scheduler": ["diffusers", "DDPMScheduler"], "unet": ["diffusers", "UNet2DModel"]}
        (tmp / "model_index.json").write_text(json.dumps(index, indent=2) + "\n", encoding="utf-8")
    return out_dir


def hub_token() -> str | None:
    """The user's Hugging Face token (``HF_TOKEN`` or ``huggingface-cli login``), or None."""
    from huggingface_hub import get_token

    return get_token()


def check_push() -> str:
    """The token to push with; refuses, before any network call, without one or with ``HF_HUB_OFFLINE=1``."""
    if env_flag("HF_HUB_OFFLINE"):
        raise PipelineExportError("HF_HUB_OFFLINE is set: pushing needs the network; unset it to push")
    token = hub_token()
    if not token:
        raise PipelineExportError("pushing to the hub needs a Hugging Face token: set HF_TOKEN or run "
                                  "`huggingface-cli login`")
    return token


def push(folder: str | os.PathLike, repo_id: str, private: bool = True) -> str:
    """Upload a pipeline folder to the hub repo ``repo_id`` (created if missing); returns its URL.

    Refuses, before any network call, without a token or with ``HF_HUB_OFFLINE=1``."""
    from huggingface_hub import HfApi

    folder = Path(folder)
    if not (folder / "model_index.json").is_file():
        raise PipelineExportError(f"{folder} is not a pipeline folder (no model_index.json); run `diffprune export` first")
    api = HfApi(token=check_push())
    api.create_repo(repo_id, private=private, exist_ok=True)
    api.upload_folder(folder_path=str(folder), repo_id=repo_id)
    return f"https://huggingface.co/{repo_id}"


def hub_repo_id(template: str, arm: str) -> str:
    """``train.hub_model_id`` for one arm: ``{arm}`` becomes the arm's label with characters the hub refuses
    in repository names (anything but letters, digits, ``.``, ``_``, ``-``) replaced by ``-``."""
    return template.replace("{arm}", re.sub(r"[^A-Za-z0-9._-]", "-", arm))


def push_trained(train_dir: str | os.PathLike, repo_id: str, private: bool = True) -> str | None:
    """``train.push_to_hub``: push ``train_dir/pipeline`` (written from ``model/`` if missing) to ``repo_id``
    unless ``train_dir/pushed.json`` records these weights already pushed there; returns the URL, or None
    when nothing was pushed. The record is written after the upload, so a failed push is retried next run."""
    train_dir = Path(train_dir)
    folder = train_dir / "pipeline"
    if not (folder / "model_index.json").is_file():
        write_pipeline(train_dir / "model", folder)
    record = {"repo_id": repo_id, "weights": hash_file(folder / "unet" / WEIGHTS)}
    marker = train_dir / "pushed.json"
    if marker.is_file() and {k: read_json(marker).get(k) for k in record} == record:
        return None
    url = push(folder, repo_id, private=private)
    atomic_write_json(marker, {**record, "url": url})
    return url
