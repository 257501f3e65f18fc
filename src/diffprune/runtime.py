"""The ground floor every stage shares: where to run, which process this is, progress bars, stop-on-signal.

One implementation of each, so that ``device: auto`` means the same thing in every stage, every stage stops on
SIGINT/SIGTERM the same way (checkpoint, then an ``Interrupted`` error that says how to resume), and every bar
looks alike.
"""
from __future__ import annotations

import os
import signal
import threading
from typing import TYPE_CHECKING, Any

import torch

from diffprune.interrupts import Interrupted, note_signal  # Interrupted: re-exported from here

if TYPE_CHECKING:  # accelerate is imported lazily: most helpers run without a launcher
    from accelerate import Accelerator, PartialState
    from rich.progress import Progress


class DeviceError(ValueError):
    """A requested device does not exist on this machine; the message names the device and the fix."""


# ---- devices -------------------------------------------------------------------------------------------


def resolve_device(device: str | torch.device | None = "auto") -> torch.device:
    """The ``torch.device`` for a config's ``device`` (see ``diffprune.config.Device``).

    ``None`` / ``"auto"``: the accelerate process's device under a multi-process launch, else CUDA when
    present, else CPU. An explicit ``cuda``/``cuda:N``/``mps`` that this machine lacks raises ``DeviceError``
    here, before any compute, instead of a torch error mid-stage (or a silent CPU run).
    """
    if device is None or str(device) == "auto":
        state = distributed_state()
        if state is not None:
            return state.device
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(device)
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise DeviceError(f"device {str(device)!r} requested but CUDA is not available; use device: auto or cpu")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise DeviceError(f"device {str(device)!r} requested but this machine has {torch.cuda.device_count()} "
                              f"CUDA device(s); use cuda:0 .. cuda:{torch.cuda.device_count() - 1} or auto")
    elif dev.type == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise DeviceError(f"device {str(device)!r} requested but MPS is not available; use device: auto or cpu")
    return dev


# ---- processes -----------------------------------------------------------------------------------------


def launch_world() -> tuple[int, int]:
    """(rank, world size) without creating any process state: from torch.distributed when initialised, else the
    launcher's ``RANK`` / ``WORLD_SIZE`` (torchrun, ``accelerate launch``), else (0, 1)."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))


def launch_precision() -> str:
    """The mixed precision the launch asks for: ``accelerate launch --mixed_precision X`` (or accelerate's config
    file, through the launcher) sets ``ACCELERATE_MIXED_PRECISION``; "no" without a launcher."""
    return os.environ.get("ACCELERATE_MIXED_PRECISION", "no").lower() or "no"


def distributed_state() -> PartialState | None:
    """accelerate's process state when launched with several processes, else None (and no side effects)."""
    if launch_world()[1] <= 1:
        return None
    state = process_state()
    return state if state.num_processes > 1 else None


def process_state() -> PartialState:
    """accelerate's (shared) process state, created on first use.

    Without CUDA it asks for a CPU (gloo) process group, which accelerate otherwise only forms under
    ``accelerate launch --cpu`` (``ACCELERATE_USE_CPU``); an existing shared state (e.g. the caller's
    ``Accelerator``) is returned as it is.
    """
    from accelerate import PartialState
    from accelerate.utils import parse_flag_from_env

    return PartialState(cpu=parse_flag_from_env("ACCELERATE_USE_CPU") or not torch.cuda.is_available())


# ---- CPU threads ---------------------------------------------------------------------------------------


def available_cpus(cgroup_root: str = "/sys/fs/cgroup") -> int:
    """The CPUs this process may really use: its affinity mask, capped by a cgroup CPU quota (a container's
    ``--cpus``), which torch's default thread count ignores. At least 1."""
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    quota = _cgroup_cpu_quota(cgroup_root)
    return max(1, min(cpus, int(quota)) if quota is not None else cpus)


def _cgroup_cpu_quota(root: str) -> float | None:
    """CPUs' worth of the cgroup quota (v2 ``cpu.max``, v1 ``cpu.cfs_quota_us`` / ``cpu.cfs_period_us``); None
    when there is none or it cannot be read."""
    try:
        quota, period = open(os.path.join(root, "cpu.max")).read().split()[:2]
        return None if quota == "max" else int(quota) / int(period)
    except (OSError, ValueError):
        pass
    try:
        quota = int(open(os.path.join(root, "cpu", "cpu.cfs_quota_us")).read())
        period = int(open(os.path.join(root, "cpu", "cpu.cfs_period_us")).read())
        return None if quota <= 0 or period <= 0 else quota / period
    except (OSError, ValueError):
        return None


