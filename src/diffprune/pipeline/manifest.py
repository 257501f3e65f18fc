"""Stage directories: resolved config + manifest beside the outputs, and cache hits.

A stage directory is complete when its ``manifest.json`` exists and records the same config hash and
input fingerprints as the current request: the manifest is written last (atomically), so a crashed stage
is never mistaken for a finished one.
"""
from __future__ import annotations

import datetime as _dt
import importlib.metadata
import platform
import socket
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from diffprune.io import atomic_write_json, atomic_write_yaml, config_hash, read_json

VERSIONED_PACKAGES = ("diffprune", "torch", "diffusers", "accelerate", "numpy", "scikit-learn", "torchmetrics")


def package_versions() -> dict[str, str]:
    out = {}
    for name in VERSIONED_PACKAGES:
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            pass
    out["python"] = platform.python_version()
    return out


def device_description() -> str:
    import torch

    if torch.cuda.is_available():
        n = torch.cuda.device_count()
        return f"{n}x {torch.cuda.get_device_name(0)}"
    return f"cpu ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads) on {socket.gethostname()}"


@dataclass
class StageDir:
    """One stage's output folder under ``runs/<name>/``.

    Use ``is_complete()`` to test for a cache hit, and ``finish()`` after the outputs are written.
    """

    path: Path
    stage: str
    config: Mapping[str, Any]
    inputs: Mapping[str, str] = field(default_factory=dict)
    _t0: float = field(default_factory=time.perf_counter, repr=False)
    _started: str = field(default_factory=lambda: _dt.datetime.now(_dt.timezone.utc).isoformat(), repr=False)

    def __post_init__(self) -> None:
        self.path = Path(self.path)

    @property
    def config_hash(self) -> str:
        return config_hash(dict(self.config))

    @property
    def manifest_path(self) -> Path:
        return self.path / "manifest.json"

    def manifest(self) -> dict[str, Any] | None:
        try:
            return read_json(self.manifest_path)
        except (FileNotFoundError, ValueError):
            return None

    def is_complete(self) -> bool:
        m = self.manifest()
        return bool(m) and m.get("config_hash") == self.config_hash and m.get("inputs") == dict(self.inputs)

    @property
    def attempt_path(self) -> Path:
        return self.path / ".attempt.json"

    def was_interrupted(self) -> bool:
        """True when an earlier attempt with this same config and inputs began here and never finished:
        its checkpoints may be resumed. A changed config or input means starting afresh."""
        try:
            attempt = read_json(self.attempt_path)
        except (FileNotFoundError, ValueError):
            return False
        same = attempt == {"config_hash": self.config_hash, "inputs": dict(self.inputs)}
        return same and not self.manifest_path.exists()

    def begin(self) -> "StageDir":
        """Create the folder, drop any stale manifest and record the resolved config and this attempt."""
        self.path.mkdir(parents=True, exist_ok=True)
        self.manifest_path.unlink(missing_ok=True)
        atomic_write_yaml(self.path / "config.yaml", dict(self.config))
        atomic_write_json(self.attempt_path, {"config_hash": self.config_hash, "inputs": dict(self.inputs)})
        self._t0 = time.perf_counter()
        self._started = _dt.datetime.now(_dt.timezone.utc).isoformat()
        return self

    def finish(self, fingerprint: str = "", **extra: Any) -> dict[str, Any]:
        """Write ``manifest.json`` (last, atomically). ``fingerprint`` identifies this stage's output."""
        manifest = {
            "stage": self.stage,
            "config_hash": self.config_hash,
            "inputs": dict(self.inputs),
            "fingerprint": fingerprint or self.config_hash,
            "seconds": round(time.perf_counter() - self._t0, 3),
            "started": self._started,
            "finished": _dt.datetime.now(_dt.timezone.utc).isoformat(),
            "device": device_description(),
            "versions": package_versions(),
            **extra,
        }
        atomic_write_json(self.manifest_path, manifest)
        return manifest
