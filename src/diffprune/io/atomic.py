"""Atomic writes: every file is written to a temporary sibling, flushed, then renamed into place.

A crash or Ctrl-C therefore leaves either the old file or the new one, never half of one.
"""
from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import yaml

from diffprune.io import faults
from diffprune.io.space import DiskSpaceError, disk_full_error, is_disk_full


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def temp_prefix(name: str) -> str:
    """``.<name>.<pid>.``: temporaries carry their writer's pid, so a later run can tell a dead writer's."""
    return f".{name}.{os.getpid()}."


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, *, is_dir: bool = False) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success flush it to disk and rename it onto ``path``.

    Works for files and (``is_dir=True``) whole directories, e.g. a diffusers ``save_pretrained`` folder.
    On an exception (a full disk included) the temporary is removed and ``path`` is left untouched; a full disk,
    however the library reports it, becomes a ``DiskSpaceError`` naming ``path`` and the free space there.
    The result has the permissions the umask gives a new file or folder (mkstemp and safetensors alone would
    give 0600/0700), and the temporary's name is unique to this process. Every write is numbered for the
    fault-injection hook (``diffprune.io.faults``; off unless its variable is set).
    """
    target = Path(path)
    write = faults.before_write(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    prefix = temp_prefix(target.name)
    if is_dir:
        tmp = Path(tempfile.mkdtemp(prefix=prefix, suffix=".tmp", dir=target.parent))
        os.chmod(tmp, 0o777 & ~_umask())
    else:
        fd, name = tempfile.mkstemp(prefix=prefix, suffix=".tmp", dir=target.parent)
        os.fchmod(fd, 0o666 & ~_umask())
        os.close(fd)
        tmp = Path(name)
    try:
        yield tmp
        sync_tree(tmp)
        if is_dir and target.exists():
            old = Path(tempfile.mkdtemp(prefix=prefix, suffix=".old", dir=target.parent))
            os.replace(target, old)
            os.replace(tmp, target)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, target)
        _fsync_folder(target.parent)
    except BaseException as e:
        if is_dir:
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()
        if is_disk_full(e) and not isinstance(e, DiskSpaceError):
            raise disk_full_error(target, e) from e
        if isinstance(e, OSError) and e.errno is not None and not e.filename:  # name the file being written
            raise type(e)(e.errno, e.strerror, str(target)) from e
        raise
    faults.after_write(write, target)


def sync_tree(path: str | os.PathLike) -> None:
    """Give the files under ``path`` (a file or a folder) the umask's permissions and flush them to disk."""
    root = Path(path)
    files = [root] if root.is_file() else [p for p in root.rglob("*") if p.is_file() and not p.is_symlink()]
    mode = 0o666 & ~_umask()
    for f in files:
        if f.stat().st_mode & 0o777 == 0o600 and mode != 0o600:  # safetensors writes 0600 whatever the umask
            os.chmod(f, mode)
        fd = os.open(f, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _fsync_folder(folder: Path) -> None:
    """Make a rename in ``folder`` durable (a no-op where folders cannot be opened)."""
    with contextlib.suppress(OSError):
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_stale_temps(folder: str | os.PathLike, *, all_writers: bool = False) -> list[Path]:
    """Remove the ``.X.<pid>.*.tmp`` / ``.old`` leftovers of writers that died (kill -9) under ``folder``.

    ``all_writers=True`` removes every ``.*.tmp`` / ``.*.old`` entry whatever its pid: for a folder whose lock
    the caller holds, where no other process can be writing. Returns what was removed.
    """
    root = Path(folder)
    if not root.is_dir():
        return []
    removed = []
    for entry in sorted(root.rglob(".*"), key=lambda p: len(p.parts)):
        if not entry.name.endswith((".tmp", ".old")) or not os.path.lexists(entry):
            continue
        pid = entry.name.split(".")[-3] if entry.name.count(".") >= 4 else ""
        if not all_writers and (not pid.isdigit() or _pid_alive(int(pid))):
            continue
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry, ignore_errors=True)
        else:
            entry.unlink(missing_ok=True)
        removed.append(entry)
    return removed


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            f.write(data)
    return Path(path)


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    return atomic_write_bytes(path, text.encode("utf-8"))


def _json_default(obj: Any) -> Any:
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"Object of type {type(obj).__name__} is not JSON serialisable")


def atomic_write_json(path: str | os.PathLike, obj: Any, *, indent: int = 2) -> Path:
    return atomic_write_text(path, json.dumps(obj, indent=indent, default=_json_default, sort_keys=False) + "\n")


def atomic_write_yaml(path: str | os.PathLike, obj: Any) -> Path:
    plain = json.loads(json.dumps(obj, default=_json_default))
    return atomic_write_text(path, yaml.safe_dump(plain, sort_keys=False))


def atomic_save_npy(path: str | os.PathLike, array: np.ndarray) -> Path:
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            np.save(f, array)
    return Path(path)


def atomic_save_npz(path: str | os.PathLike, **arrays: np.ndarray) -> Path:
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            np.savez(f, **arrays)
    return Path(path)


def read_json(path: str | os.PathLike) -> Any:
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def read_yaml(path: str | os.PathLike) -> Any:
    with open(path, encoding="utf-8") as f:
        return yaml.safe_load(f)
