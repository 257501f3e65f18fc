"""``diffprune sweep --devices N``: the grid's arms run concurrently, one process per device.

Each worker is the same sweep command with ``--worker I``. It walks the arms starting with its own share (arms
I, I + N, ...) and then the others', under the run directory's folder locks with waiting on: an arm another
worker is computing is reused once that one finishes instead of being computed twice, and a worker done with its
share takes the arms nobody has started. Worker I sees one GPU (the I-th visible one) or, on a CPU, 1/N of the
available cores. The grid is embarrassingly parallel, so this scales where one arm on all devices (a gradient
all-reduce every step) does not. The parent then builds the report from the cached cells.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import torch

from diffprune.runtime import available_cpus


class WorkersError(RuntimeError):
    """A sweep worker failed or the devices do not fit; the message names the worker's log."""


def worker_order(labels: list[str], worker: int, workers: int) -> list[str]:
    """The arms in the order worker ``worker`` of ``workers`` visits them: its own share first, then the rest."""
    own = labels[worker::workers]
    return own + [label for label in labels if label not in own]


def worker_env(worker: int, workers: int, environ: dict[str, str] | None = None) -> dict[str, str]:
    """The environment of worker ``worker``: waiting on locks, and its device (one GPU or a share of the CPUs)."""
    env = dict(os.environ if environ is None else environ)
    env["DIFFPRUNE_WAIT"] = "1"
    gpus = torch.cuda.device_count()
    if gpus:
        if gpus < workers:
            raise WorkersError(f"--devices {workers} but {gpus} GPU(s) are visible; pass --devices {gpus} or fewer")
        visible = [d for d in env.get("CUDA_VISIBLE_DEVICES", "").split(",") if d.strip()] or \
            [str(i) for i in range(gpus)]
        env["CUDA_VISIBLE_DEVICES"] = visible[worker]
    else:
        env["OMP_NUM_THREADS"] = str(max(1, available_cpus() // workers))
    return env


def run_workers(argv: list[str], workers: int, log_dir: Path) -> list[Path]:
    """Start ``workers`` processes of ``diffprune ARGV --worker I``, wait for all; their log files.

    Ctrl-C or SIGTERM reaches every worker (each checkpoints and stops); a failed worker raises
    ``WorkersError`` with the last line of its log once all have ended."""
    log_dir.mkdir(parents=True, exist_ok=True)
    logs = [log_dir / f"worker-{i}.log" for i in range(workers)]
    entry = "from diffprune.cli import main; main()"
    procs = []
    for i, log in enumerate(logs):
        with open(log, "w") as out:  # the child keeps its own descriptor
            procs.append(subprocess.Popen([sys.executable, "-c", entry, *argv, "--worker", str(i)],
                                          env=worker_env(i, workers), stdout=out, stderr=subprocess.STDOUT))
    try:
        codes = [p.wait() for p in procs]
    except KeyboardInterrupt:
        for p in procs:
            p.send_signal(signal.SIGINT)
        for p in procs:
            p.wait()
        raise
    failed = [(i, code) for i, code in enumerate(codes) if code != 0]
    if failed:
        i, code = failed[0]
        lines = [ln for ln in logs[i].read_text(errors="replace").splitlines() if ln.strip()]
        raise WorkersError(f"sweep worker {i} exited with status {code} ({lines[-1] if lines else 'no output'}); "
                           f"its log: {logs[i]}; fix the cause and run the same command again (finished arms are kept)")
    return logs