def configure_threads() -> int:
    """Set torch's intra-op threads to ``OMP_NUM_THREADS`` when given, else to ``available_cpus()``; return it.

    Threads beyond the CPUs a process gets wait on each other at every parallel region; see
    docs/benchmarks.md ("CPU threads under contention") for the measurements behind this and behind
    ``OMP_WAIT_POLICY=PASSIVE``, which ``import diffprune`` sets when the environment does not."""
    given = os.environ.get("OMP_NUM_THREADS", "")
    threads = int(given) if given.isdigit() and int(given) > 0 else available_cpus()
    if torch.get_num_threads() != threads:
        torch.set_num_threads(threads)
    return threads


# ---- class weights -------------------------------------------------------------------------------------

# Class weights ({class: a_k}) must sum to 1 within this; the trainer then divides them by their sum. 1e-3, not 1e-6: weights
# that diffprune writes sum to 1 within ~1e-15 (float64, exact JSON round trip), so the tolerance only matters
# for weights a person typed or rounded, e.g. four decimals for up to ~20 classes; the renormalisation then
# moves no weight by more than 0.1 % (relative), well inside DRO's own noise. A real mistake (a digit off,
# 0.2 for 0.02) is still far outside it.
WEIGHT_SUM_TOLERANCE = 1e-3


def check_weight_sum(total: float, source: str, error: type[Exception]) -> None:
    """Raise ``error`` naming ``source`` unless the weights' ``total`` is 1 within ``WEIGHT_SUM_TOLERANCE``."""
    if not abs(total - 1.0) <= WEIGHT_SUM_TOLERANCE:
        raise error(f"{source} must sum to 1 (a distribution over classes; tolerance {WEIGHT_SUM_TOLERANCE}), "
                    f"got sum {total:.6f}; divide them by their sum")


# ---- progress ------------------------------------------------------------------------------------------


def progress_bar(*fields: str, enabled: bool = True, rate: str | None = None, transient: bool = False) -> Progress:
    """A rich bar: description, bar, done/total, then each of ``fields`` (rich format strings such as
    ``"loss {task.fields[loss]:.4f}"``), the rate in ``rate`` units per second (e.g. ``"img/s"``; rich's
    running estimate of the task's speed), elapsed and remaining time. ``enabled=False``: a silent bar whose
    tasks still count, so callers need no second code path."""
    from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn,
                               TimeRemainingColumn)

    columns: list[Any] = [TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                          *(TextColumn(f) for f in fields)]
    if rate is not None:
        columns.append(_rate_column(rate))
    columns += [TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn()]
    return Progress(*columns, disable=not enabled, transient=transient)


def _rate_column(unit: str) -> Any:
    from rich.progress import ProgressColumn
    from rich.text import Text

    class RateColumn(ProgressColumn):
        def render(self, task) -> Text:  # noqa: ANN001 (rich's Task)
            return Text(f"   ... {unit}" if task.speed is None else f"{task.speed:6.1f} {unit}")

    return RateColumn()


# ---- stop on signal ------------------------------------------------------------------------------------


class StopOnSignal:
    """Within ``with StopOnSignal() as stop:``, SIGINT/SIGTERM set ``stop.requested`` instead of killing the
    process, so the loop can checkpoint at the end of its step and raise an ``Interrupted`` subclass.

    The first signal also restores the previous handler: a second signal acts as it would without us (Ctrl-C
    raises KeyboardInterrupt at once, SIGTERM terminates), so a stuck step can still be killed. Handlers are
    installed only in the main thread (Python's rule); elsewhere ``requested`` stays False.
    """

    def __init__(self) -> None:
        self._flag = False
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> "StopOnSignal":
        self._flag = False
        note_signal(None)  # what ``interrupts.last_signal`` reports is the signal that stopped this loop
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()

    def _handle(self, signum: int, frame: Any) -> None:
        self._flag = True
        note_signal(signum)
        signal.signal(signum, self._previous.get(signum, signal.SIG_DFL))

    @property
    def requested(self) -> bool:
        """Whether a signal arrived (this process only)."""
        return self._flag

    def requested_by_any(self, accelerator: Accelerator, sync: bool) -> bool:
        """Whether any process got a signal. Several processes OR-reduce the flag only when ``sync`` (a
        collective: every process must call it at the same steps), so all stop at the same step; between
        syncs they report False."""
        if accelerator.num_processes == 1:
            return self._flag
        if not sync:
            return False
        flag = torch.tensor(float(self._flag), device=accelerator.device)
        return bool(accelerator.reduce(flag, "max").item() > 0)


__all__ = ["WEIGHT_SUM_TOLERANCE", "DeviceError", "Interrupted", "StopOnSignal", "available_cpus", "check_weight_sum",
           "configure_threads", "distributed_state", "launch_precision", "launch_world", "process_state",
           "progress_bar", "resolve_device"]
