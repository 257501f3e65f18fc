"""Class-weight files (``class_weights.json``: {class name: weight}, sums to 1) and their diagnostics."""
from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from diffprune.io import atomic_write_json
from diffprune.runtime import check_weight_sum

COLLAPSE_THRESHOLD = 0.5
COLLAPSE_MIN_CLASSES = 5
COLLAPSE_REMEDIES = (
    "larger batches (batch_size) or accumulating statistics over several steps (update_every)",
    "a smaller step size (eta)",
    "more smoothing toward uniform (smoothing)",
    "a reference trained on the natural class proportions (a full-data reference rather than one trained on "
    "the coreset)",
)


class ClassWeightsError(ValueError):
    """A class-weights file or mapping is invalid; the message names the problem and the fix."""


def _as_array(weights: Mapping[str, float] | Sequence[float] | np.ndarray) -> np.ndarray:
    if isinstance(weights, Mapping):
        return np.asarray(list(weights.values()), dtype=np.float64)
    return np.asarray(weights, dtype=np.float64)


def weights_entropy(weights: Mapping[str, float] | Sequence[float] | np.ndarray) -> float:
    """Shannon entropy in nats of a weight vector (normalised first); ln K for uniform weights, 0 for one-hot."""
    a = _as_array(weights)
    if a.ndim != 1 or a.size == 0 or np.any(a < 0) or not np.all(np.isfinite(a)) or a.sum() <= 0:
        raise ClassWeightsError("weights must be a non-empty 1-d vector of finite, non-negative numbers")
    p = a / a.sum()
    nz = p[p > 0]
    return float(-(nz * np.log(nz)).sum())


def is_collapsed(weights: Mapping[str, float] | Sequence[float] | np.ndarray) -> bool:
    """True when one class holds more than half of the weight and there are at least 5 classes."""
    a = _as_array(weights)
    return a.size >= COLLAPSE_MIN_CLASSES and float(a.max() / a.sum()) > COLLAPSE_THRESHOLD


def collapse_message(weights: Mapping[str, float], label: str = "class weights") -> str:
    name, top = max(weights.items(), key=lambda kv: kv[1])
    remedies = "; ".join(COLLAPSE_REMEDIES)
    return (
        f"{label} collapsed: class '{name}' holds {top:.3f} of the weight across {len(weights)} classes "
        f"(entropy {weights_entropy(weights):.3f} nats, uniform {math.log(len(weights)):.3f}). "
        f"Try: {remedies}."
    )


def weights_to_dict(weights: np.ndarray, class_names: Sequence[str]) -> dict[str, float]:
    a = np.asarray(weights, dtype=np.float64)
    if a.shape != (len(class_names),):
        raise ClassWeightsError(f"{a.size} weights for {len(class_names)} class names")
    if len(set(class_names)) != len(class_names):
        raise ClassWeightsError("class names must be unique to key a class-weights file")
    a = a / a.sum()
    return {str(n): float(w) for n, w in zip(class_names, a)}


def save_class_weights(path: str | os.PathLike, weights: np.ndarray, class_names: Sequence[str]) -> Path:
    """Write ``{name: weight}`` atomically (weights normalised to sum to 1)."""
    return atomic_write_json(path, weights_to_dict(weights, class_names))


def validate_class_weights(
    weights: Mapping[str, float], class_names: Sequence[str] | None = None, source: str = "class weights"
) -> dict[str, float]:
    """Check a {name: weight} mapping: numbers, finite, non-negative, sum 1 (within
    ``runtime.WEIGHT_SUM_TOLERANCE``), names match; returns the weights as given (the trainer divides them by
    their sum), so a file's values and the hashes built from them stay bit-exact."""
    if not isinstance(weights, Mapping) or not weights:
        raise ClassWeightsError(f"{source}: expected a non-empty JSON object {{class name: weight}}")
    out: dict[str, float] = {}
    for name, w in weights.items():
        if isinstance(w, bool) or not isinstance(w, (int, float)) or not math.isfinite(w) or w < 0:
            raise ClassWeightsError(f"{source}: weight of '{name}' is {w!r}; weights must be finite numbers >= 0")
        out[str(name)] = float(w)
    total = sum(out.values())
    check_weight_sum(total, f"{source}: the weights", ClassWeightsError)
    if class_names is not None:
        expected, got = [str(n) for n in class_names], set(out)
        missing, extra = [n for n in expected if n not in got], sorted(got - set(expected))
        if missing or extra:
            raise ClassWeightsError(
                f"{source}: class names do not match the dataset (missing {missing[:5]}, unknown {extra[:5]}); "
                "were the weights computed for another dataset or selection?"
            )
        out = {n: out[n] for n in expected}
    return out


def load_class_weights(path: str | os.PathLike, class_names: Sequence[str] | None = None) -> dict[str, float]:
    """Read and validate ``class_weights.json``; with ``class_names``, return them in that order."""
    p = Path(path)
    if not p.is_file():
        raise ClassWeightsError(f"class weights file '{p}' not found; run the reweight stage first")
    try:
        data = json.loads(p.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ClassWeightsError(f"class weights file '{p}' is not valid JSON ({e})") from None
    return validate_class_weights(data, class_names, source=str(p))
