"""The trainer against a bare PyTorch replica of the recipe, exact resume, interruption, and its errors."""
from __future__ import annotations

import json
import os
import signal

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

import diffprune.diffusion.trainer as train_mod
from diffprune.config import ConfigError, validate_config
from diffprune.data import ImageDataset
from diffprune.diffusion.checkpoint import checkpoint_step
from diffprune.diffusion import (
    TrainConfig,
    TrainError,
    TrainingInterrupted,
    WeightsError,
    create_model,
    load_model,
    read_meta,
    total_steps,
    train,
)
from diffprune.diffusion.batches import global_batch_indices, noise_generator

CLASSES = ["a", "b", "c", "d"]

WEIGHTS = {"a": 0.1, "b": 0.2, "c": 0.3, "d": 0.4}


@pytest.fixture(scope="module")
def dataset() -> ImageDataset:
    rng = np.random.default_rng(0)
    # smooth-ish images so the flip matters and losses are not pure noise
    base = rng.integers(0, 256, (24, 1, 8, 8)).astype(np.float64)
    base[..., :4] *= 0.3
    return ImageDataset(base.astype(np.uint8), np.arange(24) % 4, CLASSES, name="toy")


def _cfg(**kw) -> TrainConfig:
    base = dict(preset="ddpm-tiny", steps=4, batch_size=8, lr=1e-3, warmup_steps=3, ema_decay=0.9, log_every=1,
                checkpoint_every=0, seed=3, hflip=True)
    base.update(kw)
    return TrainConfig(**base)


def _weights(path) -> dict[str, torch.Tensor]:
    return load_file(path)


def test_trainer_equals_a_bare_pytorch_replica_of_the_recipe(dataset, tmp_path):
    """Loss weighting K * a_y, flips, clipping, Adam with linear warm-up and the EMA, step by step."""
    cfg = _cfg(steps=3, grad_clip=0.05)
    train(cfg, dataset, tmp_path / "run", class_weights=WEIGHTS, progress=False)

    torch.manual_seed(cfg.seed)  # the trainer seeds torch with the run seed before building the model
    model = create_model("ddpm-tiny", sample_size=8, in_channels=1, out_channels=1)
    ema = {k: v.clone() for k, v in model.state_dict().items()}
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    abar = torch.cumprod(1 - torch.linspace(1e-4, 0.02, 1000, dtype=torch.float64), 0).float()
    a = torch.tensor([WEIGHTS[c] for c in CLASSES])
    images = torch.from_numpy(dataset.images).float() / 127.5 - 1
    labels = torch.from_numpy(dataset.labels)
    losses = []
    for step in range(cfg.steps):
        for group in opt.param_groups:
            group["lr"] = cfg.lr * min(step / cfg.warmup_steps, 1.0)
        idx = global_batch_indices(step, cfg.batch_size, len(dataset), cfg.seed)
        g = noise_generator(cfg.seed, step, "cpu")  # documented draw order: t, noise, flip, label dropout
        t = torch.randint(0, 1000, (cfg.batch_size,), generator=g)
        noise = torch.randn((cfg.batch_size, 1, 8, 8), generator=g)
        flip = torch.rand(cfg.batch_size, generator=g) < 0.5
        x0 = torch.where(flip[:, None, None, None], images[idx].flip(3), images[idx])
        s = abar[t].view(-1, 1, 1, 1)
        pred = model(s.sqrt() * x0 + (1 - s).sqrt() * noise, t).sample
        loss = (((pred - noise) ** 2).mean((1, 2, 3)) * 4 * a[labels[idx]]).mean()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        opt.step()
        opt.zero_grad()
        for k, v in model.state_dict().items():
            ema[k] = cfg.ema_decay * ema[k] + (1 - cfg.ema_decay) * v
        losses.append(loss.item())

    got_raw = _weights(tmp_path / "run" / "state" / "model.safetensors")
    got_ema = _weights(tmp_path / "run" / "model" / "diffusion_pytorch_model.safetensors")
    for k, v in model.state_dict().items():
        torch.testing.assert_close(got_raw[k], v, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(got_ema[k], ema[k], rtol=1e-5, atol=1e-6)
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2, 3]
    np.testing.assert_allclose([r["loss"] for r in rows], losses, rtol=1e-5)
    assert rows[-1]["images_seen"] == 24 and rows[0]["lr"] == pytest.approx(cfg.lr / 3)


