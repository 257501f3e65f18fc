"""Loading weight files safely, and the message users see when a download is impossible."""
from __future__ import annotations

from pathlib import Path

import torch

from diffprune.encoders.base import EncoderError


def load_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """A state dict from ``.safetensors`` or a torch file, never unpickling arbitrary objects."""
    p = Path(path)
    if not p.is_file():
        raise EncoderError(f"weights file not found: {p}")
    if p.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(p))
    try:
        state = torch.load(str(p), map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - any unpickling failure gets the same advice
        raise EncoderError(f"could not read weights from {p} as a state dict ({type(e).__name__}: {e})") from None
    for key in ("state_dict", "model", "module"):
        if isinstance(state, dict) and key in state and isinstance(state[key], dict):
            state = state[key]
    if not isinstance(state, dict):
        raise EncoderError(f"{p} does not hold a state dict (got {type(state).__name__})")
    return {k.removeprefix("module."): v for k, v in state.items()}


def download_failed(encoder: str, url: str, error: Exception, cache_hint: str | None = None) -> EncoderError:
    """The error raised when weights cannot be downloaded (offline machine, firewall, ...)."""
    where = f" and put it at {cache_hint}" if cache_hint else ""
    return EncoderError(
        f"could not download the weights of {encoder!r} ({type(error).__name__}: {error}). "
        f"Fetch {url}{where}, or pass weights=PATH (encoder.weights in the config)"
    )


def torch_hub_checkpoint_path(url: str) -> Path:
    """Where ``torch.hub.load_state_dict_from_url`` caches ``url``."""
    return Path(torch.hub.get_dir()) / "checkpoints" / Path(url).name
