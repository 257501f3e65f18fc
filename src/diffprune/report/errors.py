"""The report's error type: a ``ValueError`` whose message names the problem and the fix."""


class ReportError(ValueError):
    """A run directory cannot be reported (not a run directory, nothing evaluated, ...)."""