@pytest.fixture(scope="module")
def straight_run(dataset, tmp_path_factory):
    out = tmp_path_factory.mktemp("straight")
    cfg = _cfg(steps=6, model_overrides={"dropout": 0.2})  # dropout: the global RNG must be restored too
    summary = train(cfg, dataset, out, class_weights=WEIGHTS, progress=False)
    return cfg, out, summary


def _assert_same_run(a, b):
    for name in ("state/model.safetensors", "state/ema.safetensors", "model/diffusion_pytorch_model.safetensors"):
        wa, wb = _weights(a / name), _weights(b / name)
        assert wa.keys() == wb.keys()
        for k in wa:
            assert torch.equal(wa[k], wb[k]), f"{name}:{k} differs"
    la = [json.loads(x)["loss"] for x in (a / "metrics.jsonl").read_text().splitlines()]
    lb = [json.loads(x)["loss"] for x in (b / "metrics.jsonl").read_text().splitlines()]
    assert la == lb


def test_half_then_resume_equals_straight(dataset, straight_run, tmp_path):
    cfg, straight, summary = straight_run
    assert summary["steps"] == 6 and summary["resumed_from"] is None
    first = train(cfg.model_copy(update={"steps": 3}), dataset, tmp_path, class_weights=WEIGHTS, progress=False)
    assert first["steps"] == 3
    second = train(cfg, dataset, tmp_path, class_weights=WEIGHTS, resume=True, progress=False)
    assert second["resumed_from"] == 3 and second["steps"] == 6
    _assert_same_run(straight, tmp_path)
    assert not (tmp_path / ".state.tmp").exists() and not (tmp_path / ".state.old").exists()
    assert read_meta(tmp_path)["steps"] == 6


def test_sigterm_checkpoints_then_resume_equals_straight(dataset, straight_run, tmp_path, monkeypatch):
    cfg, straight, _ = straight_run
    real = train_mod.global_batch_indices

    def signal_during_step_2(step, *args, **kwargs):
        if step == 2:
            os.kill(os.getpid(), signal.SIGTERM)
        return real(step, *args, **kwargs)

    monkeypatch.setattr(train_mod, "global_batch_indices", signal_during_step_2)
    with pytest.raises(TrainingInterrupted, match="step 3/6"):
        train(cfg, dataset, tmp_path, class_weights=WEIGHTS, progress=False)
    assert json.loads((tmp_path / "state" / "trainer_state.json").read_text())["step"] == 3
    assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL  # handlers restored
    monkeypatch.setattr(train_mod, "global_batch_indices", real)
    train(cfg, dataset, tmp_path, class_weights=WEIGHTS, resume=True, progress=False)
    _assert_same_run(straight, tmp_path)


def test_resume_refuses_a_checkpoint_past_the_budget(dataset, straight_run, tmp_path):
    cfg, straight, _ = straight_run
    assert checkpoint_step(straight) == 6 and checkpoint_step(tmp_path) is None
    import shutil

    shutil.copytree(straight, tmp_path / "run")
    with pytest.raises(TrainError, match="at step 6, past this run's 4 steps"):
        train(cfg.model_copy(update={"steps": 4}), dataset, tmp_path / "run", class_weights=WEIGHTS, resume=True,
              progress=False)


def test_resume_refuses_a_different_run(dataset, straight_run, tmp_path):
    cfg, straight, _ = straight_run
    train(cfg.model_copy(update={"steps": 1}), dataset, tmp_path, class_weights=WEIGHTS, progress=False)
    with pytest.raises(TrainError, match="different config or dataset"):
        train(cfg.model_copy(update={"lr": 5e-4}), dataset, tmp_path, class_weights=WEIGHTS, resume=True,
              progress=False)


def test_grad_accumulation_matches_one_big_batch(dataset, tmp_path):
    cfg = _cfg(steps=2, grad_clip=None)
    train(cfg, dataset, tmp_path / "one", class_weights=WEIGHTS, progress=False)
    train(cfg.model_copy(update={"grad_accum": 2}), dataset, tmp_path / "two", class_weights=WEIGHTS,
          progress=False)
    wa, wb = _weights(tmp_path / "one/state/model.safetensors"), _weights(tmp_path / "two/state/model.safetensors")
    for k in wa:
        torch.testing.assert_close(wa[k], wb[k], rtol=1e-5, atol=1e-6)


