"""The registry of selection criteria: the built-in table (``selection.methods.BUILTIN_METHODS``) plus any
method added with ``register``. The contract a method meets is in ``selection.method``.
"""
from __future__ import annotations

from typing import Callable

from diffprune.selection.errors import SelectionError
from diffprune.selection.method import Method, ScoreFn
from diffprune.selection.methods import BUILTIN_METHODS

_METHODS: dict[str, Method] = {method.name: method for method in BUILTIN_METHODS}


def register(
    name: str, description: str, *, sequential: bool = False, full_covariance: bool = False, overwrite: bool = False
) -> Callable[[ScoreFn], ScoreFn]:
    """Decorator adding a per-group scoring function under ``name``.

    A name that is already registered (a built-in one included) is refused unless ``overwrite=True``: two
    modules registering one name would otherwise make the method depend on import order.
    """

    def wrap(fn: ScoreFn) -> ScoreFn:
        if name in _METHODS and not overwrite:
            raise SelectionError(f"selection method {name!r} is already registered ({_METHODS[name].description}); "
                                 "choose another name, or pass overwrite=True to replace it")
        _METHODS[name] = Method(name, fn, description, sequential, full_covariance)
        return fn

    return wrap


def get_method(name: str) -> Method:
    if name not in _METHODS:
        raise SelectionError(f"unknown selection method {name!r}; choose one of {sorted(_METHODS)}")
    return _METHODS[name]


def available_methods() -> dict[str, str]:
    """{method name: one-line description} for every registered method."""
    return {name: m.description for name, m in sorted(_METHODS.items())}
