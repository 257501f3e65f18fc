"""Every stage config is a ``StrictModel``: unknown keys are errors, and a bad value becomes one line
naming the field, the value given and what is allowed (shown by the CLI without a traceback)."""
from __future__ import annotations

import re
from typing import Annotated, Any, ClassVar, Literal, TypeVar

from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, ValidationError

M = TypeVar("M", bound=BaseModel)


class ConfigError(ValueError):
    """A configuration value is invalid; ``str(err)`` is a user-facing message."""


class StrictModel(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True, protected_namespaces=())
    # fields that may change between a checkpoint and its continuation without changing the trajectory up to
    # the checkpoint (e.g. ``steps``): the pipeline extends a finished stage when only these changed
    RESUME_MUTABLE: ClassVar[frozenset[str]] = frozenset()


def _check_device(value: str) -> str:
    if not re.fullmatch(r"auto|cpu|mps|cuda(:\d+)?", value):
        raise ValueError("allowed: 'auto' (the accelerate process's GPU, else CUDA when present, else CPU), 'cpu', "
                         "'cuda', 'cuda:N' or 'mps'")
    return value


# The ``device`` field of every config. Only the spelling is checked here (a config may be written on one
# machine and run on another); ``diffprune.runtime.resolve_device`` checks that the device exists when the
# stage starts.
Device = Annotated[str, AfterValidator(_check_device)]


def _precision_word(value: Any) -> Any:
    """YAML 1.1 reads a bare ``no`` as false: ``mixed_precision: no`` means "no", as accelerate spells it."""
    return "no" if value is False else value


# accelerate's mixed-precision modes; None (where allowed) lets the launch decide
Precision = Annotated[Literal["no", "fp16", "bf16"], BeforeValidator(_precision_word)]


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
