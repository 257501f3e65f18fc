"""The one error type evaluation raises for bad input: a ``ValueError`` whose message names the fix."""
from __future__ import annotations


class EvaluationError(ValueError):
    """Evaluation inputs are unusable (wrong shape, too few images, stale cache, ...); ``str(err)`` says why."""
