"""Evaluation during training (train.eval_every): the steps it runs at, exact resume of the curve, isolation of the
training trajectory, and the evaluator against evaluate() on the same samples."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from diffprune.config import ConfigError, validate_config
from diffprune.data import ImageDataset
from diffprune.diffusion import TrainConfig, TrainError, create_model, create_scheduler, train
from diffprune.diffusion.sampling import sample_images
from diffprune.diffusion.checkpoint import trajectory_hash as _trajectory_hash
from diffprune.evaluation import EvalConfig, evaluate
from diffprune.diffusion.config import TrainEvalConfig
from diffprune.evaluation.during_training import TrainingEvaluator
from test_evaluation import TinyNet

CLASSES = ["a", "b", "c", "d"]


@pytest.fixture(scope="module")
def dataset() -> ImageDataset:
    rng = np.random.default_rng(1)
    return ImageDataset(rng.integers(0, 256, (24, 1, 8, 8)).astype(np.uint8), np.arange(24) % 4, CLASSES, name="toy")


def _cfg(**kw) -> TrainConfig:
    base = dict(preset="ddpm-tiny", steps=7, batch_size=8, lr=1e-3, warmup_steps=2, ema_decay=0.9, log_every=1,
                checkpoint_every=0, seed=5, eval_every=3, model_overrides={"dropout": 0.2})
    base.update(kw)
    return TrainConfig(**base)


class WeightProbe:
    """A stand-in evaluator: its "fid" is the sum of the EMA weights (so the curve is a function of the training
    trajectory), and it draws from the global RNG, which must not leak into training (dropout uses it)."""

    def __init__(self, fail_at: int | None = None) -> None:
        self.calls: list[int] = []
        self.fail_at = fail_at

    def __call__(self, model, scheduler, step):
        if step == self.fail_at:
            raise RuntimeError("killed during evaluation")
        self.calls.append(step)
        torch.rand(1000)
        return {"fid": float(sum(p.double().sum() for p in model.parameters())), "kid": float(step)}


def _curve(out):
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    return [(r["step"], r["images_seen"], r["fid"], r["kid"]) for r in rows if "fid" in r], rows


def test_eval_every_writes_entries_at_exactly_the_requested_steps(dataset, tmp_path):
    probe = WeightProbe()
    summary = train(_cfg(), dataset, tmp_path / "eval", progress=False, evaluator=probe)
    curve, rows = _curve(tmp_path / "eval")
    assert probe.calls == [3, 6, 7] and [c[0] for c in curve] == [3, 6, 7]  # every 3 steps and the last one
    assert [c[1] for c in curve] == [24, 48, 56]
    evals = [r for r in rows if "fid" in r]
    assert all(r["eval_seconds"] >= 0 and r["train_seconds"] >= 0 for r in evals)
    assert [r["train_seconds"] for r in evals] == sorted(r["train_seconds"] for r in evals)
    assert summary["eval_seconds"] == pytest.approx(sum(r["eval_seconds"] for r in evals), rel=1e-6)
    # the last value is the sum of the EMA weights the trainer saved (an independent read of the result)
    saved = load_file(tmp_path / "eval" / "state" / "ema.safetensors")
    ema_params = dict(create_model("ddpm-tiny", sample_size=8, in_channels=1, out_channels=1,
                                   dropout=0.2).named_parameters())
    want = sum(saved[k].double().sum() for k in ema_params)
    assert curve[-1][2] == pytest.approx(float(want), rel=1e-9)
    # evaluating (with its RNG draws) leaves the training trajectory untouched
    train(_cfg(eval_every=0), dataset, tmp_path / "plain", progress=False)
    for name in ("state/model.safetensors", "state/ema.safetensors"):
        a, b = load_file(tmp_path / "eval" / name), load_file(tmp_path / "plain" / name)
        assert all(torch.equal(a[k], b[k]) for k in a), name


def test_a_killed_run_resumes_to_the_same_curve(dataset, tmp_path):
    train(_cfg(eval_every=2), dataset, tmp_path / "straight", progress=False, evaluator=WeightProbe())
    straight, _ = _curve(tmp_path / "straight")
    assert [c[0] for c in straight] == [2, 4, 6, 7]
    # checkpoint at step 3, evaluation written at step 4 (after it), then killed during step 6's evaluation
    with pytest.raises(RuntimeError, match="killed"):
        train(_cfg(eval_every=2, checkpoint_every=3), dataset, tmp_path / "killed", progress=False,
              evaluator=WeightProbe(fail_at=6))
    assert [c[0] for c in _curve(tmp_path / "killed")[0]] == [2, 4]
    probe = WeightProbe()
    summary = train(_cfg(eval_every=2, checkpoint_every=3), dataset, tmp_path / "killed", resume=True,
                    progress=False, evaluator=probe)
    assert summary["resumed_from"] == 3 and probe.calls == [4, 6, 7]  # the step-4 line past the checkpoint is redone
    resumed, rows = _curve(tmp_path / "killed")
    assert resumed == straight
    seconds = [r["train_seconds"] for r in rows if "fid" in r]
    assert seconds == sorted(seconds)  # cumulative over the resume


def test_eval_settings_may_change_on_resume_but_need_an_evaluator(dataset, tmp_path):
    assert _trajectory_hash(_cfg(), dataset, None) == _trajectory_hash(
        _cfg(eval_every=5, eval={"samples": 64}), dataset, None)
    with pytest.raises(TrainError, match="eval_every needs an evaluator"):
        train(_cfg(), dataset, tmp_path, progress=False)
    with pytest.raises(ConfigError, match="eval_every"):
        validate_config(TrainConfig, {"eval_every": -1})
    with pytest.raises(ConfigError, match="eval.metrics"):
        validate_config(TrainConfig, {"eval": {"metrics": ["prdc"]}})


def test_training_evaluator_scores_its_fixed_seed_samples_with_the_run_protocol(dataset, tmp_path):
    torch.manual_seed(0)
    model = create_model("ddpm-tiny", sample_size=8, in_channels=1, out_channels=1).eval()
    scheduler = create_scheduler("ddpm-tiny")
    cfg = TrainEvalConfig(samples=20, steps=2, seed=4, metrics=["fid", "kid"])
    protocol = EvalConfig(kid_subsets=5, kid_subset_size=10, metrics=["fid", "prdc"], cross_check=False)
    evaluator = TrainingEvaluator(cfg, protocol, dataset, tmp_path / "cache", network=TinyNet())
    got = evaluator(model, scheduler, step=10)
    again = evaluator(model, scheduler, step=20)
    assert got == again and set(got) == {"fid", "kid", "kid_std", "eval_samples"} and got["eval_samples"] == 20
    # the oracle: evaluate() on sample_images() with the same seed and settings
    images = sample_images(model, scheduler, evaluator.sample_config(), progress=False, device="cpu")
    ref = evaluate(images, dataset, protocol.model_copy(update={"metrics": ["fid", "kid"], "classwise": False}),
                   None, cache_dir=tmp_path / "other", progress=False, network=TinyNet())
    assert got["fid"] == pytest.approx(ref["fid"], rel=1e-9) and got["kid"] == pytest.approx(ref["kid"], rel=1e-9)
    assert not list(tmp_path.glob("**/metrics.json"))  # evaluation during training writes no metrics.json
