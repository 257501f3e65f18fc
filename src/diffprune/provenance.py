"""Where and how a command ran, as a user reads it: devices, processes, training and sampling precision,
threads and the launcher (``accelerate launch --mixed_precision bf16 ...``).

Every command prints ``provenance_line`` at start; the same record goes into ``command.json``, every stage's
manifest and the report's header.
"""
from __future__ import annotations

import os
import shlex
import sys
from pathlib import Path
from typing import Any

import torch
from rich.markup import escape

from diffprune.runtime import launch_precision, launch_world

_LAUNCH_VARIABLES = ("ACCELERATE_MIXED_PRECISION", "ACCELERATE_USE_CPU", "ACCELERATE_NUM_PROCESSES", "WORLD_SIZE")


def devices() -> str:
    """The accelerators this process sees (``2x NVIDIA H100``), else ``cpu``."""
    if torch.cuda.is_available():
        return f"{torch.cuda.device_count()}x {torch.cuda.get_device_name(0)}"
    if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
        return "mps"
    return "cpu"


def launcher() -> str | None:
    """The launcher command this process runs under, or None without one: the parent's command line when it is
    ``accelerate launch`` (or torchrun), else one rebuilt from the variables the launcher sets."""
    if "ACCELERATE_MIXED_PRECISION" not in os.environ and "TORCHELASTIC_RUN_ID" not in os.environ:
        return None
    parent = _parent_command()
    if parent:
        return parent
    words = ["accelerate", "launch"]
    if launch_precision() != "no":
        words += ["--mixed_precision", launch_precision()]
    if launch_world()[1] > 1:
        words += ["--num_processes", str(launch_world()[1])]
    if os.environ.get("ACCELERATE_USE_CPU", "").lower() in ("1", "true", "yes"):
        words.append("--cpu")
    return " ".join(words)


def _parent_command() -> str | None:
    """The parent process's command line (Linux /proc) from the launcher's name on, when the parent is
    ``accelerate`` or ``torchrun``; None otherwise."""
    try:
        raw = Path(f"/proc/{os.getppid()}/cmdline").read_bytes()
    except OSError:
        return None
    argv = [a for a in raw.decode(errors="replace").split("\0") if a]
    for i, word in enumerate(argv):  # drop the interpreter: `python .../accelerate launch ...` -> `accelerate ...`
        if Path(word).name in ("accelerate", "torchrun") or word in ("accelerate.commands.launch",):
            return shlex.join([Path(word).name, *argv[i + 1:]])
    return None


def provenance(train_precision: str | None = None, sample_precision: str | None = None) -> dict[str, Any]:
    """The record: ``train_precision`` / ``sample_precision`` are the config's (None: the launch decides)."""
    launched = launch_precision()
    return {
        "devices": devices(),
        "processes": launch_world()[1],
        "training_precision": train_precision or launched,
        "training_precision_from": "config" if train_precision else ("launch" if launcher() else "default"),
        "sampling_precision": sample_precision or launched,
        "sampling_precision_from": "config" if sample_precision else ("launch" if launcher() else "default"),
        "threads": torch.get_num_threads(),
        "launcher": launcher(),
        "command": shlex.join(["diffprune", *sys.argv[1:]]),
    }


def provenance_line(record: dict[str, Any]) -> str:
    """One line: ``devices cpu | 1 process | training bf16 (launch) | sampling bf16 (launch) | 2 threads | ...``."""
    n = int(record["processes"])
    parts = [f"devices {record['devices']}", f"{n} process{'es' if n != 1 else ''}",
             f"training {record['training_precision']} ({record['training_precision_from']})",
             f"sampling {record['sampling_precision']} ({record['sampling_precision_from']})",
             f"{record['threads']} thread{'s' if record['threads'] != 1 else ''}"]
    if record.get("launcher"):
        parts.append(f"launched by: {record['launcher']}")
    return " | ".join(parts)


def print_provenance(console: Any, record: dict[str, Any]) -> None:
    """The start line of a command, printed by the main process only."""
    if launch_world()[0] == 0:
        console.print(f"[dim]ran on[/]  {escape(provenance_line(record))}")


def full_command(record: dict[str, Any], argv: list[str] | None = None) -> str:
    """The launcher, then the command (``argv``, default the record's): what to type to run it again."""
    command = shlex.join(argv) if argv else record["command"]
    launch = record.get("launcher")
    if launch and "diffprune" in launch:  # the parent's own command line already holds the diffprune verb
        return launch
    return f"{launch} ... {command}" if launch else command
