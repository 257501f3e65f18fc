"""What the command line does on SIGINT/SIGTERM: the stage stops (a training loop checkpoints first), then one
line names the stage, the step and where the checkpoint is, and the command that resumes; exit 130 (SIGINT) or
143 (SIGTERM)."""
from __future__ import annotations

import shlex
import signal
import sys
import threading

from typing import Any

from rich.console import Console
from rich.markup import escape

_received: dict[str, int | None] = {"signum": None}


class Interrupted(KeyboardInterrupt):
    """A stage stopped on SIGINT/SIGTERM after writing its checkpoint; the message says how to continue.

    A ``KeyboardInterrupt`` so that code that does not know it still stops (and the CLI exits with 130, or 143
    after SIGTERM: ``last_signal``). Also importable from ``diffprune.runtime``."""


def note_signal(signum: int | None) -> None:
    """Record the SIGINT/SIGTERM that stops this command (None: forget it); ``runtime.StopOnSignal`` calls it."""
    _received["signum"] = signum


def last_signal() -> int | None:
    """The last SIGINT/SIGTERM this process received through diffprune's handlers (None: none)."""
    return _received["signum"]


def raise_on_signal(signum: int, frame: Any) -> None:
    """A signal handler that records the signal and raises ``KeyboardInterrupt``: a stage outside a training
    loop unwinds as on Ctrl-C, leaving only whole files."""
    _received["signum"] = signum
    raise KeyboardInterrupt(signal.Signals(signum).name)


def stop_on_sigterm() -> Any:
    """SIGTERM raises ``KeyboardInterrupt`` like Ctrl-C (a training loop's ``StopOnSignal`` takes over inside
    it), so the stage unwinds and ``report`` prints its line instead of the process dying silently. Returns the
    previous handler, for ``restore_sigterm`` (None outside the main thread, where nothing changes)."""
    note_signal(None)
    if threading.current_thread() is not threading.main_thread():
        return None
    return signal.signal(signal.SIGTERM, raise_on_signal)


def restore_sigterm(previous: Any) -> None:
    """Put back the SIGTERM handler that ``stop_on_sigterm`` replaced (a library caller's process is left as
    it was)."""
    if previous is not None:
        signal.signal(signal.SIGTERM, previous)


def interrupt_behind(e: BaseException | None) -> KeyboardInterrupt | None:
    """The ``KeyboardInterrupt`` in the cause/context chain of ``e`` (None when there is none): typer turns
    one into ``Exit(130)``, which ``sys.exit`` then wraps."""
    seen = set()
    while e is not None and id(e) not in seen:
        if isinstance(e, KeyboardInterrupt):
            return e
        seen.add(id(e))
        e = e.__cause__ or e.__context__
    return None


def report(e: KeyboardInterrupt, console: Console) -> None:
    """Print the interrupt line (stage and step when known, the checkpoint folder, the command to resume) and
    exit 130 after SIGINT, 143 after SIGTERM."""
    stage = getattr(e, "stage", None)  # set by the pipeline on the way out of a stage
    detail = " ".join(str(e).split()).split("; rerun with resume=True")[0] if isinstance(e, Interrupted) else ""
    what = "; ".join(p for p in (f"stage {stage}" if stage else "", detail) if p) or "no stage was computing"
    command = shlex.join(["diffprune", *sys.argv[1:]])
    console.print(f"[yellow]Interrupted.[/] {escape(what)}; finished stages and checkpoints are kept; run the "
                  f"same command again to resume: {escape(command)}", highlight=False, soft_wrap=True)
    sys.exit(143 if last_signal() == signal.SIGTERM else 130)
