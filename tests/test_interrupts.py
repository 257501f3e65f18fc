"""SIGINT and SIGTERM through the real console entry point (issue 28): the trainer checkpoints, the CLI prints
one line (stage, step, where the checkpoint is, the command to resume) and exits 130 / 143."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

TINY = ["data.limit=60", "data.resolution=8", "data.resize=pad", "embed.encoder=pixels", "select.ratio=0.5",
        "arms=[{method: random}]", "train.preset=ddpm-tiny", "train.steps=2000", "train.batch_size=8",
        "train.checkpoint_every=20"]


@pytest.mark.parametrize(("sig", "code"), [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_a_signal_prints_the_resume_line_and_exits_with_its_code(tmp_path, sig, code):
    args = ["train", "--no-progress", "--arm", "random"]
    for item in [*TINY, f"runs_dir={tmp_path}"]:
        args += ["--set", item]
    env = {**os.environ, "COLUMNS": "300", "OMP_NUM_THREADS": "1"}
    p = subprocess.Popen([sys.executable, "-c", "from diffprune.cli import main; main()", *args], env=env,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    state = tmp_path / "demo/train/random/state/trainer_state.json"
    t0 = time.monotonic()
    while p.poll() is None and not state.exists() and time.monotonic() - t0 < 240:
        time.sleep(0.05)
    p.send_signal(sig)
    _, err = p.communicate(timeout=120)
    assert p.returncode == code, err
    line = [x for x in err.splitlines() if x.startswith("Interrupted.")]
    assert len(line) == 1, err
    assert "stage train" in line[0] and "at step " in line[0], line
    assert str(tmp_path / "demo/train/random/state") in line[0], line
    assert "run the same command again to resume: diffprune train --no-progress --arm random" in line[0], line
    assert "Traceback" not in err
