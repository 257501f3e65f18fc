"""Run directories, manifests, cache hits and the orchestration of the stages.

Names are imported lazily so that ``diffprune --help`` and the manifest helpers stay light.
"""
from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "ArmConfig": "diffprune.pipeline.config",
    "RunConfig": "diffprune.pipeline.config",
    "load_run_config": "diffprune.pipeline.config",
    "StageDir": "diffprune.pipeline.manifest",
    "Pipeline": "diffprune.pipeline.runner",
    "STAGES": "diffprune.pipeline.stages",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'diffprune.pipeline' has no attribute '{name}'")
