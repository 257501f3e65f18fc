"""The trainer's commit order (issue 28): ``model/`` is written before the state that says a step is done, a
resume at the final step verifies ``model/`` against the checksum the state recorded, and a failed final write
leaves the training unfinished with one clear line. Faults are aimed with ``diffprune.io.faults``."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from diffprune.data import ImageDataset
from diffprune.diffusion import TrainConfig, TrainError, read_meta, train
from diffprune.diffusion.checkpoint import checkpoint_step
from diffprune.errors import user_message
from diffprune.io import faults

WEIGHTS_FILE = "model/diffusion_pytorch_model.safetensors"


class Killed(BaseException):
    """Stands in for SIGKILL in-process: raised where the hook would kill, unwinds like a crash."""


@pytest.fixture(scope="module")
def dataset() -> ImageDataset:
    rng = np.random.default_rng(1)
    return ImageDataset(rng.integers(0, 256, (16, 1, 8, 8)).astype(np.uint8), np.arange(16) % 2, ["a", "b"])


CFG = TrainConfig(preset="ddpm-tiny", steps=4, batch_size=8, lr=1e-3, ema_decay=0.9, log_every=1,
                  checkpoint_every=2, seed=5)


@pytest.fixture(scope="module")
def straight(dataset, tmp_path_factory):
    """An uninterrupted run, and the numbered writes it made (``DIFFPRUNE_FAULT_LOG``)."""
    out = tmp_path_factory.mktemp("straight")
    log = out.parent / "writes.log"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv(faults.FAULT_LOG_ENV, str(log))
        train(CFG, dataset, out, progress=False)
    writes = [line.split("\t") for line in log.read_text().splitlines()]
    return out, [(int(n), Path(p)) for n, p in writes]


def _same_weights(a: Path, b: Path) -> bool:
    wa, wb = load_file(a / WEIGHTS_FILE), load_file(b / WEIGHTS_FILE)
    return wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)


def _aim(monkeypatch, spec: str) -> None:
    def kill(pid, sig):
        raise Killed(spec)

    monkeypatch.setattr(faults.os, "kill", kill)
    monkeypatch.setenv(faults.FAULT_ENV, spec)


def test_the_model_is_written_before_the_state_of_every_checkpoint(straight):
    _, writes = straight
    order = [p.name for _, p in writes if p.name in ("model", "state")]
    assert order == ["model", "state", "model", "state"]  # checkpoints at steps 2 and 4


def test_kill_right_after_the_final_state_resumes_to_the_right_model(dataset, straight, tmp_path, monkeypatch):
    out, writes = straight
    final_state = max(n for n, p in writes if p.name == "state")
    _aim(monkeypatch, f"kill@{final_state}")
    with pytest.raises(Killed):
        train(CFG, dataset, tmp_path, progress=False)
    assert checkpoint_step(tmp_path) == 4
    monkeypatch.delenv(faults.FAULT_ENV)
    assert train(CFG, dataset, tmp_path, resume=True, progress=False)["resumed_from"] == 4
    assert _same_weights(out, tmp_path)


def test_a_stale_model_behind_a_finished_state_is_rewritten_from_the_checkpoint(dataset, straight, tmp_path):
    """The probe's case as the old order left it: state/ at the final step, model/ of the step before."""
    out, _ = straight
    shutil.copytree(out, tmp_path / "run")
    run = tmp_path / "run"
    train(CFG.model_copy(update={"steps": 2}), dataset, tmp_path / "short", progress=False)
    shutil.rmtree(run / "model")
    shutil.copytree(tmp_path / "short" / "model", run / "model")
    assert not _same_weights(out, run) and read_meta(run)["steps"] == 2
    assert train(CFG, dataset, run, resume=True, progress=False)["resumed_from"] == 4
    assert _same_weights(out, run) and read_meta(run)["steps"] == 4


@pytest.mark.parametrize("kind", ["erofs", "enospc"])
def test_a_failed_final_model_write_leaves_training_unfinished(dataset, straight, tmp_path, monkeypatch, kind):
    out, writes = straight
    final_model = max(n for n, p in writes if p.name == "model")
    _aim(monkeypatch, f"{kind}@{final_model}")
    with pytest.raises(Exception) as failure:
        train(CFG, dataset, tmp_path, progress=False)
    line = user_message(failure.value)
    assert line is not None and "\n" not in line, line
    assert str(tmp_path / "model") in line and "MB free on the file system of" in line, line
    assert "run the same command" in line and "delete" not in line, line
    if kind == "erofs":
        assert isinstance(failure.value, TrainError) and "writable" in line
    assert checkpoint_step(tmp_path) == 2  # the state still says step 2: not finished
    assert (tmp_path / "metrics.jsonl").is_file()
    monkeypatch.delenv(faults.FAULT_ENV)
    assert train(CFG, dataset, tmp_path, resume=True, progress=False)["resumed_from"] == 2
    assert _same_weights(out, tmp_path)


def test_weights_get_the_umask_permissions(straight):
    out, _ = straight
    for f in [out / WEIGHTS_FILE, out / "state" / "ema.safetensors"]:
        assert f.stat().st_mode & 0o777 == 0o666 & ~_umask(), f


def _umask() -> int:
    import os

    mask = os.umask(0)
    os.umask(mask)
    return mask


def test_a_failed_extension_keeps_metrics_and_the_rerun_finishes_it(tmp_path, monkeypatch):
    """A finished stage extended (more steps) whose final model write fails: the rerun resumes it, and the logs
    that the failed attempt appended (so differing from the old manifest's checksum) are kept, not deleted."""
    import diffprune.diffusion.checkpoint as checkpoint
    from diffprune.pipeline import Pipeline, load_run_config

    tiny = ["data.limit=40", "data.resolution=8", "data.resize=pad", "embed.encoder=pixels", "select.ratio=0.5",
            "arms=[{method: random}]", "train.preset=ddpm-tiny", "train.batch_size=8", "train.checkpoint_every=2",
            "train.log_every=1", f"runs_dir={tmp_path}"]

    def run(steps):
        pipe = Pipeline(load_run_config("configs/demo.yaml", [*tiny, f"train.steps={steps}"]), progress=False)
        return pipe.train(pipe.cfg.arms[0])

    run(2)
    folder = tmp_path / "demo/train/random"
    real_export = checkpoint.export_model

    def read_only_at_the_end(ema, cfg, dataset, out_dir, step, scheduler):
        if step == 4:
            raise PermissionError(13, "Permission denied", str(out_dir / "model"))
        return real_export(ema, cfg, dataset, out_dir, step, scheduler)

    monkeypatch.setattr(checkpoint, "export_model", read_only_at_the_end)
    with pytest.raises(TrainError, match="writable"):
        run(4)
    monkeypatch.undo()
    run(4)
    steps = [json.loads(line)["step"] for line in (folder / "metrics.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3, 4]
    assert read_meta(folder)["steps"] == 4
