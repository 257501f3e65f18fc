"""Stage directories: resolved config + manifest beside the outputs, and cache hits.

A stage directory is complete when its ``manifest.json`` exists, records the same config hash and input
fingerprints as the current request, and the checksums it records of the stage's outputs still match the
files: the manifest is written last (atomically), so a crashed stage is never mistaken for a finished one,
and a cached array damaged since (a NaN written into ``features.npy``) is recomputed, not reused.

Fields that cannot change a result (``NON_RESULT_FIELDS``, e.g. ``checkpoint_every``) are left out of the
config hash, so changing them keeps the cache.

Fields a stage may change on resume (``mutable``: a config's ``RESUME_MUTABLE``, e.g. ``steps``) are left out of
the *trajectory hash*: a finished or interrupted stage whose trajectory hash and inputs still match is
*extended* from its last checkpoint instead of recomputed (``status() == "extend"``), and its manifest keeps the
history of attempts (``attempts``; ``seconds`` is their total).
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
SUMMED_FIELDS = ("eval_seconds",)  # per-attempt costs whose manifest value is the total over attempts
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
    mutable: frozenset[str] = frozenset()  # fields that may change on resume (the config's RESUME_MUTABLE)
    resumable: bool = True  # False: the stage's checkpoint lies past the requested budget (it cannot be rewound)
    _t0: float = field(default_factory=time.perf_counter, repr=False)
    _history: list[dict[str, Any]] = field(default_factory=list, repr=False)  # earlier attempts being continued
    _started: str = field(default_factory=lambda: _dt.datetime.now(_dt.timezone.utc).isoformat(), repr=False)

    def __post_init__(self) -> None:
        self.path = Path(self.path)

    @property
    def config_hash(self) -> str:
        return config_hash({k: v for k, v in dict(self.config).items() if k not in NON_RESULT_FIELDS})

    @property
    def trajectory_hash(self) -> str:
        """The config hash without the resume-mutable fields: equal means a checkpoint may be continued."""
        skip = set(NON_RESULT_FIELDS) | set(self.mutable)
        return config_hash({k: v for k, v in dict(self.config).items() if k not in skip})

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

    def records_this_request(self) -> bool:
        """Whether the manifest is of this config and these inputs (its outputs may still be damaged)."""
        return self._matches(self.manifest())

    def is_complete(self) -> bool:
        m = self.manifest()
        return self._matches(m) and not self.damaged_outputs(m)

    def extends(self) -> bool:
        """True when a finished earlier attempt differs from this request only in resume-mutable fields (e.g. more
        ``steps``): its checkpoint is continued instead of starting afresh."""
        m = self.manifest()
        return self.resumable and bool(self.mutable) and bool(m) and not self._matches(m) and m.get("inputs") == dict(self.inputs) \
            and m.get("trajectory_hash") == self.trajectory_hash

    def status(self, force: bool = False) -> str:
        """What running this stage now would do: ``cached``, ``extend`` (continue a finished attempt's checkpoint
        with changed resume-mutable fields), ``resume`` (an interrupted attempt of this trajectory) or ``run``."""
        if not force and self.is_complete():
            return "cached"
        if force:
            return "run"
        if self.was_interrupted() and self.resumable:
            return "resume"
        return "extend" if self.extends() else "run"

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
        same = attempt.get("trajectory_hash", attempt.get("config_hash")) == self.trajectory_hash \
            and attempt.get("inputs") == dict(self.inputs)
        m = self.manifest() or {}
        finished = m.get("config_hash") == attempt.get("config_hash") and m.get("inputs") == attempt.get("inputs")
        return same and not finished and not self._matches(m)

    def begin(self, continues: bool = False) -> "StageDir":
        """Create the folder and record the resolved config and this attempt.

        The previous manifest stays until ``finish`` replaces it: a forced recompute that fails leaves the old
        result valid as long as its recorded output checksums still match the files. Its attempts are carried
        into the new manifest when this attempt ``continues`` it (an extension of the same trajectory)."""
        self.path.mkdir(parents=True, exist_ok=True)
        old = self.manifest()
        continues = continues and bool(old) and old.get("trajectory_hash") == self.trajectory_hash \
            and old.get("inputs") == dict(self.inputs)
        self._history = _attempts(old) if continues else []
        atomic_write_yaml(self.path / "config.yaml", dict(self.config))
        atomic_write_json(self.attempt_path, {"config_hash": self.config_hash, "trajectory_hash": self.trajectory_hash,
                                              "inputs": dict(self.inputs)})
        self._t0 = time.perf_counter()
        self._started = _dt.datetime.now(_dt.timezone.utc).isoformat()
        return self

    def finish(self, fingerprint: str = "", outputs: tuple[str, ...] = (), attempt_extra: Mapping[str, Any] | None = None,
               **extra: Any) -> dict[str, Any]:
        """Write ``manifest.json`` (last, atomically). ``fingerprint`` identifies this stage's output;
        ``outputs`` (paths relative to the folder) get a checksum that ``is_complete`` verifies before reuse;
        ``attempt_extra`` is added to this attempt's entry of ``attempts`` (e.g. the step it resumed from)."""
        finished = _dt.datetime.now(_dt.timezone.utc).isoformat()
        attempt = {"config_hash": self.config_hash, "started": self._started, "finished": finished,
                   "seconds": round(time.perf_counter() - self._t0, 3),
                   **{k: self.config[k] for k in sorted(self.mutable) if k in self.config and _scalar(self.config[k])}}
        attempts = [*self._history, {**attempt, **dict(attempt_extra or {})}]
        manifest = {
            "stage": self.stage,
            "config_hash": self.config_hash,
            "trajectory_hash": self.trajectory_hash,
            "inputs": dict(self.inputs),
            "fingerprint": fingerprint or self.config_hash,
            "seconds": round(sum(float(a.get("seconds") or 0.0) for a in attempts), 3),  # every attempt's
            "attempts": attempts,
            "started": attempts[0].get("started", self._started),
            "finished": finished,
            "device": device_description(),
            "versions": package_versions(),
            "outputs": {rel: _checksum(self.path / rel) for rel in outputs},
            **extra,
            # costs that each attempt reports for itself (e.g. evaluation time during training) are totals too
            **{k: round(sum(float(a.get(k) or 0.0) for a in attempts), 3) for k in SUMMED_FIELDS
               if k in (attempt_extra or {})},
        }
        atomic_write_json(self.manifest_path, manifest)
        return manifest


def _attempts(manifest: Mapping[str, Any] | None) -> list[dict[str, Any]]:
    """The attempts a manifest records (one synthesised from its fields when it predates ``attempts``)."""
    if not manifest:
        return []
    if manifest.get("attempts"):
        return [dict(a) for a in manifest["attempts"]]
    return [{k: manifest.get(k) for k in ("config_hash", "started", "finished", "seconds")}]


def _scalar(value: Any) -> bool:
    return value is None or isinstance(value, (bool, int, float, str))


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
