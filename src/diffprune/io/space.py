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


def free_space(path: str | os.PathLike) -> str:
    """``'<N> MB free on the file system of <folder>'`` for ``path`` (its nearest existing parent)."""
    probe = Path(path)
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    folder = probe if probe.is_dir() else probe.parent
    try:
        return f"{_mb(shutil.disk_usage(folder).free)} free on the file system of {folder}"
    except OSError:
        return f"free space of {folder} unknown"


_FULL_TEXTS = ("no space left", "os error 28", "disk quota", "requested and", "unexpected pos")


def is_disk_full(e: BaseException) -> bool:
    """Whether ``e`` is how a write to a full disk surfaced: ENOSPC/EDQUOT, or the libraries' own words for it
    (numpy: "N requested and M written"; torch: "unexpected pos"; safetensors: "No space left ... (os error 28)")."""
    if isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT):
        return True
    text = str(e).lower()
    return isinstance(e, (OSError, RuntimeError, ValueError)) and any(t in text for t in _FULL_TEXTS)


def disk_full_error(path: str | os.PathLike, e: BaseException | None = None) -> DiskSpaceError:
    """The one-line error for a write of ``path`` that failed on a full disk (nothing written is damaged)."""
    return DiskSpaceError(
        errno.ENOSPC,
        f"no space left on the device writing {path} ({free_space(path)}); free some space there or move runs_dir "
        f"to a bigger disk (--set runs_dir=...), then run the same command to resume",
        str(path),
    )
