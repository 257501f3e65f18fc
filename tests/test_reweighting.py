"""The DRO stage end to end on tiny models: pairing, the handicap experiment, resume, files, weights I/O."""
from __future__ import annotations

import json
import logging
import math
import os
import signal

import numpy as np
import pytest
import torch
from PIL import Image
from scipy.stats import entropy as scipy_entropy

from diffprune.config import ConfigError, validate_config
from diffprune.data import ImageDataset, load_dataset
from diffprune.diffusion import create_scheduler, load_model, save_model
from diffprune.io import hash_state_dict
from diffprune.reweighting import (
    CheckpointMismatchError,
    ClassDRO,
    ClassWeightsError,
    DROHook,
    DROInterrupted,
    ReweightConfig,
    ReweightError,
    load_class_weights,
    prepare_reference,
    run_dro,
    weights_entropy,
)
from diffprune.reweighting.checkpoint import RunLog
from diffprune.reweighting.outputs import write_outputs
from diffprune.reweighting.proxy import build_proxy
from diffprune.reweighting.sampling import PairedBatches

# ddpm-tiny at 8 x 8 px grey: ~177k parameters, tens of ms per step.
TINY = dict(proxy_preset="ddpm-tiny", batch_size=20, lr=1e-3, warmup_steps=0, device="cpu")



@pytest.fixture(scope="module")
def digits() -> ImageDataset:
    return load_dataset("digits", resolution=8)


def _config(**kw) -> ReweightConfig:
    return ReweightConfig(**{**TINY, **kw})


@pytest.fixture(scope="module")
def random_reference(tmp_path_factory, digits) -> str:
    """An untrained reference folder (seed 123): enough for plumbing tests."""
    path = tmp_path_factory.mktemp("ref") / "model"
    model = build_proxy(_config(seed=123), digits)
    save_model(path, model, create_scheduler("ddpm-tiny"))
    return str(path)


# --- pairing and the reference ---------------------------------------------------------------------------

def test_identical_models_give_zero_excess(digits, tmp_path) -> None:
    """Proxy and reference start from the same weights: with the same x0, t and noise (drawn by the trainer,
    handed to the hook) the first excess is exactly 0 up to float rounding (inference-mode and autograd
    kernels differ by ~1e-7), so the first update leaves the weights uniform. Unpaired t or noise would give a
    clipped excess of order 0.1-1."""
    cfg = _config(seed=5, estimator="pixel", steps=2)
    save_model(tmp_path / "ref", build_proxy(cfg, digits), create_scheduler("ddpm-tiny"))  # the proxy's init
    run_dro(cfg, digits, str(tmp_path / "ref"), tmp_path / "dro", progress=False)
    with np.load(tmp_path / "dro" / "trajectory.npz") as t:
        assert np.all(t["excess"][0] < 1e-5), t["excess"][0]
        np.testing.assert_allclose(t["weights"][0], np.full(10, 0.1), atol=1e-6)
        assert t["excess"][1].mean() > 1e-3, t["excess"][1]  # the proxy has moved (lr 1e-3): excess > 0


def test_hook_pairs_freezes_and_weights_the_loss(digits, random_reference) -> None:
    """One hook call on a batch of ``PairedBatches``: the reference stays frozen, the excess is the
    estimator's on the same x0/t/noise, and the returned multipliers turn the trainer's mean loss into the
    class-weighted objective ``weighted_class_loss`` (an independent formula)."""
    from diffprune.diffusion import diffusion_loss
    from diffprune.reweighting.excess import per_class_excess_sums, weighted_class_loss

    model, scheduler = load_model(random_reference)
    before = hash_state_dict(model.state_dict())
    cfg = _config(batch_size=7, eta=5.0)  # 7 examples over 10 classes: some classes absent
    hook = DROHook(cfg, digits, model, scheduler, {})
    proxy = build_proxy(cfg.model_copy(update={"seed": 3}), digits)
    for step in range(3):
        hook.batch_indices(step)
        x0, y, t, noise = PairedBatches(cfg, digits, 1000, torch.device("cpu"))(step)
        loss = diffusion_loss(proxy, scheduler, x0, t, noise)
        w = hook(step, x0, y, t, noise, loss)
        with torch.inference_mode():
            sums, counts = per_class_excess_sums(loss, diffusion_loss(model, scheduler, x0, t, noise), y, 10,
                                                 cfg.estimator)
        present = (counts > 0).numpy()
        np.testing.assert_allclose(hook.dro.scores[present], (sums / counts).numpy()[present], rtol=1e-6)
        a = torch.as_tensor(hook.dro.weights, dtype=torch.float32)
        expected = weighted_class_loss(loss.mean(dim=(1, 2, 3)), y, a)
        torch.testing.assert_close((loss.mean(dim=(1, 2, 3)) * w).mean(), expected, rtol=1e-5, atol=0)
        assert hook.log.losses[-1] == pytest.approx(float(expected.detach()), rel=1e-5)
    assert not np.allclose(hook.dro.weights, 0.1)  # eta 5: the weights moved, so the check is not vacuous
    assert hash_state_dict(hook.reference.state_dict()) == before
    assert all(not p.requires_grad for p in hook.reference.parameters()) and not hook.reference.training


