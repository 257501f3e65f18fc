"""Aimed fault injection at every atomic write, for tests and ``benchmarks/fault_injection.py --aimed`` only.

Off unless ``DIFFPRUNE_FAULT`` is set. The writes of a process are numbered from 1 in the order they start
(``atomic_path`` and the trainer's checkpoint swap); ``DIFFPRUNE_FAULT=<kind>@<N>`` acts at write N:

- ``kill@N``: SIGKILL this process right after write N is committed (renamed into place);
- ``enospc@N`` / ``erofs@N``: write N fails before anything is written, as on a full / read-only disk.

``DIFFPRUNE_FAULT_LOG=<file>`` appends ``<N>\t<path>`` for every committed write (to count a stage's writes).
The count restarts whenever the variable's value changes, so a forked child that sets it counts from 1.
"""
from __future__ import annotations

import errno
import os
import signal

FAULT_ENV = "DIFFPRUNE_FAULT"
FAULT_LOG_ENV = "DIFFPRUNE_FAULT_LOG"
KINDS = {"kill": None, "enospc": errno.ENOSPC, "erofs": errno.EROFS}

_counter = {"key": None, "count": 0}


def _parse(spec: str) -> tuple[str, int]:
    kind, _, n = spec.partition("@")
    if kind not in KINDS or not n.isdigit():
        raise ValueError(f"{FAULT_ENV}={spec!r} is not <kind>@<N> with kind one of {', '.join(KINDS)}; "
                         f"unset it (it is for fault-injection tests only)")
    return kind, int(n)


def before_write(path: str | os.PathLike) -> int:
    """Number this write (0 when injection is off); raise the simulated error when it is the aimed one."""
    spec, log = os.environ.get(FAULT_ENV, ""), os.environ.get(FAULT_LOG_ENV, "")
    if not spec and not log:
        return 0
    key = (spec, log)
    if _counter["key"] != key:
        _counter.update(key=key, count=0)
    _counter["count"] += 1
    n = _counter["count"]
    if spec:
        kind, at = _parse(spec)
        if n == at and KINDS[kind] is not None:
            code = KINDS[kind]
            raise OSError(code, os.strerror(code), str(path))
    return n


def after_write(n: int, path: str | os.PathLike) -> None:
    """Write ``n`` is committed: log it, and die here when it is the aimed kill."""
    if not n:
        return
    log = os.environ.get(FAULT_LOG_ENV, "")
    if log:
        with open(log, "a", encoding="utf-8") as f:
            f.write(f"{n}\t{path}\n")
    spec = os.environ.get(FAULT_ENV, "")
    if spec and _parse(spec) == ("kill", n):
        os.kill(os.getpid(), signal.SIGKILL)
