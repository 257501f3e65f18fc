"""Every stage config is a ``StrictModel``: unknown keys are errors, and a bad value becomes one line
naming the field, the value given and what is allowed (shown by the CLI without a traceback)."""
from __future__ import annotations

from typing import Any, ClassVar, TypeVar

from pydantic import BaseModel, ConfigDict, ValidationError

M = TypeVar("M", bound=BaseModel)


class ConfigError(ValueError):
    """A configuration value is invalid; ``str(err)`` is a user-facing message."""


class StrictModel(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True, protected_namespaces=())
    # fields that may change between a checkpoint and its continuation without changing the trajectory up to
    # the checkpoint (e.g. ``steps``): the pipeline extends a finished stage when only these changed
    RESUME_MUTABLE: ClassVar[frozenset[str]] = frozenset()


def format_validation_error(err: ValidationError, prefix: str = "") -> str:
    """One line per problem: ``field.path: got VALUE; MESSAGE``."""
    lines = []
    for e in err.errors():
        loc = ".".join(str(p) for p in (prefix, *e["loc"]) if p != "")
        if e["type"] == "extra_forbidden":
            lines.append(f"{loc}: unknown field; remove it or check its spelling")
            continue
        given = e.get("input")
        given_s = repr(given) if not isinstance(given, dict) else "a mapping"
        msg = e["msg"]
        for head in ("Value error, ", "Assertion failed, "):
            msg = msg.replace(head, "")
        lines.append(f"{loc or '<config>'}: got {given_s}; {msg}")
    return "\n".join(lines)


def validate_config(model: type[M], data: Any, prefix: str = "") -> M:
    """``model.model_validate(data)`` with pydantic's error turned into a ``ConfigError``."""
    try:
        return model.model_validate(data if data is not None else {})
    except ValidationError as e:
        raise ConfigError(format_validation_error(e, prefix)) from None
