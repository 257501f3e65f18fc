"""Budget modes, early stop at a target, LR schedules, Min-SNR weights and Ho et al.'s initialisation (issue 24)."""
from __future__ import annotations

import json
import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from diffprune.data import ImageDataset
from diffprune.diffusion import TrainConfig, create_model, train
from diffprune.diffusion.config import StopAtTarget, TrainError
from diffprune.diffusion.init import ho_init_, zero_init_layers
from diffprune.diffusion.objective import snr_loss_weights
from diffprune.diffusion.schedules import lr_schedule_for
from diffprune.pipeline.budget import (
    budgeted, equal_steps, evaluation_curve, first_stop_step, piece_ends, stop_target, train_until_target,
)


@pytest.fixture(scope="module")
def dataset() -> ImageDataset:
    rng = np.random.default_rng(1)
    return ImageDataset(rng.integers(0, 256, (24, 1, 8, 8)).astype(np.uint8), np.arange(24) % 4, list("abcd"),
                        name="toy")


def _cfg(**kw) -> TrainConfig:
    base = dict(preset="ddpm-tiny", steps=9, batch_size=8, lr=1e-3, warmup_steps=2, ema_decay=0.9, log_every=1,
                checkpoint_every=0, seed=5, eval_every=2)
    return TrainConfig(**{**base, **kw})


# ---- budget modes ---------------------------------------------------------------------------------------------


def test_equal_steps_gives_every_arm_the_full_arms_steps():
    cfg = _cfg(steps=None, epochs=480, batch_size=32, budget="equal_steps").resolved()
    assert equal_steps(cfg, 500) == 7500  # 480 x 500 / 32, the plateau study's full arm
    assert equal_steps(cfg, 499) == math.ceil(480 * 499 / 32)
    arm = budgeted(cfg, full_size=500)
    assert (arm.steps, arm.epochs) == (7500, None)
    assert budgeted(cfg.model_copy(update={"budget": "epochs"}), 500).epochs == 480  # fixed epochs untouched
    # a decaying schedule gets the budget as its horizon; a constant one needs none
    assert budgeted(cfg.model_copy(update={"lr_schedule": "cosine"}), 500).lr_schedule_steps == 7500
    assert budgeted(cfg, 500).lr_schedule_steps is None


def test_eval_every_images_is_one_schedule_for_every_arm():
    cfg = _cfg(eval_every=0, eval_every_images=64, batch_size=16).resolved()
    assert cfg.eval_every == 4
    with pytest.raises(ValueError, match="multiple of batch_size"):
        _cfg(eval_every=0, eval_every_images=60, batch_size=16)
    with pytest.raises(TrainError, match="not a multiple of the batch size 16"):  # the preset's batch size
        TrainConfig(preset="ddpm-tiny", eval_every_images=40).resolved()
    with pytest.raises(ValueError, match="not both"):
        _cfg(eval_every=3, eval_every_images=64, batch_size=16)
    with pytest.raises(ValueError, match="needs|decides"):
        _cfg(eval_every=0, stop_at_target={"metric": "fid"})
    with pytest.raises(ValueError, match="not evaluated during training"):
        _cfg(stop_at_target={"metric": "kid"}, eval={"metrics": ["fid"]})
    assert {"budget", "eval_every_images", "stop_at_target"} <= TrainConfig.RESUME_MUTABLE
    assert not {"lr_schedule", "lr_schedule_steps", "snr_gamma", "init"} & TrainConfig.RESUME_MUTABLE


# ---- early stop ------------------------------------------------------------------------------------------------


def test_first_stop_step_needs_k_consecutive_evaluations_under_target():
    curve = [(10, 9.0), (20, 7.0), (30, 8.1), (40, 7.5), (50, 7.9), (60, 6.0)]
    assert first_stop_step(curve, 8.0, 1) == 20
    assert first_stop_step(curve, 8.0, 2) == 50  # 30 breaks the first streak; 40, 50 complete the second
    assert first_stop_step(curve, 8.0, 3) == 60
    assert first_stop_step(curve, 8.0, 4) is None
    assert first_stop_step(curve, 5.0, 1) is None
    assert first_stop_step([(1, 8.0)], 8.0, 1) == 1  # equal to the target counts as reached


