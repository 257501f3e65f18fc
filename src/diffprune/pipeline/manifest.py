"""Stage directories: resolved config + manifest beside the outputs, and cache hits.

A stage directory is complete when its ``manifest.json`` exists, records the same config hash and input
fingerprints as the current request, and the checksums it records of the stage's outputs still match the
files: the manifest is written last (atomically), so a crashed stage is never mistaken for a finished one,
and a cached array damaged since (a NaN written into ``features.npy``) is recomputed, not reused.

Fields that cannot change a result (``NON_RESULT_FIELDS``, e.g. ``checkpoint_every``) are left out of the
config hash, so changing them keeps the cache.
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

from diffprune.io import atomic_write_json, atomic_write_yaml, config_hash, file_checksum, read_json

NON_RESULT_FIELDS = ("checkpoint_every",)
_checksums: dict[tuple[str, int, int], str] = {}  # (path, size, mtime_ns) -> checksum, per process

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
        return config_hash({k: v for k, v in dict(self.config).items() if k not in NON_RESULT_FIELDS})

    @property
    def manifest_path(self) -> Path:
        return self.path / "manifest.json"

    def manifest(self) -> dict[str, Any] | None:
        try:
            return read_json(self.manifest_path)
        except (FileNotFoundError, ValueError):
            return None

    def _matches(self, m: Mapping[str, Any] | None) -> bool:
        return bool(m) and m.get("config_hash") == self.config_hash and m.get("inputs") == dict(self.inputs)

    def is_complete(self) -> bool:
        m = self.manifest()
        return self._matches(m) and not self.damaged_outputs(m)

    def damaged_outputs(self, manifest: Mapping[str, Any] | None = None) -> list[str]:
        """The outputs whose checksum differs from the one the manifest recorded (or that are missing)."""
        m = manifest if manifest is not None else (self.manifest() or {})
        return [rel for rel, expected in (m.get("outputs") or {}).items() if _checksum(self.path / rel) != expected]

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
        return same and not self._matches(self.manifest())

    def begin(self) -> "StageDir":
        """Create the folder and record the resolved config and this attempt.

        The previous manifest stays until ``finish`` replaces it: a forced recompute that fails leaves the old
        result valid as long as its recorded output checksums still match the files."""
        self.path.mkdir(parents=True, exist_ok=True)
        atomic_write_yaml(self.path / "config.yaml", dict(self.config))
        atomic_write_json(self.attempt_path, {"config_hash": self.config_hash, "inputs": dict(self.inputs)})
        self._t0 = time.perf_counter()
        self._started = _dt.datetime.now(_dt.timezone.utc).isoformat()
        return self

    def finish(self, fingerprint: str = "", outputs: tuple[str, ...] = (), **extra: Any) -> dict[str, Any]:
        """Write ``manifest.json`` (last, atomically). ``fingerprint`` identifies this stage's output;
        ``outputs`` (paths relative to the folder) get a checksum that ``is_complete`` verifies before reuse."""
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
            "outputs": {rel: _checksum(self.path / rel) for rel in outputs},
            **extra,
        }
        atomic_write_json(self.manifest_path, manifest)
        return manifest


def _checksum(path: Path) -> str:
    """``file_checksum`` of ``path``, memoised per process by size and mtime ("missing" when absent)."""
    try:
        st = path.stat()
    except OSError:
        return "missing"
    key = (str(path), st.st_size, st.st_mtime_ns)
    if key not in _checksums:
        _checksums[key] = file_checksum(path)
    return _checksums[key]
