"""train.push_to_hub: what is uploaded, when, once per trained weights, and the early refusal without a token.
huggingface_hub's HfApi is replaced by a recorder: no network."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
from pydantic import ValidationError

from diffprune.diffusion import TrainConfig
from diffprune.pipeline.config import ArmConfig, RunConfig

TRAIN = dict(preset="ddpm-tiny", steps=2, batch_size=8, lr=1e-3, warmup_steps=0, ema_decay=0.5, checkpoint_every=0)


def _cfg(tmp_path: Path, **train) -> RunConfig:
    return RunConfig(name="hub", runs_dir=str(tmp_path), data={"spec": "digits", "limit": 32, "resolution": 8},
                     train={**TRAIN, **train}, arms=[ArmConfig(name="full+all", method="full")])


@pytest.fixture
def hub(monkeypatch):
    """A fake token and an HfApi that records its calls and the files of the folder at upload time."""
    import huggingface_hub

    calls: list[tuple] = []

    class Recorder:
        def __init__(self, token=None):
            calls.append(("init", token))

        def create_repo(self, repo_id, private=False, exist_ok=False):
            calls.append(("create_repo", repo_id, private))

        def upload_folder(self, folder_path, repo_id):
            files = sorted(p.relative_to(folder_path).as_posix() for p in Path(folder_path).rglob("*") if p.is_file())
            done = (Path(folder_path).parent / "manifest.json").is_file()  # the train stage finished first
            calls.append(("upload_folder", Path(folder_path), repo_id, files, done))

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setenv("HF_TOKEN", "hf_fake_token")
    monkeypatch.setattr(huggingface_hub, "HfApi", Recorder)
    return calls


def test_config_validation_names_the_field_and_the_fix():
    with pytest.raises(ValidationError, match="push_to_hub needs hub_model_id"):
        TrainConfig(push_to_hub=True)
    with pytest.raises(ValidationError, match="not a hub repository id"):
        TrainConfig(push_to_hub=True, hub_model_id="user/two words")
    with pytest.raises(ValidationError, match="conditional: true"):
        TrainConfig(push_to_hub=True, hub_model_id="user/m", conditional=True)
    with pytest.raises(ValidationError, match="not preset 'dit-s-2'"):
        TrainConfig(push_to_hub=True, hub_model_id="user/m", preset="dit-s-2")
    with pytest.raises(ValidationError, match=r"put \{arm\} in it"):
        RunConfig(train={"push_to_hub": True, "hub_model_id": "user/m"})  # the two default arms, one repo
    RunConfig(train={"push_to_hub": True, "hub_model_id": "user/m-{arm}"})


def test_push_after_training_once_per_weights(tmp_path, hub):
    from safetensors.torch import load_file

    from diffprune.pipeline.runner import Pipeline

    pipe = Pipeline(_cfg(tmp_path, push_to_hub=True, hub_model_id="me/digits-{arm}"), progress=False)
    model, _ = pipe.train(pipe.arm("full+all"))  # (path, fingerprint), the stage contract
    out = model.parent
    assert [c[0] for c in hub] == ["init", "create_repo", "upload_folder"]
    assert hub[0] == ("init", "hf_fake_token")
    assert hub[1] == ("create_repo", "me/digits-full-all", True)  # '+' is refused in repo names; private default
    _, folder, repo, files, stage_done = hub[2]
    assert folder == out / "pipeline" and repo == "me/digits-full-all"
    assert files == ["model_index.json", "scheduler/scheduler_config.json", "unet/config.json",
                     "unet/diffusion_pytorch_model.safetensors"]
    assert stage_done  # uploaded after the train stage's manifest was written
    pushed, trained = load_file(folder / files[-1]), load_file(model / "diffusion_pytorch_model.safetensors")
    assert pushed.keys() == trained.keys() and all(pushed[k].equal(trained[k]) for k in pushed)
    assert json.loads((out / "pushed.json").read_text())["repo_id"] == "me/digits-full-all"
    manifest = (out / "manifest.json").read_text()
    Pipeline(pipe.cfg, progress=False).train(pipe.arm("full+all"))  # cached, already pushed: no upload
    assert len(hub) == 3
    other = pipe.cfg.model_copy(update={"train": pipe.cfg.train.model_copy(update={"hub_model_id": "me/other"})})
    Pipeline(other, progress=False).train(pipe.arm("full+all"))  # a new repository: pushed, not retrained
    assert [c[0] for c in hub[3:]] == ["init", "create_repo", "upload_folder"] and hub[-1][2] == "me/other"
    assert (out / "manifest.json").read_text() == manifest  # the push fields are not part of the stage's config


def test_without_a_token_it_stops_before_any_stage(tmp_path, hub, monkeypatch):
    from typer.testing import CliRunner

    import diffprune.diffusion
    from diffprune.cli import app
    from diffprune.export import pipeline as pl
    from diffprune.pipeline.runner import Pipeline

    monkeypatch.setattr(pl, "hub_token", lambda: None)  # as for a user who never logged in
    monkeypatch.setattr(diffprune.diffusion, "train", lambda *a, **k: pytest.fail("trained without a token"))
    cfg = _cfg(tmp_path, push_to_hub=True, hub_model_id="me/m")
    pipe = Pipeline(cfg, progress=False)
    with pytest.raises(pl.PipelineExportError, match="HF_TOKEN"):
        pipe.train(pipe.arm("full+all"))
    assert not (tmp_path / "hub" / "train").exists() and not [c for c in hub if c[0] != "init"]
    args = ["train", "--no-progress", "--set", f"runs_dir={tmp_path}", "--set", "train.push_to_hub=true",
            "--set", "train.hub_model_id=me/m-{arm}"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code != 0 and "HF_TOKEN" in str(result.exception or result.output)
    assert not (tmp_path / "demo" / "embed").exists()


def test_push_fields_do_not_change_the_resume_hash():
    """An interrupted run may be resumed with push_to_hub switched on: the training trajectory is the same."""
    import numpy as np

    from diffprune.data import ImageDataset
    from diffprune.diffusion.checkpoint import trajectory_hash as _trajectory_hash

    ds = ImageDataset(np.zeros((4, 1, 8, 8), np.uint8), None, [])
    plain = TrainConfig(**TRAIN)
    pushing = TrainConfig(**TRAIN, push_to_hub=True, hub_model_id="me/m", hub_private=False)
    assert _trajectory_hash(plain, ds, None) == _trajectory_hash(pushing, ds, None)
    assert _trajectory_hash(plain, ds, None) != _trajectory_hash(TrainConfig(**{**TRAIN, "lr": 2e-3}), ds, None)