def test_piece_ends_are_the_evaluation_steps_and_the_last():
    assert piece_ends(0, 9, 2) == [2, 4, 6, 8, 9]
    assert piece_ends(4, 9, 2) == [6, 8, 9]
    assert piece_ends(3, 8, 2) == [4, 6, 8]
    assert piece_ends(9, 9, 2) == []


def test_stop_target_is_the_full_arms_final_value_times_one_plus_tolerance(tmp_path):
    path = tmp_path / "metrics.jsonl"
    rows = [{"step": 1, "loss": 1.0}, {"step": 2, "fid": 90.0, "eval_seconds": 1.0},
            {"step": 4, "fid": 80.0, "classifier_fd": 3.0, "eval_seconds": 1.0}, {"step": 4, "loss": 0.5}]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert evaluation_curve(path, "fid") == [(2, 90.0), (4, 80.0)]
    assert stop_target(path, StopAtTarget(metric="fid", tolerance=0.05)) == pytest.approx(84.0)
    with pytest.raises(TrainError, match="no evaluation with kid"):
        stop_target(path, StopAtTarget(metric="kid"))


class StepProbe:
    """An evaluator whose "fid" is a fixed function of the step (so where the rule fires is known)."""

    def __init__(self, values: dict[int, float]) -> None:
        self.values, self.calls = values, []

    def __call__(self, model, scheduler, step):
        self.calls.append(step)
        return {"fid": self.values[step]}