def test_hook_sees_the_trainers_draws(digits, random_reference, tmp_path, monkeypatch) -> None:
    """The trainer hands the hook the batch of ``batch_indices`` with the timesteps and noise that
    ``PairedBatches`` (the null control's replay) reproduces."""
    seen = []
    real = DROHook.__call__

    def record(self, step, x0, labels, timesteps, noise, loss):
        seen.append((step, x0.clone(), labels.clone(), timesteps.clone(), noise.clone()))
        return real(self, step, x0, labels, timesteps, noise, loss)

    monkeypatch.setattr(DROHook, "__call__", record)
    cfg = _config(steps=2)
    run_dro(cfg, digits, random_reference, tmp_path, progress=False)
    batches = PairedBatches(cfg, digits, 1000, torch.device("cpu"))
    assert [s[0] for s in seen] == [0, 1]
    for step, *drawn in seen:
        for got, want in zip(drawn, batches(step)):
            torch.testing.assert_close(got, want, rtol=0, atol=0)


def test_update_every_covers_all_classes(digits, random_reference, tmp_path) -> None:
    # 10 classes, batch 5: one update per 2 steps sees every class (batch_size * update_every = K).
    run_dro(_config(batch_size=5, update_every=2, steps=6), digits, random_reference, tmp_path, progress=False)
    with np.load(tmp_path / "trajectory.npz") as t:
        assert t["steps"].tolist() == [1, 3, 5] and t["present"].all() and t["loss"].shape == (6,)


# --- the handicap experiment ------------------------------------------------------------------------------

def _specialised_reference(tmp_path, digits: ImageDataset, cls: int) -> str:
    """A reference trained (by the engine's trainer) on class ``cls`` only: relative to it, a proxy that sees
    all classes uniformly is handicapped on ``cls`` and nowhere else."""
    subset = digits.subset(np.flatnonzero(digits.labels == cls))
    cfg = _config(reference_steps=150, batch_size=32, seed=cls)
    return str(prepare_reference(cfg, subset, tmp_path / f"ref{cls}", progress=False))


@pytest.mark.parametrize("cls", [0, 7])
def test_handicapped_class_gains_weight(tmp_path, digits, cls) -> None:
    reference = _specialised_reference(tmp_path, digits, cls)
    cfg = _config(steps=40, batch_size=20, seed=0)
    run_dro(cfg, digits, reference, tmp_path / "dro", progress=False)
    weights = load_class_weights(tmp_path / "dro" / "class_weights.json", digits.class_names)
    a = np.array(list(weights.values()))
    assert a[cls] > 1.0 / 10 + 0.02, a
    assert int(np.argmax(a)) == cls, a


# --- run_dro: files, determinism, resume --------------------------------------------------------------------

@pytest.fixture(scope="module")
def short_run(tmp_path_factory, digits, random_reference):
    out = tmp_path_factory.mktemp("dro")
    cfg = _config(steps=12, checkpoint_every=5)
    return out, cfg, run_dro(cfg, digits, random_reference, out, progress=False)


