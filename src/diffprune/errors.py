"""What a failure means to the user, in one line: ``<what>, <where>; <what to do>``.

``user_message(exc)`` maps diffprune's own errors (their text is written for users) and the library errors a
user can cause (YAML, Pillow, safetensors, pickle refusal, OS errors such as a full or read-only disk, pydantic)
to that line; the CLI prints it and exits 2. Anything else is a bug: the CLI names it in one line and asks for
``--debug``, which keeps the traceback.
"""
from __future__ import annotations

import errno
import pickle

from diffprune.config.base import format_validation_error
from diffprune.io import DiskSpaceError, free_space, is_disk_full

_OS_HINTS = {
    errno.ENOSPC: "no space left on the device",
    errno.EDQUOT: "disk quota exceeded",
    errno.EROFS: "the file system is read-only",
    errno.EACCES: "permission denied",
    errno.EPERM: "operation not permitted",
}


def _os_message(e: OSError) -> str:
    where = e.filename or ""
    if getattr(e, "filename2", None):
        where = f"{where} -> {e.filename2}"
    if e.errno in (errno.ENOSPC, errno.EDQUOT):
        detail = e.strerror if e.strerror and "space" in e.strerror and "needs" in e.strerror else _OS_HINTS[e.errno]
        free = f" ({free_space(e.filename)})" if e.filename else ""
        return (f"{detail} writing {where or 'a file'}{free}; free some space there or move runs_dir to a bigger "
                f"disk (--set runs_dir=...), then run the same command to resume")
    if e.errno in (errno.EROFS, errno.EACCES, errno.EPERM):
        free = f" ({free_space(e.filename)})" if e.filename else ""
        return (f"{_OS_HINTS[e.errno]}: {where or 'a file'}{free}; point runs_dir at a folder you can write "
                f"(--set runs_dir=...) or fix its permissions, then run the same command to resume")
    if isinstance(e, IsADirectoryError):
        return f"{where} is a folder where a file is expected; pass the file inside it"
    if isinstance(e, NotADirectoryError):
        return f"{where}: a part of this path is a file, not a folder; check the path"
    if isinstance(e, FileNotFoundError):
        return f"no such file or folder: {where or e}; check the path"
    return f"{e.strerror or e}: {where}" if where else str(e)


def user_message(e: BaseException) -> str | None:
    """The one-line message for an error the user can cause or fix, or None for an unexpected one (a bug)."""
    from pydantic import ValidationError

    if isinstance(e, DiskSpaceError):
        return e.strerror
    if is_disk_full(e) and not (isinstance(e, OSError) and e.filename):  # the library's words for a full disk
        return (f"no space left on the device ({' '.join(str(e).split())[:120]}); free some space on the disk of "
                f"runs_dir or move it (--set runs_dir=...), then run the same command to resume")
    if isinstance(e, OSError) and (e.filename or e.errno in _OS_HINTS):
        return _os_message(e)
    if isinstance(e, ValidationError):
        return "; ".join(format_validation_error(e).splitlines())
    try:
        import yaml

        if isinstance(e, yaml.YAMLError):
            return f"invalid YAML: {' '.join(str(e).split())}; fix the syntax"
    except ImportError:  # pragma: no cover - yaml is a dependency
        pass
    if isinstance(e, pickle.UnpicklingError) or "Weights only load failed" in str(e):
        return (f"refused to unpickle a file ({str(e).splitlines()[0][:200]}): diffprune loads only safetensors "
                f"and weights-only tensors; replace the file, or delete the folder it is in to recompute it")
    try:
        from safetensors import SafetensorError

        if isinstance(e, SafetensorError):
            return (f"a safetensors file is damaged or truncated ({e}); delete it (or its stage folder) "
                    f"and run the same command again")
    except ImportError:  # pragma: no cover
        pass
    try:
        from PIL import Image

        if isinstance(e, Image.DecompressionBombError):
            return f"{e}; remove the image or skip unreadable files with --set data.skip_bad=true"
    except ImportError:  # pragma: no cover
        pass
    if isinstance(e, (ValueError, KeyError, RuntimeError, OSError, EOFError)):
        # a KeyError's str() is its key quoted; stripping quotes from other messages would eat a closing 'x'
        msg = (str(e.args[0]) if isinstance(e, KeyError) and e.args else str(e)) or type(e).__name__
        lines = [" ".join(line.split()) for line in msg.splitlines() if line.strip()]
        return "; ".join(lines)  # several lines (e.g. two errors) stay apart
    return None