def test_resample_weighting_draws_classes_by_weight(dataset, tmp_path, monkeypatch):
    seen = []
    real = train_mod.global_batch_indices

    def record(*args, **kwargs):
        idx = real(*args, **kwargs)
        seen.append(idx)
        return idx

    monkeypatch.setattr(train_mod, "global_batch_indices", record)
    only_b = {"a": 0.0, "b": 1.0, "c": 0.0, "d": 0.0}
    train(_cfg(steps=2, weighting="resample", conditional=True), dataset, tmp_path, class_weights=only_b,
          progress=False)
    drawn = dataset.labels[torch.cat(seen).numpy()]
    assert len(drawn) == 16 and set(drawn.tolist()) == {1}
    model, _ = load_model(tmp_path)
    assert model.config.num_class_embeds == 5 and read_meta(tmp_path)["null_class_label"] == 4


def test_budget_in_epochs_and_config_errors(dataset, tmp_path):
    cfg = TrainConfig(preset="ddpm-tiny", epochs=1.5, batch_size=8).resolved()
    assert total_steps(cfg, 24) == 5  # ceil(1.5 * 24 / 8)
    full = TrainConfig(preset="ddpm-cifar10").resolved()
    assert (full.lr, full.warmup_steps, full.batch_size, full.ema_decay, full.hflip, full.steps, full.grad_clip) == (
        2e-4, 5000, 128, 0.9999, True, 800_000, 1.0)  # the original DDPM recipe
    with pytest.raises(ConfigError, match="steps or as epochs, not both"):
        validate_config(TrainConfig, {"steps": 5, "epochs": 1.0})
    with pytest.raises(ConfigError, match="weighting"):
        validate_config(TrainConfig, {"weighting": "boost"})
    with pytest.raises(ConfigError, match="preset: got 'ddpm-huge'"):
        validate_config(TrainConfig, {"preset": "ddpm-huge"})
    with pytest.raises(TrainError, match="divisible by processes x grad_accum"):
        train(_cfg(grad_accum=3), dataset, tmp_path, progress=False)
    with pytest.raises(WeightsError, match="missing \\['d'\\]"):
        train(_cfg(), dataset, tmp_path, class_weights={"a": 0.5, "b": 0.5, "c": 0.0}, progress=False)
    unlabelled = ImageDataset(dataset.images, None, [])
    with pytest.raises(TrainError, match="need a labelled dataset"):
        train(_cfg(), unlabelled, tmp_path, class_weights=WEIGHTS, progress=False)


def test_init_from_a_saved_model(dataset, tmp_path):
    from diffprune.diffusion import create_scheduler, save_model

    torch.manual_seed(123)
    start = create_model("ddpm-tiny", sample_size=8, in_channels=1, out_channels=1)
    save_model(tmp_path / "init", start, create_scheduler("ddpm-tiny"))
    # the first warm-up step has lr 0, so one step leaves the weights at the initialisation
    train(_cfg(steps=1, init_from=str(tmp_path / "init")), dataset, tmp_path / "run", progress=False)
    got = _weights(tmp_path / "run" / "state" / "model.safetensors")
    for k, v in start.state_dict().items():
        assert torch.equal(got[k], v)
    with pytest.raises(TrainError, match="init_from model has sample_size=8"):
        big = ImageDataset(np.zeros((8, 1, 16, 16), np.uint8), np.arange(8) % 4, CLASSES)
        train(_cfg(steps=1, init_from=str(tmp_path / "init")), big, tmp_path / "bad", progress=False)


def test_tensorboard_is_optional(dataset, tmp_path):
    try:
        import tensorboard  # noqa: F401
    except ImportError:
        with pytest.raises(TrainError, match="pip install tensorboard"):
            train(_cfg(steps=1, tensorboard=True), dataset, tmp_path, progress=False)
    else:
        train(_cfg(steps=2, tensorboard=True), dataset, tmp_path, progress=False)
        assert any((tmp_path / "logs").rglob("events.out.tfevents.*"))