def test_train_until_target_stops_after_k_evaluations_under_target_on_the_uninterrupted_trajectory(dataset, tmp_path):
    values = {2: 10.0, 4: 7.0, 6: 9.0, 8: 7.5, 9: 7.0}
    cfg = _cfg(lr_schedule="cosine", model_overrides={"dropout": 0.2})
    probe = StepProbe(values)

    def piece(c, resume):
        return train(c, dataset, tmp_path / "stop", resume=resume, progress=False, evaluator=probe)

    stop = StopAtTarget(metric="fid", tolerance=0.05, patience=2)
    summary = train_until_target(cfg, piece, tmp_path / "stop" / "metrics.jsonl", 8.0, stop, 0, False)
    # 4 is under 8 but 6 is not; 8 and 9 make two in a row: stop at 9 (the budget's end here) ...
    assert summary["stopped_at_target"] == 9 and probe.calls == [2, 4, 6, 8, 9]
    # pieces end where the rule could fire: 2-4 (two evaluations), 6 (one more after 4's streak), 8-9 (two more)
    assert summary["pieces"] == 3
    # ... with patience 1 at step 4, after two pieces
    probe1 = StepProbe(values)
    one = train_until_target(cfg, lambda c, r: train(c, dataset, tmp_path / "one", resume=r, progress=False,
                                                     evaluator=probe1),
                             tmp_path / "one" / "metrics.jsonl", 8.0, stop.model_copy(update={"patience": 1}), 0, False)
    assert one["stopped_at_target"] == 4 and one["steps"] == 4 and probe1.calls == [2, 4]
    # the pieces follow the uninterrupted run's trajectory, LR schedule included (horizon = the 9-step budget)
    train(cfg, dataset, tmp_path / "whole", progress=False, evaluator=StepProbe(values))
    a, b = load_file(tmp_path / "stop" / "state" / "ema.safetensors"), load_file(tmp_path / "whole" / "state" /
                                                                                   "ema.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)
    lrs = [json.loads(x)["lr"] for x in (tmp_path / "stop" / "metrics.jsonl").read_text().splitlines()
           if "loss" in json.loads(x)]
    whole = [json.loads(x)["lr"] for x in (tmp_path / "whole" / "metrics.jsonl").read_text().splitlines()
             if "loss" in json.loads(x)]
    assert lrs == pytest.approx(whole)
    # a rerun that finds the stopped checkpoint trains nothing more
    again = train_until_target(cfg, piece, tmp_path / "stop" / "metrics.jsonl", 8.0, stop, 9, True)
    assert again["stopped_at_target"] == 9 and again.get("pieces") is None


# ---- LR schedules ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["constant", "cosine", "linear"])
def test_lr_schedules_follow_their_formula_at_given_steps(kind):
    warm, horizon = 10, 110

    def expected(s: int) -> float:  # LR multiplier of step s (lr 1)
        if s < warm:
            return s / warm
        progress = (s - warm) / (horizon - warm)
        return {"constant": 1.0, "cosine": 0.5 * (1 + math.cos(math.pi * progress)), "linear": 1 - progress}[kind]

    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    cfg = _cfg(lr_schedule=kind, warmup_steps=warm, lr_schedule_steps=None)
    schedule = lr_schedule_for(opt, cfg, horizon)
    seen = {}
    for step in range(horizon + 1):
        seen[step] = schedule.get_last_lr()[0]
        opt.step()
        schedule.step()
    for step in (0, 5, 10, 35, 60, 85, 109, 110):
        assert seen[step] == pytest.approx(expected(step), abs=1e-12), step
    # lr_schedule_steps sets the horizon independently of the run's steps
    opt2 = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    s2 = lr_schedule_for(opt2, cfg.model_copy(update={"lr_schedule_steps": horizon}), 7)
    for _ in range(60):
        opt2.step()
        s2.step()
    assert s2.get_last_lr()[0] == pytest.approx(expected(60))


def test_the_trainer_logs_the_cosine_learning_rate(dataset, tmp_path):
    train(_cfg(lr_schedule="cosine", eval_every=0, steps=6, warmup_steps=2), dataset, tmp_path, progress=False)
    rows = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    # the line of step s shows the LR after s scheduler steps: step s+1's LR
    want = [1e-3 * (s / 2 if s < 2 else 0.5 * (1 + math.cos(math.pi * (s - 2) / 4))) for s in range(1, 7)]
    assert [r["lr"] for r in rows] == pytest.approx(want)


# ---- Min-SNR-gamma ---------------------------------------------------------------------------------------------


def test_min_snr_weights_against_hand_made_snrs():
    # abar = SNR / (1 + SNR) for SNR = 1, 9, 99, 1/9
    abar = torch.tensor([0.5, 0.9, 0.99, 0.1], dtype=torch.float64)
    scheduler = SimpleNamespace(alphas_cumprod=abar)
    t = torch.tensor([0, 1, 2, 3, 1])
    w = snr_loss_weights(t, scheduler, gamma=5.0)
    assert w.tolist() == pytest.approx([1.0, 5 / 9, 5 / 99, 1.0, 5 / 9], rel=1e-6)  # float32
    assert snr_loss_weights(t, scheduler, None).tolist() == [1.0] * 5
    assert w.dtype == torch.float32


def test_min_snr_changes_training_and_composes_with_class_weights(dataset, tmp_path):
    plain = train(_cfg(eval_every=0, steps=3), dataset, tmp_path / "plain", progress=False)
    snr = train(_cfg(eval_every=0, steps=3, snr_gamma=5.0), dataset, tmp_path / "snr", progress=False)
    # at most steps SNR > 5 (t < ~ 90 of 1000 on DDPM's schedule): the weighted loss is smaller, never larger
    assert snr["final_loss"] < plain["final_loss"]
    # gamma above every SNR of the schedule (max ~1e4 at t = 0): every weight is 1, the run is the plain one, bitwise
    huge = train(_cfg(eval_every=0, steps=3, snr_gamma=1e9), dataset, tmp_path / "huge", progress=False)
    a, b = load_file(tmp_path / "plain" / "state" / "ema.safetensors"), load_file(tmp_path / "huge" / "state" /
                                                                                    "ema.safetensors")
    assert huge["final_loss"] == plain["final_loss"] and all(torch.equal(a[k], b[k]) for k in a)
    both = train(_cfg(eval_every=0, steps=3, snr_gamma=5.0), dataset, tmp_path / "both", progress=False,
                 class_weights={"a": 0.4, "b": 0.2, "c": 0.2, "d": 0.2})
    assert math.isfinite(both["final_loss"]) and both["final_loss"] != snr["final_loss"]


# ---- Ho et al.'s initialisation --------------------------------------------------------------------------------


def test_ho_init_is_fan_avg_uniform_with_zeros_where_ho_put_them():
    torch.manual_seed(0)
    model = ho_init_(create_model("ddpm-small", in_channels=1, out_channels=1))
    zeros = {id(m) for m in zero_init_layers(model)}
    # resnets: 3 down (1 per block) + 2 mid + 6 up (2 per block); attentions: 1 down + 1 mid + 2 up; conv_out
    assert len(zeros) == (3 + 2 + 6) + (1 + 1 + 2) + 1
    checked = 0
    for name, m in model.named_modules():
        if not isinstance(m, (torch.nn.Conv2d, torch.nn.Linear)):
            continue
        w = m.weight.detach().double()
        assert m.bias is None or not m.bias.any(), name
        if id(m) in zeros:
            assert not w.any(), name
            continue
        receptive = w[0, 0].numel() if w.dim() == 4 else 1
        fan_in, fan_out = w.shape[1] * receptive, w.shape[0] * receptive
        bound = math.sqrt(6.0 / (fan_in + fan_out))  # U(-a, a), a^2 = 3 / fan_avg
        assert w.abs().max() <= bound, name
        if w.numel() >= 2000:  # the variance a^2 / 3 = 2 / (fan_in + fan_out), within sampling error
            assert w.var().item() == pytest.approx(2.0 / (fan_in + fan_out), rel=0.12), name
            checked += 1
    assert checked >= 10
    assert model(torch.randn(2, 1, 32, 32), torch.tensor([10, 500])).sample.abs().max() == 0  # predicts 0


def test_ho_init_is_a_training_option(dataset, tmp_path):
    ho = train(_cfg(eval_every=0, steps=1, init="ho", lr=1e-12), dataset, tmp_path, progress=False)
    assert ho["steps"] == 1
    saved = load_file(tmp_path / "state" / "model.safetensors")
    assert not saved["conv_out.weight"].any() or saved["conv_out.weight"].abs().max() < 1e-6
    with pytest.raises(ValueError, match="init: ho"):
        TrainConfig(preset="dit-tiny", init="ho")


# ---- metric floor and evaluation noise -------------------------------------------------------------------------


def _brute_frechet(a: np.ndarray, b: np.ndarray) -> float:
    """d^2 = |mu_a - mu_b|^2 + Tr(Sa + Sb - 2 (Sa Sb)^(1/2)), with loops for the moments and scipy's sqrtm."""
    import scipy.linalg

    def moments(x):
        mu = np.array([sum(row[j] for row in x) / len(x) for j in range(x.shape[1])])
        cov = np.array([[sum((row[i] - mu[i]) * (row[j] - mu[j]) for row in x) / (len(x) - 1)
                         for j in range(x.shape[1])] for i in range(x.shape[1])])
        return mu, cov

    (ma, sa), (mb, sb) = moments(a), moments(b)
    root = scipy.linalg.sqrtm(sa @ sb).real
    return float(((ma - mb) ** 2).sum() + np.trace(sa + sb - 2 * root))


def test_frechet_floor_is_the_distance_between_disjoint_real_sets():
    from diffprune.evaluation.quality import disjoint_subsets, frechet_floor

    rng = np.random.default_rng(0)
    feats = rng.normal(size=(60, 3)) @ rng.normal(size=(3, 3))
    floor = frechet_floor(feats, n_eval=20, n_ref=30, draws=3, seed=7)
    for d, value in enumerate(floor["values"]):
        a, b = disjoint_subsets(60, (20, 30), 7 + d)
        assert len(np.intersect1d(a, b)) == 0 and len(a) == 20 and len(b) == 30
        assert value == pytest.approx(_brute_frechet(feats[b], feats[a]), rel=1e-7)
    assert floor["mean"] == pytest.approx(np.mean(floor["values"]))
    assert floor["std"] == pytest.approx(np.std(floor["values"], ddof=1))
    # the floor falls with the evaluated size (its bias ~ 1/n) and is > 0 for finite sets
    big = frechet_floor(rng.normal(size=(4000, 3)), n_eval=2000, n_ref=2000, draws=2)
    small = frechet_floor(rng.normal(size=(4000, 3)), n_eval=50, n_ref=50, draws=2)
    assert 0 < big["mean"] < small["mean"]
    with pytest.raises(Exception, match="need 90 real images, only 60"):
        frechet_floor(feats, 40, 50)


def test_evaluation_noise_is_the_spread_over_sample_seeds():
    from diffprune.evaluation.quality import evaluation_noise, tolerance_check

    fake = {0: {"fid": 10.0, "kid": None}, 1: {"fid": 12.0, "kid": None}, 2: {"fid": 11.0, "kid": None}}
    noise = evaluation_noise(lambda s: fake[s], ["fid", "kid"])
    assert set(noise) == {"fid"}  # a metric a run did not compute is left out
    assert noise["fid"]["mean"] == 11.0 and noise["fid"]["std"] == pytest.approx(1.0)
    assert noise["fid"]["range"] == 2.0 and noise["fid"]["seeds"] == [0, 1, 2]
    check = tolerance_check(None, noise["fid"], target_value=50.0, tolerance=0.05)
    assert check["margin"] == 2.5 and check["resolvable"] is True
    assert tolerance_check(None, noise["fid"], 30.0, 0.05)["resolvable"] is False  # 1.5 < 2 x 1.0


# ---- the pipeline: equal steps and early stop against the full arm of the same seed --------------------------


class ArmProbe:
    """A stand-in training evaluator whose classifier_fd is a fixed function of (arm size, step)."""

    curves = {40: {2: 9.0, 4: 8.0, 5: 7.0}, 20: {2: 8.0, 4: 7.5, 5: 7.0}}

    def __init__(self, size: int) -> None:
        self.size = size

    def __call__(self, model, scheduler, step):
        return {"classifier_fd": self.curves[self.size].get(step, 7.0)}


def test_a_run_gives_pruned_arms_the_full_arms_steps_and_stops_them_at_the_target(tmp_path, monkeypatch):
    from diffprune.pipeline import Pipeline, load_run_config

    overrides = ["data.limit=40", "data.resolution=8", "data.resize=pad", "train.preset=ddpm-tiny", "train.steps=null",
                 "train.epochs=1", "train.batch_size=8", "train.budget=equal_steps", "train.eval_every_images=16",
                 "train.ema_decay=0.9", "train.checkpoint_every=0", "train.eval.metrics=[classifier_fd]",
                 "train.stop_at_target={metric: classifier_fd, tolerance: 0.1, patience: 1}", "train.eval.samples=30",
                 "evaluate.classifier.data=split", "evaluate.classifier.epochs=1", "evaluate.metrics=[classifier_fd]",
                 "evaluate.classwise=false", "sample.num_samples=20", "sample.steps=2", "sample.batch_size=20",
                 "arms=[{method: full, seed: 0}, {method: random, ratio: 0.5, seed: 0}]", f"runs_dir={tmp_path}"]
    pipe = Pipeline(load_run_config("configs/demo.yaml", overrides), progress=False)
    monkeypatch.setattr(Pipeline, "training_evaluator", lambda self, data: ArmProbe(len(data)))
    full, pruned = pipe.cfg.arms
    assert pipe.train_config(full).steps == pipe.train_config(pruned).steps == 5  # ceil(1 x 40 / 8), not 3
    assert pipe.train_config(pruned).eval_every == 2
    pipe.train(pruned)  # trains the full arm first: its final 7.0 x 1.1 = 7.7 is the target
    assert (tmp_path / "demo" / "train" / "full-s0" / "manifest.json").is_file()
    m = json.loads((tmp_path / "demo" / "train" / "random-r0.5-s0" / "manifest.json").read_text())
    assert m["summary"]["stopped_at_target"] == 4 and m["summary"]["steps"] == 4  # 7.5 <= 7.7 at step 4
    assert m["summary"]["target"] == pytest.approx(7.7)
    assert m["inputs"]["stop_target"].startswith("classifier_fd <= 7.7")
    # quality.json: the floor from disjoint sets of the whole split (digits: 1,797 images) in the features of the
    # classifier trained on it; the noise of the (stand-in) evaluator over seeds 0, 1, 2 at the full arm's model
    from diffprune.config import ConfigError
    from diffprune.evaluation.classifier import classifier_outputs, load_or_train_classifier
    from diffprune.evaluation.quality import frechet_floor
    from diffprune.pipeline.quality import write_quality

    quality = json.loads(write_quality(pipe).read_text())["metrics"]["classifier_fd"]
    split = pipe.classifier_data
    assert len(split) == 1797 and len(pipe.dataset) == 40
    trained = load_or_train_classifier(split, pipe.cfg.evaluate.classifier, seed=0,
                                       cache_dir=tmp_path / "demo" / "eval")
    assert trained.cache_hit  # the one the floor used
    want = frechet_floor(classifier_outputs(trained.model, split.images)[0], 30, 40, draws=3, seed=0)
    assert quality["floor"]["values"] == pytest.approx(want["values"]) and quality["floor"]["n_ref"] == 40
    assert quality["noise"]["std"] == 0 and quality["final"] == 7.0
    assert [t["tolerance"] for t in quality["tolerances"]] == [0.05, 0.1, 0.15]
    # the evaluate stage's metrics: the floor by `evaluate` itself on disjoint real sets (20 in place of samples,
    # 40 as the reference), the noise over 3 sample seeds of the real model
    final = json.loads((tmp_path / "demo" / "eval" / "quality.json").read_text())["final"]
    fd = final["metrics"]["classifier_fd"]
    assert final["samples"] == 20 and fd["floor"]["n_ref"] == 40 and len(fd["floor"]["values"]) == 3
    want = frechet_floor(classifier_outputs(trained.model, split.images)[0], 20, 40, draws=3, seed=0)
    assert fd["floor"]["values"] == pytest.approx(want["values"], rel=1e-6)
    assert len(fd["noise"]["values"]) == 3 and fd["noise"]["std"] > 0  # three seeds, three sample sets

    lone = Pipeline(load_run_config("configs/demo.yaml", [*overrides[:-2], "arms=[{method: random, ratio: 0.5}]",
                                                           f"runs_dir={tmp_path}"]), progress=False)
    with pytest.raises(ConfigError, match="needs a full-data arm of seed None"):
        lone.train(lone.cfg.arms[0])


def test_the_report_draws_every_arms_curve_with_targets_and_the_floor(tmp_path):
    from diffprune.report.collect import ArmResult, RunSummary
    from diffprune.report.document import Image, Table
    from diffprune.report.quality import curve_metric, metric_points, quality_blocks, targets_by_seed

    def arm(name, method, seed, values, stop=None):
        log = [{"step": s, "loss": 1.0} for s in (1, 2)] + [
            {"step": 2 * i + 2, "images_seen": 16 * (i + 1), "train_seconds": 1.5 * (i + 1), "eval_seconds": 0.1,
             "classifier_fd": v, "fid": 100.0} for i, v in enumerate(values)]
        summary = {"stop": stop} if stop else {}
        return ArmResult("r", name, method, None if method == "full" else 0.5, False, {}, seed=seed, train_log=log,
                         manifests={"train": {"flops_per_image": 1e6, "summary": summary}})

    stop = {"metric": "classifier_fd", "tolerance": 0.1, "patience": 1}
    arms = [arm("full-s0", "full", 0, [9.0, 8.0, 7.0]), arm("full-s1", "full", 1, [9.0, 8.0, 6.0]),
            arm("random-r0.5-s0", "random", 0, [8.0, 7.5], stop)]
    assert curve_metric(arms) == "classifier_fd"
    pts = metric_points(arms[2], "classifier_fd")
    assert [(p["images"], p["seconds"], p["flops"], p["value"]) for p in pts] == [(16, 1.5, 16e6, 8.0),
                                                                                  (32, 3.0, 32e6, 7.5)]
    assert targets_by_seed(arms, "classifier_fd", 0.1) == pytest.approx({0: 7.7, 1: 6.6})
    run = tmp_path / "r"
    (run / "eval").mkdir(parents=True)
    (run / "eval" / "quality.json").write_text(json.dumps({"arm": "full-s0", "samples": 2000, "metrics": {
        "classifier_fd": {"final": 7.0, "floor": {"mean": 0.5, "std": 0.1}, "noise": {"std": 0.2},
                          "tolerances": [{"tolerance": 0.05, "margin": 0.35, "resolvable": False}]}},
        "final": {"samples": 1000, "metrics": {"fid": {"floor": {"mean": 20.0, "std": 1.0},
                                                        "noise": {"std": 0.5}}}}}))
    arms[0].metrics = {"fid": 60.0}
    blocks = quality_blocks([RunSummary(run, "r", arms, {}, [])], tmp_path / "out")
    image = next(b for b in blocks if isinstance(b, Image))
    assert image.path.is_file() and image.path.stat().st_size > 1000
    ttt, table = [b for b in blocks if isinstance(b, Table)]
    # time to target on classifier_fd: seed 0's full arm ends at 7.0; random reaches 7.7 (10%), not 7.35 (5%)
    assert [r[:4] for r in ttt.rows] == [["random", "0.5", "5%", "0/1"], ["random", "0.5", "10%", "1/1"]]
    assert table.rows[0][0].startswith("classifier_fd (during training, 2000 samples")
    assert table.rows[0][2] == "0.500 ± 0.100" and table.rows[0][-1] == "no"
    # the final FID: 5% of the full arm's 60 is 3.0 >= 2 x 0.5; the margins of 5% and 10% (tolerance 0.1's set)
    final = [r for r in table.rows if r[0].startswith("fid (final, 1000")]
    assert [(r[4], r[5], r[6]) for r in final] == [("5%", "3.000", "yes"), ("10%", "6.000", "yes")]


def test_time_to_target_on_any_metric_with_intervals_over_seeds():
    from scipy import stats

    from diffprune.report.collect import ArmResult
    from diffprune.report.targets import mean_interval, paired_speedups, time_to_target_table

    def arm(name, method, seed, values, overhead_images=0):
        log = [{"step": 10 * (i + 1), "images_seen": 100 * (i + 1), "train_seconds": float(i + 1),
                "eval_seconds": 0.1, "classifier_fd": v} for i, v in enumerate(values)]
        ref = {"trained": {"overheads": {"images": overhead_images, "seconds": 0.0}}}
        return ArmResult("r", name, method, None if method == "full" else 0.5, False, {}, seed=seed, train_log=log,
                         reference=ref, manifests={"train": {"flops_per_image": 2.0}})

    arms = [arm("full-s0", "full", 0, [10, 8, 6, 5]), arm("full-s1", "full", 1, [10, 8, 6, 5]),
            arm("full-s2", "full", 2, [10, 8, 6, 5]),
            # seed 0 reaches 5.25 (5% target) between 200 and 300 images: 200 + 100 x (6 - 5.25) / (6 - 5) = 275
            arm("g-s0", "gaussian", 0, [9, 6, 5]), arm("g-s1", "gaussian", 1, [9, 5.25], overhead_images=50),
            arm("g-s2", "gaussian", 2, [9, 7, 6])]
    entries = {e["arm"].arm: e for e in paired_speedups(arms, "classifier_fd", 0.05)}
    # the full arm reaches 5.25 at 300 + 100 x 0.75 = 375 images
    assert entries["g-s0"]["speedup"]["images"] == pytest.approx(375 / 275)
    assert entries["g-s1"]["speedup"]["images"] == pytest.approx(375 / (200 + 50))
    assert entries["g-s0"]["speedup"]["flops"] == pytest.approx(375 / 275)  # same model: FLOPs = 2 x images
    assert not entries["g-s2"]["reached"]
    mean, half = mean_interval([1.0, 2.0, 3.0])
    assert mean == 2.0 and half == pytest.approx(stats.t.ppf(0.975, 2) * 1.0 / math.sqrt(3))
    assert mean_interval([1.5]) == (1.5, None)
    table = time_to_target_table(arms, "classifier_fd", [0.05])
    row = table.rows[0]
    assert row[:4] == ["gaussian", "0.5", "5%", "2/3"]
    # a ratio's interval: on the logs (t with 1 degree of freedom), mapped back
    logs = [math.log(375 / 275), math.log(375 / 250)]
    centre, half = sum(logs) / 2, stats.t.ppf(0.975, 1) * abs(logs[0] - logs[1]) / math.sqrt(2) / math.sqrt(2)
    low, high = math.exp(centre - half), math.exp(centre + half)
    assert row[4] == f"{math.exp(centre):.2f}x [{low:.2f}, {high:.2f}]" and low > 0


def test_a_resumed_early_stop_ignores_evaluations_after_the_checkpoint(dataset, tmp_path):
    """Killed between an evaluation and its checkpoint: the evaluations past the checkpoint are redone, not read."""
    values = {2: 10.0, 4: 7.0, 6: 7.0, 8: 9.0, 9: 9.0}
    cfg = _cfg()
    out = tmp_path / "run"
    stop = StopAtTarget(metric="fid", tolerance=0.05, patience=2)
    train(cfg.model_copy(update={"steps": 4}), dataset, out, progress=False, evaluator=StepProbe(values))
    with (out / "metrics.jsonl").open("a") as f:  # a stale line of step 6 below the target, without its checkpoint
        f.write(json.dumps({"step": 6, "images_seen": 48, "fid": 1.0, "eval_seconds": 0.1}) + "\n")
    probe = StepProbe(values)
    summary = train_until_target(cfg, lambda c, r: train(c, dataset, out, resume=r, progress=False, evaluator=probe),
                                 out / "metrics.jsonl", 8.0, stop, 4, True)
    assert probe.calls[0] == 6 and summary["stopped_at_target"] == 6  # 4 and the re-evaluated 6 (7.0) are under 8
    assert evaluation_curve(out / "metrics.jsonl", "fid") == [(2, 10.0), (4, 7.0), (6, 7.0)]
