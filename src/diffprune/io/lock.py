"""Folder locks: an OS file lock (``filelock``: flock on Unix, msvcrt on Windows) on ``<folder>/.lock`` held
while a stage computes.

The kernel drops the lock when its holder exits, kill -9 included, so a lock is never stale. The lock file
keeps a line about its holder (pid, host, command, start time) that a second writer shows when it is refused.
"""
from __future__ import annotations

import contextlib
import datetime as _dt
import json
import os
import socket
import sys
from pathlib import Path
from typing import Callable, Iterator

from filelock import FileLock, Timeout

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
    lock = FileLock(path / LOCK_FILE)
    try:
        lock.acquire(blocking=False)
    except Timeout:
        holder = lock_holder(path)
        if not wait:
            raise LockBusy(
                f"{what or path} is being computed by another process, {holder}; lock {path / LOCK_FILE}; "
                f"wait for it to finish, or pass --wait to queue behind it (it is reused once finished)"
            ) from None
        if on_wait is not None:
            on_wait(holder)
        lock.acquire()
    try:
        info = {"pid": os.getpid(), "host": socket.gethostname(),
                "started": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
                "command": " ".join(os.path.basename(a) if i == 0 else a for i, a in enumerate(sys.argv))[:200]}
        (path / LOCK_FILE).write_text(json.dumps(info), encoding="utf-8")  # filelock keeps the file's inode
        yield path / LOCK_FILE
    finally:
        lock.release()
