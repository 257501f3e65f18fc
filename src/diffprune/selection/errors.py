"""Errors raised on bad selection input; messages name the problem and the fix."""
from __future__ import annotations


class SelectionError(ValueError):
    """Bad input to scoring or selection (NaN features, bad ratio, mismatched labels, tiny classes...)."""
