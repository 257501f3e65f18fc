"""One download-and-load policy for Hugging Face hub weights: safetensors only, never pickle by default.

``snapshot(repo_id, patterns)`` downloads the configs and safetensors weights of a hub repo (nothing else: no
pickled ``.bin``, no ``.ckpt``, no ONNX copies). ``from_pretrained(cls, path)`` loads a diffusers/transformers
class from a local directory, refusing pickled weights. Old repos that ship only ``.bin`` weights work when the
user opts in with ``DIFFPRUNE_ALLOW_PICKLE_WEIGHTS=1``: then the ``.bin`` twins of the wanted files are fetched
and diffusers reads them with ``torch.load(weights_only=True)``.

Every failure (offline, firewall, missing or gated repo, a broken directory) is one line of the caller's error
class, naming the repo or directory and what to do.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from diffprune.io import env_flag

PICKLE_ENV = "DIFFPRUNE_ALLOW_PICKLE_WEIGHTS"
PICKLE_HINT = ("diffprune loads safetensors weights only; convert the weights to safetensors, or allow pickled "
               f"weights (read with torch.load(weights_only=True)) with {PICKLE_ENV}=1")
# what a single-model diffusers repo needs: its config(s) and safetensors weights
MODEL_PATTERNS = ("*.json", "*.safetensors")


def allow_pickle_weights() -> bool:
    """Whether the user allowed pickled ``.bin`` weights (``DIFFPRUNE_ALLOW_PICKLE_WEIGHTS=1``)."""
    return env_flag(PICKLE_ENV)


def has_safetensors(directory: Path) -> bool:
    """Whether ``directory`` itself (not its subfolders) holds ``*.safetensors`` weights."""
    return any(Path(directory).glob("*.safetensors"))


def is_hub_id(spec: str) -> bool:
    """``owner/name`` (one slash, not a relative or absolute path)."""
    return spec.count("/") == 1 and not spec.startswith((".", "/", "~"))


def snapshot(repo_id: str, patterns: tuple[str, ...] | list[str] = MODEL_PATTERNS, *,
             error: type[Exception] = ValueError, what: str = "hub model") -> Path:
    """The local folder of ``repo_id``'s files matching ``patterns`` (downloaded once, then the hub cache).

    ``patterns`` name configs and ``.safetensors`` weights; with ``DIFFPRUNE_ALLOW_PICKLE_WEIGHTS=1`` and no
    safetensors in the repo, the same patterns with ``.bin`` are fetched instead. Raises ``error`` (one line)
    when ``repo_id`` is not a hub id or the download fails.
    """
    if not is_hub_id(repo_id):
        raise error(f"{repo_id!r} is neither an existing directory nor a hub id like 'owner/name' ({what})")
    from huggingface_hub import snapshot_download

    try:
        local = Path(snapshot_download(repo_id, allow_patterns=list(patterns)))
        if not any(local.rglob("*.safetensors")) and allow_pickle_weights():  # an old repo with .bin only
            pickled = [p.replace(".safetensors", ".bin") for p in patterns if p.endswith(".safetensors")]
            local = Path(snapshot_download(repo_id, allow_patterns=[*patterns, *pickled]))
    except Exception as e:  # offline, firewall, missing repo, gated repo: one clear message
        offline = env_flag("HF_HUB_OFFLINE")
        why = "HF_HUB_OFFLINE is set and it is not in the local cache" if offline else type(e).__name__
        raise error(
            f"could not fetch {what} {repo_id!r} from the Hugging Face hub ({why}); download it once with internet "
            f"access (unset HF_HUB_OFFLINE), or pass a local diffusers directory instead"
        ) from None
    return local


def check_weights(directory: Path, error: type[Exception], what: str = "model") -> None:
    """Raise ``error`` unless ``directory`` holds safetensors weights (or pickles are explicitly allowed)."""
    if not has_safetensors(directory) and not allow_pickle_weights():
        raise error(f"{directory} (a {what}) has no .safetensors weights; {PICKLE_HINT}")


def from_pretrained(cls: Any, directory: Path, error: type[Exception], what: str | None = None) -> Any:
    """``cls.from_pretrained(directory)`` under the policy above; any failure becomes one ``error`` line."""
    what = what or cls.__name__
    directory = Path(directory)
    check_weights(directory, error, what)
    try:
        return cls.from_pretrained(directory, use_safetensors=has_safetensors(directory) or None)
    except (OSError, ValueError, TypeError) as e:
        raise error(f"could not load a {what} from {directory}: {e}") from None


__all__ = ["MODEL_PATTERNS", "PICKLE_ENV", "PICKLE_HINT", "allow_pickle_weights", "check_weights",
           "from_pretrained", "has_safetensors", "is_hub_id", "snapshot"]
