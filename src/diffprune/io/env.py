"""Boolean environment variables, read one way everywhere (``DIFFPRUNE_WAIT``, ``DIFFPRUNE_DEBUG``, ...)."""
from __future__ import annotations

import os

TRUE = ("1", "true", "yes", "on")
FALSE = ("0", "false", "no", "off")


class EnvError(ValueError):
    """A boolean environment variable holds something else; the message names it and the accepted values."""


def env_flag(name: str, default: bool = False) -> bool:
    """``name`` as a boolean: unset or empty -> ``default``; 1/true/yes/on -> True; 0/false/no/off -> False
    (any case); anything else is an ``EnvError``, not a silent True."""
    value = os.environ.get(name, "").strip().lower()
    if not value:
        return default
    if value in TRUE:
        return True
    if value in FALSE:
        return False
    raise EnvError(f"environment variable {name}={os.environ[name]!r} is not a boolean; set it to one of "
                   f"{'/'.join(TRUE)} or {'/'.join(FALSE)}, or unset it")