def test_run_dro_writes_every_file(short_run, digits) -> None:
    out, cfg, numbers = short_run
    for name in ("class_weights.json", "trajectory.npz", "weights.png", "trajectory.png", "summary.json",
                 "proxy/state/dro_hook.npz", "proxy/state/trainer_state.json"):
        assert (out / name).is_file(), name
    weights = load_class_weights(out / "class_weights.json", digits.class_names)
    assert math.isclose(sum(weights.values()), 1.0, abs_tol=1e-9)
    with np.load(out / "trajectory.npz", allow_pickle=False) as t:
        assert t["weights"].shape == (12, 10) and t["excess"].shape == (12, 10) and t["average"].shape == (10,)
        np.testing.assert_allclose(t["average"], np.vstack([t["initial"][None], t["weights"]]).mean(0), atol=1e-12)
        np.testing.assert_allclose(list(weights.values()), t["average"], atol=1e-12)
        assert t["loss"].shape == (12,) and np.all(np.isfinite(t["loss"]))
    for png in ("weights.png", "trajectory.png"):
        with Image.open(out / png) as im:
            assert im.format == "PNG" and im.size[0] > 100
    summary = json.loads((out / "summary.json").read_text())
    assert summary["entropy"] == pytest.approx(weights_entropy(weights))
    assert summary["collapsed"] is False and summary["num_classes"] == 10
    assert numbers["steps"] == 12 and numbers["updates"] == 12


def test_run_dro_is_deterministic(short_run, digits, random_reference, tmp_path) -> None:
    out, cfg, _ = short_run
    run_dro(cfg, digits, random_reference, tmp_path / "again", progress=False)
    assert (tmp_path / "again" / "class_weights.json").read_text() == (out / "class_weights.json").read_text()
    run_dro(cfg.model_copy(update={"seed": 1}), digits, random_reference, tmp_path / "seed1", progress=False)
    assert (tmp_path / "seed1" / "class_weights.json").read_text() != (out / "class_weights.json").read_text()


def test_resume_continues_exactly(short_run, digits, random_reference, tmp_path) -> None:
    out, cfg, _ = short_run
    part = tmp_path / "part"
    run_dro(cfg.model_copy(update={"steps": 7}), digits, random_reference, part, progress=False)  # "interrupted"
    assert json.loads((part / "proxy" / "state" / "trainer_state.json").read_text())["step"] == 7
    run_dro(cfg, digits, random_reference, part, progress=False)  # resumes at 7, runs to 12
    with np.load(out / "trajectory.npz") as full, np.load(part / "trajectory.npz") as resumed:
        for key in ("weights", "excess", "average", "loss"):
            np.testing.assert_array_equal(full[key], resumed[key], err_msg=key)


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_signal_checkpoints_then_resume_matches(short_run, digits, random_reference, tmp_path, monkeypatch,
                                                sig) -> None:
    """A signal during step 3 (here from inside the hook, as a kill arrives mid-step): the trainer finishes the
    step, checkpoints (with the hook's DRO state) and stops; the rerun resumes to the uninterrupted run's
    weights, trajectory and losses, bit for bit."""
    out, cfg, _ = short_run
    real = DROHook.__call__

    def signal_at_step_3(self, step, *args):
        if step == 3:
            os.kill(os.getpid(), sig)
        return real(self, step, *args)

    monkeypatch.setattr(DROHook, "__call__", signal_at_step_3)
    with pytest.raises(DROInterrupted, match="after step 4/12"):
        run_dro(cfg, digits, random_reference, tmp_path, progress=False)
    monkeypatch.setattr(DROHook, "__call__", real)
    assert json.loads((tmp_path / "proxy" / "state" / "trainer_state.json").read_text())["step"] == 4
    assert not (tmp_path / "class_weights.json").exists()
    run_dro(cfg, digits, random_reference, tmp_path, progress=False)
    assert (tmp_path / "class_weights.json").read_text() == (out / "class_weights.json").read_text()
    with np.load(out / "trajectory.npz") as full, np.load(tmp_path / "trajectory.npz") as resumed:
        for key in ("weights", "excess", "average", "loss", "present", "steps"):
            np.testing.assert_array_equal(full[key], resumed[key], err_msg=key)


