"""Folder locks: an OS file lock (``fcntl.flock``) on ``<folder>/.lock`` held while a stage computes.

The kernel drops the lock when its holder exits, kill -9 included, so a lock is never stale. The lock file
keeps a line about its holder (pid, host, command, start time) that a second writer shows when it is refused.
"""
from __future__ import annotations

import contextlib
import datetime as _dt
import errno
import fcntl
import json
import os
import socket
import sys
from pathlib import Path
from typing import Callable, Iterator

LOCK_FILE = ".lock"


class LockBusy(RuntimeError):
    """Another process holds the folder's lock; ``str(err)`` names it and says what to do."""


def lock_holder(folder: str | os.PathLike) -> str:
    """Who holds (or last held) ``folder``'s lock, in words."""
    try:
        info = json.loads((Path(folder) / LOCK_FILE).read_text(encoding="utf-8") or "{}")
    except (OSError, ValueError):
        return "an unknown process"
    return (f"pid {info.get('pid', '?')} on {info.get('host', '?')} since {info.get('started', '?')}"
            f" ({info.get('command', '')})")


@contextlib.contextmanager
def folder_lock(folder: str | os.PathLike, *, wait: bool = False, what: str = "",
                on_wait: Callable[[str], None] | None = None) -> Iterator[Path]:
    """Hold the exclusive lock of ``folder`` (created if needed) for the ``with`` block.

    When another process holds it: ``wait=False`` raises ``LockBusy`` naming the holder; ``wait=True`` calls
    ``on_wait(holder)`` once and blocks until the holder finishes (or dies).
    """
    path = Path(folder)
    path.mkdir(parents=True, exist_ok=True)
    fd = os.open(path / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o666)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            if e.errno not in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
                raise
            holder = lock_holder(path)
            if not wait:
                raise LockBusy(
                    f"{what or path} is being computed by another process, {holder}; lock {path / LOCK_FILE}; "
                    f"wait for it to finish, or pass --wait to queue behind it (it is reused once finished)"
                ) from None
            if on_wait is not None:
                on_wait(holder)
            fcntl.flock(fd, fcntl.LOCK_EX)
        info = {"pid": os.getpid(), "host": socket.gethostname(),
                "started": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
                "command": " ".join(os.path.basename(a) if i == 0 else a for i, a in enumerate(sys.argv))[:200]}
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(info).encode(), 0)
        yield path / LOCK_FILE
    finally:
        os.close(fd)  # releases the lock
