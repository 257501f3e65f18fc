"""Free-space checks before large allocations (a memory map on a full disk dies with SIGBUS, no message)."""
from __future__ import annotations

import errno
import os
import shutil
from pathlib import Path


class DiskSpaceError(OSError):
    """Not enough free space for a file whose size is known up front; the message names path and sizes."""


def _mb(n: int) -> str:
    return f"{n / 1e6:.1f} MB"


def ensure_free_space(path: str | os.PathLike, nbytes: int, *, margin: int = 1 << 20) -> None:
    """Raise ``DiskSpaceError`` unless the file system of ``path`` (or its nearest existing parent) has
    ``nbytes`` + ``margin`` bytes free."""
    probe = Path(path)
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    free = shutil.disk_usage(probe).free
    if free < nbytes + margin:
        raise DiskSpaceError(
            errno.ENOSPC,
            f"not enough space for {Path(path).name}: needs {_mb(nbytes)}, {_mb(free)} free on the disk of "
            f"{probe}; free some space or move runs_dir (--set runs_dir=...) to a bigger disk",
            str(path),
        )