def test_resume_refuses_another_run(short_run, digits, random_reference, tmp_path) -> None:
    out, cfg, _ = short_run
    with pytest.raises(CheckpointMismatchError, match="another run"):
        run_dro(cfg.model_copy(update={"eta": 0.5}), digits, random_reference, out, progress=False)
    with pytest.raises(CheckpointMismatchError, match="beyond"):
        run_dro(cfg.model_copy(update={"steps": 3}), digits, random_reference, out, progress=False)
    other = tmp_path / "other_ref"
    save_model(other, build_proxy(_config(seed=124), digits), create_scheduler("ddpm-tiny"))
    with pytest.raises(CheckpointMismatchError, match="reference_weights"):
        run_dro(cfg, digits, str(other), out, progress=False)


def test_run_dro_rejects_unlabelled_and_mismatched(digits, random_reference, tmp_path) -> None:
    unlabelled = ImageDataset(digits.images, None, [])
    with pytest.raises(ReweightError, match="no labels"):
        run_dro(_config(), unlabelled, random_reference, tmp_path, progress=False)
    big = load_dataset("digits", resolution=16, limit=50)
    with pytest.raises(ReweightError, match="resolution"):
        run_dro(_config(), big, random_reference, tmp_path, progress=False)


def test_prepare_reference_given_folder(digits, random_reference, tmp_path) -> None:
    cfg = _config(reference=random_reference)
    assert prepare_reference(cfg, digits, tmp_path) == __import__("pathlib").Path(random_reference).resolve()
    with pytest.raises(ReweightError, match="resolution"):
        prepare_reference(cfg, load_dataset("digits", resolution=16, limit=50), tmp_path)


def test_prepare_reference_from_train_dir_is_materialised(digits, random_reference, tmp_path) -> None:
    model, scheduler = load_model(random_reference)
    save_model(tmp_path / "train_run" / "model", model, scheduler)  # a diffprune train directory
    out = prepare_reference(_config(reference=str(tmp_path / "train_run")), digits, tmp_path / "reference")
    assert out == tmp_path / "reference" / "model"
    again, _ = load_model(out)
    assert hash_state_dict(again.state_dict()) == hash_state_dict(model.state_dict())


# --- collapse warning, weights files, config --------------------------------------------------------------

def test_collapse_is_reported(tmp_path, caplog) -> None:
    dro = ClassDRO(6, eta=50.0)
    for _ in range(30):
        dro.update(np.array([1.0, 0, 0, 0, 0, 0]), np.ones(6, dtype=bool))
    log = RunLog([0.1] * 30, list(range(30)), [np.ones(6, dtype=bool)] * 30, np.zeros(6), np.zeros(6), 0)
    names = list("abcdef")
    with caplog.at_level(logging.WARNING, logger="diffprune.reweighting"):
        numbers = write_outputs(tmp_path, dro, log, names, _config(), 1.0, progress=False)
    assert numbers["collapsed"] == 1.0 and numbers["max_weight"] > 0.9
    assert "collapsed" in caplog.text and "'a'" in caplog.text and "smaller step size" in caplog.text
    assert "eta" in json.loads((tmp_path / "summary.json").read_text())["warning"]


def test_weights_entropy_matches_scipy() -> None:
    a = np.array([0.1, 0.2, 0.3, 0.4])
    assert weights_entropy(a) == pytest.approx(scipy_entropy(a))
    assert weights_entropy({"x": 0.5, "y": 0.5}) == pytest.approx(math.log(2))
    assert weights_entropy([1.0, 0.0, 0.0]) == 0.0


@pytest.mark.parametrize(
    "content,match",
    [('{"0": 0.5, "1": 0.6}', "sum to"), ('{"0": -0.5, "1": 1.5}', ">= 0"), ('{"0": 1.0}', "missing"),
     ('{"0": 0.5, "x": 0.5}', "unknown"), ("[0.5, 0.5]", "JSON object"), ("{bad", "not valid JSON"),
     ('{"0": "half", "1": 0.5}', "finite numbers")],
)
def test_load_class_weights_validates(tmp_path, content, match) -> None:
    path = tmp_path / "w.json"
    path.write_text(content)
    with pytest.raises(ClassWeightsError, match=match):
        load_class_weights(path, ["0", "1"])


def test_load_class_weights_orders_by_class_names(tmp_path) -> None:
    path = tmp_path / "w.json"
    path.write_text('{"b": 0.25, "a": 0.75}')
    assert list(load_class_weights(path, ["a", "b"])) == ["a", "b"]
    with pytest.raises(ClassWeightsError, match="not found"):
        load_class_weights(tmp_path / "missing.json")