def test_learns_real_digits(tmp_path):
    """On sklearn's 8x8 digits (real images) the epsilon loss falls well below its start within 60 steps."""
    from diffprune.data import load_dataset

    digits = load_dataset("digits")
    cfg = TrainConfig(preset="ddpm-tiny", steps=60, batch_size=32, lr=2e-3, warmup_steps=5, log_every=10,
                      checkpoint_every=0, seed=0)
    summary = train(cfg, digits, tmp_path, progress=False)
    losses = [json.loads(x)["loss"] for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert len(losses) == 6 and summary["steps"] == 60
    assert losses[-1] < 0.5 * losses[0], losses  # at initialisation the loss is ~1 (predicting ~0 for N(0, I))


def test_one_process_can_train_with_different_precisions(dataset, tmp_path):
    """accelerate fixes the precision per process; the trainer allows a change in a non-launched process."""
    a = train(_cfg(steps=1), dataset, tmp_path / "fp32", progress=False)
    b = train(_cfg(steps=1, mixed_precision="bf16"), dataset, tmp_path / "bf16", progress=False)
    c = train(_cfg(steps=1), dataset, tmp_path / "fp32-again", progress=False)
    assert a["steps"] == b["steps"] == c["steps"] == 1
    wa = _weights(tmp_path / "fp32/state/model.safetensors")
    wc = _weights(tmp_path / "fp32-again/state/model.safetensors")
    assert all(torch.equal(wa[k], wc[k]) for k in wa)  # the bf16 run in between leaves fp32 runs reproducible


def test_ema_warmup_matches_diffusers_ema_model():
    """EMA(warmup=True) follows diffusers' EMAModel decay schedule update by update (an independent oracle)."""
    from diffusers.training_utils import EMAModel

    from diffprune.diffusion.ema import EMA

    torch.manual_seed(0)
    model = torch.nn.Linear(4, 3)
    ours = EMA(model, decay=0.95, warmup=True)
    theirs = EMAModel(model.parameters(), decay=0.95)
    for _ in range(200):  # the warm-up reaches 0.95 after 170 updates
        with torch.no_grad():
            for p in model.parameters():
                p.add_(torch.randn_like(p))
        ours.update()
        theirs.step(model.parameters())
    for mine, ref in zip(ours.module.parameters(), theirs.shadow_params):
        torch.testing.assert_close(mine, ref, rtol=1e-6, atol=1e-6)
    assert ours.current_decay() == 0.95  # past the warm-up the configured decay applies
    assert EMA(model, decay=0.95, warmup=True).current_decay() == 0.0  # the first update copies


def test_metrics_after_a_resume_between_log_lines_equal_the_uninterrupted_ones(dataset, tmp_path, monkeypatch):
    """A checkpoint at step 5 with log_every=3: the resumed line of step 6 still averages steps 4..6."""
    cfg = _cfg(steps=7, log_every=3, checkpoint_every=5)
    train(cfg, dataset, tmp_path / "straight", progress=False)
    real = train_mod.global_batch_indices

    def signal_during_step_4(step, *args, **kwargs):  # 0-based step 4 is the 5th: stop after it, at step 5
        if step == 4:
            os.kill(os.getpid(), signal.SIGTERM)
        return real(step, *args, **kwargs)

    monkeypatch.setattr(train_mod, "global_batch_indices", signal_during_step_4)
    with pytest.raises(TrainingInterrupted, match="step 5/7"):
        train(cfg, dataset, tmp_path / "resumed", progress=False)
    monkeypatch.setattr(train_mod, "global_batch_indices", real)
    train(cfg, dataset, tmp_path / "resumed", resume=True, progress=False)

    def rows(run):
        return [{k: r[k] for k in ("step", "loss", "lr", "images_seen")}
                for r in map(json.loads, (tmp_path / run / "metrics.jsonl").read_text().splitlines())]

    straight, resumed = rows("straight"), rows("resumed")
    assert [r["step"] for r in straight] == [3, 6, 7]
    assert resumed == straight


# ---- class mass: weights a give class k the share a_k of the signal in both modes, imbalanced groups too ----
IMBALANCED_COUNTS = np.array([6, 18, 36])  # p = 0.1, 0.3, 0.6
IMBALANCED_A = np.array([0.5, 0.3, 0.2])


def _imbalanced_labels() -> np.ndarray:
    return np.random.default_rng(5).permutation(np.repeat(np.arange(3), IMBALANCED_COUNTS))


def test_loss_and_resample_give_each_class_its_weight_on_imbalanced_groups():
    from diffprune.diffusion.batches import class_loss_multipliers, example_probabilities

    labels = _imbalanced_labels()
    n, batch = len(labels), 12
    # loss weighting: one epoch of uniform batches sees every example once, so class k's loss mass is exactly
    # n_k * m_k / N; the oracle is a_k
    m = class_loss_multipliers(labels, IMBALANCED_A)
    drawn = torch.cat([global_batch_indices(s, batch, n, seed=1) for s in range(n // batch)]).numpy()
    mass_loss = np.bincount(labels[drawn], weights=m[labels[drawn]], minlength=3) / len(drawn)
    np.testing.assert_allclose(mass_loss, IMBALANCED_A, rtol=1e-12)
    np.testing.assert_allclose(m, IMBALANCED_A / (IMBALANCED_COUNTS / n), rtol=1e-12)  # a_k / p_k
    assert not np.allclose(3 * IMBALANCED_A * IMBALANCED_COUNTS / n, IMBALANCED_A)  # K * a_k would be wrong here
    # resample weighting: exact class probabilities, and the empirical share of many drawn batches
    probs = example_probabilities(labels, IMBALANCED_A)
    np.testing.assert_allclose(np.bincount(labels, weights=probs, minlength=3), IMBALANCED_A, rtol=1e-12)
    t_probs = torch.from_numpy(probs)
    draws = torch.cat([global_batch_indices(s, batch, n, seed=1, probs=t_probs) for s in range(1500)]).numpy()
    share = np.bincount(labels[draws], minlength=3) / len(draws)
    sigma = np.sqrt(IMBALANCED_A * (1 - IMBALANCED_A) / len(draws))
    assert np.all(np.abs(share - IMBALANCED_A) < 4 * sigma), (share, IMBALANCED_A)


def test_trainer_multiplies_the_loss_by_a_over_p_on_imbalanced_groups(tmp_path, monkeypatch):
    """With a per-example loss of 1 the logged loss of a step is the batch mean of the multipliers a_y / p_y."""
    labels = _imbalanced_labels()
    images = np.random.default_rng(0).integers(0, 256, (len(labels), 1, 8, 8), dtype=np.uint8)
    data = ImageDataset(images, labels, ["x", "y", "z"], name="imbalanced")

    def unit_loss(model, scheduler, x0, t, noise, class_labels=None, **_):
        return model(x0, t).sample * 0 + 1

    monkeypatch.setattr(train_mod, "diffusion_loss", unit_loss)
    cfg = _cfg(steps=5, batch_size=12, hflip=False)
    train(cfg, data, tmp_path, class_weights=dict(zip(["x", "y", "z"], IMBALANCED_A.tolist())), progress=False)
    logged = [json.loads(line)["loss"] for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    m = IMBALANCED_A * len(labels) / IMBALANCED_COUNTS
    expected = [m[labels[global_batch_indices(s, 12, len(labels), cfg.seed).numpy()]].mean() for s in range(5)]
    np.testing.assert_allclose(logged, expected, rtol=1e-5)
    assert np.mean(logged) == pytest.approx(1.0, rel=1e-5)  # an epoch of multipliers averages to 1


def test_mixed_precision_unset_lets_accelerate_decide(dataset, tmp_path, monkeypatch):
    """`accelerate launch --mixed_precision bf16` sets ACCELERATE_MIXED_PRECISION; an unset config follows it,
    a set one wins."""
    monkeypatch.setenv("ACCELERATE_MIXED_PRECISION", "bf16")
    assert TrainConfig().mixed_precision is None
    assert train(_cfg(steps=1), dataset, tmp_path / "a", progress=False)["mixed_precision"] == "bf16"
    assert train(_cfg(steps=1, mixed_precision="no"), dataset, tmp_path / "b", progress=False)["mixed_precision"] == "no"
    monkeypatch.delenv("ACCELERATE_MIXED_PRECISION")
    assert train(_cfg(steps=1), dataset, tmp_path / "c", progress=False)["mixed_precision"] == "no"


def test_sample_every_writes_grids_to_disk_and_trackers(dataset, tmp_path):
    pytest.importorskip("tensorboard")
    from PIL import Image
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    train(_cfg(steps=4, sample_every=2, log_with=["tensorboard"]), dataset, tmp_path, progress=False)
    grids = sorted(p.name for p in (tmp_path / "samples").glob("*.png"))
    assert grids == ["step-2.png", "step-4.png"]
    side = 8 * 4 + 2 * 5  # 16 samples of 8 px in a 4 x 4 grid with 2 px padding
    assert Image.open(tmp_path / "samples" / "step-4.png").size == (side, side)
    events = EventAccumulator(str(next((tmp_path / "logs").rglob("events.out.tfevents.*")).parent))
    events.Reload()
    assert [e.step for e in events.Scalars("train/loss")] == [1, 2, 3, 4]
    assert [e.step for e in events.Images("samples")] == [2, 4]
    with pytest.raises(ValueError, match="unknown tracker"):
        TrainConfig(log_with=["tensorbored"])
