"""DRO under ``accelerate launch``: two CPU processes (gloo) hold the same weights as one process.

Launched as tests/test_train_multiprocess.py does (``--multi_gpu --num_processes 2`` with ACCELERATE_USE_CPU=1:
torchrun on gloo). Each process sees half of the class-balanced global batch; the DRO hook sums the per-class
excess statistics (and the timestep estimator's bucket means) over both, so every update uses the whole batch
and both processes end with identical weights. What differs from one process: the proxy's forward on 10
instead of 20 images (other float summation orders, ~1e-7 relative) and the gradient all-reduce. Measured after
6 steps with eta 5: weights, excess and losses differ by <= 1.4e-7 absolute (the log-weights move by
eta * excess, so a 1e-7 excess difference is a ~5e-8 weight difference). We assert 1e-5: a hundredth of the
smallest distance any weight moved from uniform (0.003, checked below so the comparison is not vacuous), far
above rounding and far below any real disagreement (a process using only its own half-batch would differ by
the excess noise of a 10-image batch, ~1e-2). The 2-process run itself must
be identical on both ranks (exactly: they compute the same float64 statistics).

This file is also the worker: ``accelerate launch ... tests/test_dro_multiprocess.py OUT_DIR``.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np

CONFIG = dict(proxy_preset="ddpm-tiny", batch_size=20, lr=1e-3, warmup_steps=0, steps=6, estimator="timestep",
              eta=5.0, checkpoint_every=100)


def _run(out: Path) -> None:
    import torch

    from diffprune.data import load_dataset
    from diffprune.diffusion import create_scheduler, save_model
    from diffprune.reweighting import ReweightConfig, run_dro
    from diffprune.runtime import process_state
    from diffprune.reweighting.proxy import build_proxy

    torch.set_num_threads(1)
    digits = load_dataset("digits", resolution=8)
    cfg = ReweightConfig(**CONFIG)
    state = process_state()  # honours ACCELERATE_USE_CPU, as the trainer's Accelerator
    if state.is_main_process:
        save_model(out / "ref", build_proxy(cfg.model_copy(update={"seed": 123}), digits), create_scheduler("ddpm-tiny"))
    state.wait_for_everyone()
    numbers = run_dro(cfg, digits, out / "ref", out / "dro", progress=False)
    # every rank's own weights (not the file the main process wrote)
    from diffprune.reweighting.hook import HOOK_STATE

    with np.load(out / "dro" / "proxy" / "state" / HOOK_STATE) as f:
        average = f["average"]
    (out / f"rank{state.process_index}.json").write_text(json.dumps({"numbers": numbers,
                                                                      "average": average.tolist()}))


def test_two_processes_match_one(tmp_path):
    launcher = shutil.which("accelerate", path=os.path.dirname(sys.executable)) or shutil.which("accelerate")
    env = dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", ACCELERATE_USE_CPU="1", CUDA_VISIBLE_DEVICES="")
    cmd = [launcher, "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1", "--mixed_precision", "no",
           "--dynamo_backend", "no", __file__, str(tmp_path / "two")]
    (tmp_path / "two").mkdir()
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    (tmp_path / "one").mkdir()
    _run(tmp_path / "one")

    two = json.loads((tmp_path / "two" / "dro" / "summary.json").read_text())
    one = json.loads((tmp_path / "one" / "dro" / "summary.json").read_text())
    assert two["processes"] == 2 and one["processes"] == 1
    r0, r1 = (json.loads((tmp_path / "two" / f"rank{i}.json").read_text()) for i in (0, 1))
    assert r0 == r1  # both ranks hold the very same weights and numbers
    a1, a2 = np.array(list(one["weights"].values())), np.array(list(two["weights"].values()))
    assert np.abs(a1 - 0.1).min() > 1e-3, a1  # the weights moved: the comparison is not vacuous
    np.testing.assert_allclose(a2, a1, rtol=0, atol=1e-5)
    with np.load(tmp_path / "one" / "dro" / "trajectory.npz") as t1, \
            np.load(tmp_path / "two" / "dro" / "trajectory.npz") as t2:
        np.testing.assert_allclose(t2["weights"], t1["weights"], rtol=0, atol=1e-5)
        np.testing.assert_allclose(t2["excess"], t1["excess"], rtol=1e-4, atol=1e-7)
        np.testing.assert_allclose(t2["loss"], t1["loss"], rtol=1e-5)
        assert t2["steps"].tolist() == t1["steps"].tolist() and t1["present"].all()


if __name__ == "__main__":
    _run(Path(sys.argv[1]))
