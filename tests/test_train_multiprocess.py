"""Two CPU processes (gloo) == one process with the same global batch.

Launcher: in accelerate 1.15 ``accelerate launch --cpu --num_processes 2`` starts ONE process unless an MPI
hostfile is given, so the test uses ``accelerate launch --multi_gpu --num_processes 2`` (torchrun underneath)
with ``ACCELERATE_USE_CPU=1`` and no visible GPU, which gives accelerate's MULTI_CPU mode on gloo.

The trainer gives every process the same global batch, timesteps and noise and lets each take its half, so the
only difference from one process is the order of float additions in the gradient all-reduce. Stated tolerance,
after 4 Adam steps at lr 1e-3 (one step moves a weight by up to ~1e-3): losses within rtol 1e-5; raw and EMA
weights within 1e-4 absolute (a tenth of one Adam step) and 1e-8 on average. The largest gaps (~1e-5) sit in
attention key biases, whose true gradient is zero (softmax ignores them), so Adam normalises pure rounding
noise there. Sampling with two processes gathers the same images as one process (within 1 grey level).

A second launch sends SIGTERM to rank 0 only, checks that both ranks checkpoint at the same step, resumes, and
must end bit-identical to the uninterrupted 2-process run.

This file is also the worker: ``accelerate launch ... tests/test_train_multiprocess.py OUT_DIR [interrupt]``.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np

WEIGHTS = {"a": 0.1, "b": 0.2, "c": 0.3, "d": 0.4}


def _dataset():
    from diffprune.data import ImageDataset

    rng = np.random.default_rng(0)
    return ImageDataset(rng.integers(0, 256, (24, 1, 8, 8), dtype=np.uint8), np.arange(24) % 4, list("abcd"))


def _config():
    from diffprune.diffusion import TrainConfig

    return TrainConfig(preset="ddpm-tiny", steps=4, batch_size=8, lr=1e-3, warmup_steps=2, ema_decay=0.9,
                       log_every=1, checkpoint_every=2, seed=7, hflip=True, conditional=True)


def _initial_weights() -> dict:
    from diffprune.diffusion import create_model

    model = create_model("ddpm-tiny", sample_size=8, in_channels=1, out_channels=1, num_class_embeds=5)
    return model.state_dict()


def _run(out: Path) -> dict:
    """Train, then sample from the trained model; identical code for 1 and 2 processes."""
    from accelerate import PartialState

    from diffprune.diffusion import SampleConfig, generate, load_model, sample_images, save_samples, train

    summary = train(_config(), _dataset(), out / "train", class_weights=WEIGHTS, progress=False)
    model, scheduler = load_model(out / "train")
    sample_cfg = SampleConfig(num_samples=5, steps=3, batch_size=2, guidance_scale=2.0)
    images = sample_images(model, scheduler, sample_cfg, progress=False)
    generate(out / "train", out / "generated", sample_cfg, progress=False, chunk=2)  # chunks split over processes
    if PartialState().is_main_process:
        save_samples(out / "samples", images)
        (out / "summary.json").write_text(json.dumps(summary))
    return summary


def test_two_processes_match_one(tmp_path):
    import torch
    from safetensors.torch import load_file

    launcher = shutil.which("accelerate", path=os.path.dirname(sys.executable)) or shutil.which("accelerate")
    env = dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", ACCELERATE_USE_CPU="1", CUDA_VISIBLE_DEVICES="")
    cmd = [launcher, "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1", "--mixed_precision", "no",
           "--dynamo_backend", "no", __file__, str(tmp_path / "two")]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert json.loads((tmp_path / "two" / "summary.json").read_text())["processes"] == 2
    proc = subprocess.run([*cmd[:-1], str(tmp_path / "resumed"), "interrupt"], env=env, capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    resumed = json.loads((tmp_path / "resumed" / "summary.json").read_text())
    assert "step 2/4" in resumed["stopped"] and resumed["resumed_from"] == 2  # log_every=1: stop after step 2
    for name in ("state/model.safetensors", "state/ema.safetensors"):  # 2 processes, interrupted == straight
        a, b = load_file(tmp_path / "two" / "train" / name), load_file(tmp_path / "resumed" / "train" / name)
        assert all(torch.equal(a[k], b[k]) for k in a), name

    torch.set_num_threads(1)
    one = _run(tmp_path / "one")
    assert one["processes"] == 1

    rows = {k: [json.loads(x) for x in (tmp_path / k / "train" / "metrics.jsonl").read_text().splitlines()]
            for k in ("one", "two")}
    np.testing.assert_allclose([r["loss"] for r in rows["two"]], [r["loss"] for r in rows["one"]], rtol=1e-5)
    torch.manual_seed(7)  # the run seed: the trainer's initial weights
    init = _initial_weights()
    for name in ("state/model.safetensors", "state/ema.safetensors"):
        a, b = load_file(tmp_path / "one" / "train" / name), load_file(tmp_path / "two" / "train" / name)
        diffs = torch.cat([(a[k] - b[k]).abs().flatten() for k in a])
        assert diffs.max() < 1e-4 and diffs.mean() < 1e-8, (name, diffs.max().item(), diffs.mean().item())
        moved = torch.cat([(a[k] - init[k]).abs().flatten() for k in a])
        assert moved.mean() > 1e-4  # the weights did move: the comparison is not vacuous
    # 2 processes saved 2 RNG states
    assert (tmp_path / "two" / "train" / "state" / "random_states_1.pkl").exists()
    with np.load(tmp_path / "one" / "samples" / "samples.npz") as f1, \
            np.load(tmp_path / "two" / "samples" / "samples.npz") as f2:
        assert f1["arr_0"].shape == f2["arr_0"].shape == (5, 8, 8, 1)
        assert np.abs(f1["arr_0"].astype(int) - f2["arr_0"].astype(int)).max() <= 1
        for k in ("one", "two"):
            with np.load(tmp_path / k / "generated" / "samples.npz") as g:
                assert np.abs(g["arr_0"].astype(int) - f1["arr_0"].astype(int)).max() <= 1
                assert g["labels"].tolist() == [0, 1, 2, 3, 0]


def _interrupt_then_resume(out: Path) -> None:
    """SIGTERM reaches rank 0 only during step 1; both ranks must stop at the same step (the flag is OR-reduced
    at log steps), checkpoint, and a resumed run must finish exactly like the uninterrupted one."""
    import signal

    from accelerate import PartialState

    import diffprune.diffusion.trainer as trainer
    from diffprune.diffusion import TrainingInterrupted, train

    real = trainer.global_batch_indices

    def signal_rank0(step, *args, **kwargs):
        if step == 1 and PartialState().process_index == 0:
            os.kill(os.getpid(), signal.SIGTERM)
        return real(step, *args, **kwargs)

    trainer.global_batch_indices = signal_rank0
    try:
        train(_config(), _dataset(), out / "train", class_weights=WEIGHTS, progress=False)
        raise AssertionError("training was not interrupted")
    except TrainingInterrupted as e:
        stopped = str(e)
    trainer.global_batch_indices = real
    summary = train(_config(), _dataset(), out / "train", class_weights=WEIGHTS, resume=True, progress=False)
    if PartialState().is_main_process:
        (out / "summary.json").write_text(json.dumps({**summary, "stopped": stopped}))


if __name__ == "__main__":
    if len(sys.argv) > 2 and sys.argv[2] == "interrupt":
        _interrupt_then_resume(Path(sys.argv[1]))
    else:
        _run(Path(sys.argv[1]))