@pytest.mark.parametrize(
    "data,match",
    [({"train_reference": True}, "unknown field"),  # removed: a reference is trained exactly when none is given
     ({"excess": "token"}, "pixel"), ({"estimator": "token"}, "timestep"),
     ({"null_control": True, "reference": "x"}, "null_reference"), ({"null_reference": "y"}, "set reference"),
     ({"null_seed": 0}, "null_seed must differ"),
     ({"proxy_preset": "huge"}, "ddpm-tiny"), ({"steps": 0}, "steps"), ({"eta": -1}, "eta"),
     ({"smoothing": 1.0}, "smoothing"), ({"colour": 1}, "unknown field")],
)
def test_config_errors(data, match) -> None:
    with pytest.raises(ConfigError, match=match):
        validate_config(ReweightConfig, data)


def test_config_defaults() -> None:
    cfg = ReweightConfig()
    assert cfg.trains_reference and cfg.eta == 1.0 and cfg.smoothing == 1e-3 and cfg.estimator == "example"
    assert cfg.reference_budget == cfg.steps and cfg.null_reference_seed == cfg.seed + 1  # DoReMi's setting
    assert ReweightConfig(excess="pixel").estimator == "pixel"  # the former field name still reads
    assert cfg.proxy_lr() == 1e-3  # the ddpm-tiny recipe
    assert not ReweightConfig(reference="google/ddpm-cifar10-32").trains_reference


# --- the null control ---------------------------------------------------------------------------------------

def test_null_band_by_hand() -> None:
    from diffprune.reweighting.null import null_band

    band = null_band([0.255, 0.3, 0.245, 0.2], [0.26, 0.25, 0.24, 0.25], ["a", "b", "c", "d"])
    assert band["band_halfwidth"] == pytest.approx(0.01) and band["band"] == pytest.approx([0.24, 0.26])
    assert band["distinguishable"] == ["b", "d"] and band["indistinguishable"] == ["a", "c"]
    assert band["signal_to_null"] == pytest.approx(5.0)


def test_null_control_against_the_reference_itself_stays_uniform(digits, random_reference) -> None:
    """A null reference identical to the reference: the excess is exactly zero, the null weights uniform."""
    from diffprune.reweighting.null import run_null_dro

    dro, log = run_null_dro(_config(steps=4), digits, random_reference, random_reference, progress=False)
    assert dro.num_updates == 4 and log.update_steps == [0, 1, 2, 3]
    np.testing.assert_array_equal(dro.score_history, 0.0)
    np.testing.assert_allclose(dro.average, np.full(10, 0.1), rtol=1e-12)


def test_null_dro_replays_the_real_runs_batches(digits, random_reference, tmp_path) -> None:
    """The null DRO sees the very batches, timesteps and noise of the real DRO (``PairedBatches`` of the
    config's seed): its first excess equals the excess of the two models computed here on batch 0."""
    from diffprune.diffusion import diffusion_loss
    from diffprune.reweighting.excess import per_class_excess_sums
    from diffprune.reweighting.null import run_null_dro
    from diffprune.reweighting.sampling import PairedBatches

    other = str(prepare_reference(_config(reference_steps=3, seed=9), digits, tmp_path / "other", progress=False))
    cfg = _config(steps=2)
    dro, _ = run_null_dro(cfg, digits, random_reference, other, progress=False)
    (ref, sched), (oth, _) = load_model(random_reference), load_model(other)
    x0, y, t, noise = PairedBatches(cfg, digits, 1000, torch.device("cpu"))(0)
    with torch.inference_mode():
        sums, counts = per_class_excess_sums(diffusion_loss(oth, sched, x0, t, noise),
                                             diffusion_loss(ref, sched, x0, t, noise), y, 10, cfg.estimator,
                                             timesteps=t, num_timesteps=1000)
    np.testing.assert_allclose(dro.score_history[0], (sums / counts).numpy(), rtol=1e-6)


# --- bf16, iterated DoReMi ------------------------------------------------------------------------------------

