"""The registry of selection criteria: the built-in table (``selection.methods.BUILTIN_METHODS``) plus any
method added with ``register``.

A method scores the rows of ONE group (a class, a k-means cluster, or the whole set):

    fn(x: float array n x d, *, budget: int | None, rng: np.random.Generator, device: torch.device, **opts)
        -> float64 array of n scores, higher = keep first

Ranking methods (gaussian, knn, ...) ignore ``budget``. Sequential methods (kcenter, herding) build the
subset greedily, so their scores depend on the budget: the i-th pick of m gets ``m - i + 1`` (>= 1) and the
rest get a value in [0, 1), so "top m" is exactly the greedy subset.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np

from diffprune.selection.errors import SelectionError

ScoreFn = Callable[..., np.ndarray]


@dataclass(frozen=True)
class Method:
    name: str
    fn: ScoreFn
    description: str
    sequential: bool = False  # greedy subset construction: needs a budget, supports keep="top" only
    full_covariance: bool = False  # fits a d x d covariance: groups with n <= d are regularised (warned)


_METHODS: dict[str, Method] = {}
_BUILTIN_LOADED = False


def register(
    name: str, description: str, *, sequential: bool = False, full_covariance: bool = False, overwrite: bool = False
) -> Callable[[ScoreFn], ScoreFn]:
    """Decorator adding a per-group scoring function under ``name``.

    A name that is already registered (a built-in one included) is refused unless ``overwrite=True``: two
    modules registering one name would otherwise make the method depend on import order.
    """

    def wrap(fn: ScoreFn) -> ScoreFn:
        _load_builtin()
        if name in _METHODS and not overwrite:
            raise SelectionError(f"selection method {name!r} is already registered ({_METHODS[name].description}); "
                                 "choose another name, or pass overwrite=True to replace it")
        _METHODS[name] = Method(name, fn, description, sequential, full_covariance)
        return fn

    return wrap


def get_method(name: str) -> Method:
    _load_builtin()
    if name not in _METHODS:
        raise SelectionError(f"unknown selection method {name!r}; choose one of {sorted(_METHODS)}")
    return _METHODS[name]


def available_methods() -> dict[str, str]:
    """{method name: one-line description} for every registered method."""
    _load_builtin()
    return {name: m.description for name, m in sorted(_METHODS.items())}


def greedy_order_scores(order: np.ndarray, n: int, rest: np.ndarray | None = None) -> np.ndarray:
    """Scores for a greedy pick order: i-th pick of m -> m - i + 1; others -> ``rest`` scaled into [0, 1)."""
    scores = np.zeros(n, dtype=np.float64)
    if rest is not None and n > len(order):
        rest = np.asarray(rest, dtype=np.float64)
        lo, hi = rest.min(), rest.max()
        scores[:] = 0.0 if hi <= lo else 0.999 * (rest - lo) / (hi - lo)
    m = len(order)
    scores[order] = np.arange(m, 0, -1, dtype=np.float64)
    return scores


def _load_builtin() -> None:
    """Add the built-in table once (imported here, not at the top: the method modules import this one)."""
    global _BUILTIN_LOADED
    if _BUILTIN_LOADED:
        return
    from diffprune.selection.methods import BUILTIN_METHODS

    _BUILTIN_LOADED = True
    for method in BUILTIN_METHODS:
        _METHODS.setdefault(method.name, method)
