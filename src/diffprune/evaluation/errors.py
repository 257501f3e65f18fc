"""The one error type evaluation raises for bad input: a ``ValueError`` whose message names the fix."""
from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np


class EvaluationError(ValueError):
    """Evaluation inputs are unusable (wrong shape, too few images, stale cache, ...); ``str(err)`` says why."""


def non_finite(values: Mapping[str, Any], prefix: str = "") -> list[str]:
    """The keys (dotted for nested mappings) whose value is a NaN or infinite number."""
    bad = []
    for key, value in values.items():
        if isinstance(value, Mapping):
            bad += non_finite(value, f"{prefix}{key}.")
        elif isinstance(value, (float, np.floating)) and not math.isfinite(float(value)):
            bad.append(f"{prefix}{key}")
    return bad


def require_finite(values: Mapping[str, Any], where: str, fix: str) -> None:
    """Raise ``EvaluationError`` when a metric about to be written or printed is NaN or infinite: a wrong number
    is never reported as a result."""
    bad = non_finite(values)
    if bad:
        shown = ", ".join(f"{k}={_lookup(values, k)}" for k in bad[:6])
        raise EvaluationError(f"non-finite metric ({shown}) for {where}; {fix}")


def _lookup(values: Mapping[str, Any], dotted: str) -> Any:
    for part in dotted.split("."):
        values = values[part]
    return values