def test_dro_in_bf16(digits, random_reference, tmp_path) -> None:
    """The proxy trains under accelerate's bf16 autocast (and the reference's forward with it): the run records
    the precision and its weights are a valid, moved distribution close to the fp32 run's."""
    cfg = _config(steps=4, eta=5.0)
    run_dro(cfg, digits, random_reference, tmp_path / "fp32", progress=False)
    run_dro(cfg.model_copy(update={"mixed_precision": "bf16"}), digits, random_reference, tmp_path / "bf16",
            progress=False)
    summary = json.loads((tmp_path / "bf16" / "summary.json").read_text())
    assert summary["mixed_precision"] == "bf16"
    assert json.loads((tmp_path / "fp32" / "summary.json").read_text())["mixed_precision"] == "no"
    a16 = np.array(list(load_class_weights(tmp_path / "bf16" / "class_weights.json").values()))
    a32 = np.array(list(load_class_weights(tmp_path / "fp32" / "class_weights.json").values()))
    assert np.abs(a32 - 0.1).max() > 1e-2  # moved
    np.testing.assert_allclose(a16, a32, atol=0.2 * np.abs(a32 - 0.1).max())  # bf16: ~3 significant digits


def test_iterated_doremi_rounds(digits, tmp_path) -> None:
    """rounds = 3: round 1 is the non-iterated run (same files); every round's reference trained with the
    previous round's averaged weights; ``max_change`` is max |a_r - a_(r-1)| of the round files (a_0 uniform);
    rerun with a tolerance just above the smallest change, the stage stops at the first round below it."""
    cfg = _config(steps=6, eta=5.0, checkpoint_every=100)
    reference = prepare_reference(cfg, digits, tmp_path / "ref", progress=False)
    run_dro(cfg, digits, reference, tmp_path / "plain", progress=False)
    iterated = cfg.model_copy(update={"rounds": 3, "rounds_tol": 1e-12})
    numbers = run_dro(iterated, digits, reference, tmp_path / "it", progress=False)
    record = json.loads((tmp_path / "it" / "rounds.json").read_text())
    assert numbers["rounds_run"] == 3 and record["rounds_run"] == 3 and record["converged"] is False
    assert ((tmp_path / "it" / "round-1" / "class_weights.json").read_text()
            == (tmp_path / "plain" / "class_weights.json").read_text())
    previous = np.full(10, 0.1)
    changes = []
    for r, row in enumerate(record["rounds"], start=1):
        a = np.array(list(load_class_weights(tmp_path / "it" / f"round-{r}" / "class_weights.json").values()))
        with np.load(tmp_path / "it" / row["trajectory"]) as t:
            np.testing.assert_allclose(t["average"], a, rtol=0, atol=1e-12)
        np.testing.assert_allclose(list(row["reference_weights"].values()), previous, atol=1e-12)
        assert row["max_change"] == pytest.approx(np.abs(a - previous).max(), abs=1e-12)
        changes.append(row["max_change"])
        if r > 1:  # the round's reference was trained with the previous round's weights (its trajectory hash)
            from diffprune.diffusion.checkpoint import trajectory_hash as _trajectory_hash
            from diffprune.reweighting.reference import reference_train_config

            meta = json.loads((tmp_path / "it" / f"round-{r}" / "reference" / "state" / "trainer_state.json")
                              .read_text())
            expected = _trajectory_hash(reference_train_config(cfg, digits).resolved(), digits,
                                        dict(zip(digits.class_names, previous)))
            assert meta["step"] == cfg.steps and meta["trajectory_hash"] == expected
        previous = a
    assert ((tmp_path / "it" / "class_weights.json").read_text()
            == (tmp_path / "it" / "round-3" / "class_weights.json").read_text())
    tol = min(changes) * (1 + 1e-6)
    stop = next(r for r, c in enumerate(changes, start=1) if c < tol)
    numbers = run_dro(iterated.model_copy(update={"rounds_tol": tol}), digits, reference, tmp_path / "it",
                      progress=False)  # the finished rounds resume from their checkpoints
    record = json.loads((tmp_path / "it" / "rounds.json").read_text())
    assert record["rounds_run"] == stop == numbers["rounds_run"] and record["converged"] is True
    assert ((tmp_path / "it" / "class_weights.json").read_text()
            == (tmp_path / "it" / f"round-{stop}" / "class_weights.json").read_text())


def test_rounds_need_a_trained_reference() -> None:
    with pytest.raises(ConfigError, match="rounds > 1"):
        validate_config(ReweightConfig, {"rounds": 2, "reference": "x"})
