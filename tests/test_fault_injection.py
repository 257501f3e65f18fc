"""Fast fault injection (issue 16): concurrent runs of one run directory, kill -9 mid-stage, damaged caches,
stale temporaries, a failing --force, and settings that must not invalidate a cache.

The long version, with >= 20 kill -9 trials per stage, is ``benchmarks/fault_injection.py``.
"""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

TINY = ["data.limit=60", "data.resolution=8", "data.resize=pad", "embed.encoder=pixels", "select.ratio=0.5",
        "arms=[{method: random}]",
        "train.preset=ddpm-tiny", "train.steps=4", "train.batch_size=8", "train.checkpoint_every=2",
        "sample.num_samples=8", "sample.steps=2", "sample.batch_size=8",
        "evaluate.num_real=16", "evaluate.kid_subset_size=4", "evaluate.kid_subsets=2",
        "evaluate.metrics=[kid]", "evaluate.classwise=false", "evaluate.cross_check=false"]
STAGE_DIRS = {"embed": "features/pixels-size112", "select": "selection/random-r0.5", "train": "train/random",
              "sample": "samples/random", "evaluate": "eval/random"}


def _cmd(verb, runs, *extra, config="configs/demo.yaml"):
    """``python -m diffprune.cli VERB --no-progress [CONFIG] [--arm random] --set ...`` (``extra``: sets)."""
    args = [sys.executable, "-m", "diffprune.cli", verb, "--no-progress"]
    args += [config] if verb == "run" else (["--arm", "random"] if verb != "embed" else [])
    for item in [*TINY, f"runs_dir={runs}", *extra]:
        args += ["--set", item]
    return args


def _env():
    return {**os.environ, "COLUMNS": "200", "OMP_NUM_THREADS": "1"}


@pytest.mark.slow
def test_two_concurrent_runs_compute_each_stage_once(tmp_path):
    procs = [subprocess.Popen([*_cmd("run", tmp_path), "--wait"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              text=True, env=_env()) for _ in range(2)]
    outs = [p.communicate(timeout=300)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    for stage, folder in STAGE_DIRS.items():
        ran = sum(f"run     {stage:<9} {folder}" in out for out in outs)
        reused = sum(f"cached  {stage:<9} {folder}" in out for out in outs)
        assert (ran, reused) == (1, 1), (stage, outs)
    root = tmp_path / "demo"
    assert not list(root.rglob(".*.tmp")) and not list(root.rglob(".*.old"))
    assert json.loads((root / "eval/random/metrics.json").read_text())["kid"] is not None


def _kill_when(path: Path, cmd, timeout: float = 120.0) -> int:
    """Start ``cmd``, SIGKILL it as soon as ``path`` exists; its return code."""
    p = subprocess.Popen(cmd, env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    t0 = time.monotonic()
    while p.poll() is None and not path.exists() and time.monotonic() - t0 < timeout:
        time.sleep(0.005)
    p.send_signal(signal.SIGKILL)
    return p.wait()


@pytest.mark.slow
def test_kill_9_mid_train_resumes_to_the_same_bytes(tmp_path):
    longer = ("train.steps=40", "train.checkpoint_every=5")
    straight, killed = tmp_path / "a", tmp_path / "b"
    assert subprocess.run(_cmd("train", straight, *longer), env=_env(),
                          capture_output=True).returncode == 0
    code = _kill_when(killed / "demo/train/random/state/trainer_state.json",
                      _cmd("train", killed, *longer))
    assert code == -signal.SIGKILL
    assert not (killed / "demo/train/random/manifest.json").exists()
    r = subprocess.run(_cmd("train", killed, *longer), env=_env(), capture_output=True, text=True)
    assert r.returncode == 0 and "resume  train" in r.stderr, r.stderr
    for rel in ("model/diffusion_pytorch_model.safetensors", "state/model.safetensors", "state/ema.safetensors"):
        a, b = (r / "demo/train/random" / rel for r in (straight, killed))
        assert a.read_bytes() == b.read_bytes(), rel
    assert not list((killed / "demo").rglob(".*.tmp"))


def _run_stage(verb, runs, *extra):
    from typer.testing import CliRunner

    from diffprune.cli import app

    r = CliRunner().invoke(app, _cmd(verb, runs, *extra)[3:], catch_exceptions=False)
    assert r.exit_code == 0, r.output
    return r.output


def test_nan_written_into_cached_features_is_detected_and_recomputed(tmp_path):
    _run_stage("select", tmp_path)
    feats = tmp_path / "demo/features/pixels-size112/features.npy"
    good = feats.read_bytes()
    m = np.load(feats, mmap_mode="r+")
    m[7, 3] = np.nan
    m.flush()
    del m
    out = _run_stage("select", tmp_path)
    assert "damaged embed" in out and "run     embed" in out and "cached  select" in out
    assert feats.read_bytes() == good


def test_stale_temporaries_of_a_killed_writer_are_removed_at_start(tmp_path):
    _run_stage("embed", tmp_path)
    stage = tmp_path / "demo/features/pixels-size112"
    (stage / "manifest.json").unlink()
    leftover = stage / ".features.npy.999999.abc.tmp"  # what a kill -9 mid atomic write leaves
    leftover.write_bytes(b"half")
    (stage / ".state.tmp").mkdir()
    _run_stage("embed", tmp_path)
    assert not leftover.exists() and not (stage / ".state.tmp").exists()


def test_failed_force_keeps_the_good_manifest(tmp_path, monkeypatch):
    from typer.testing import CliRunner

    import diffprune.pipeline.runner as runner
    from diffprune.cli import app

    _run_stage("select", tmp_path)
    manifest = tmp_path / "demo/selection/random-r0.5/manifest.json"
    before = manifest.read_text()

    def broken(*a, **k):
        raise RuntimeError("out of memory")

    monkeypatch.setattr(runner, "select_from_config", broken)
    r = CliRunner().invoke(app, [*_cmd("select", tmp_path)[3:], "--force"])
    assert r.exit_code != 0 and manifest.read_text() == before
    monkeypatch.undo()
    assert "cached  select" in _run_stage("select", tmp_path)


def test_checkpoint_every_keeps_the_cache(tmp_path):
    _run_stage("train", tmp_path)
    out = _run_stage("train", tmp_path, "train.checkpoint_every=3")
    assert "cached  train" in out and "run     train" not in out
