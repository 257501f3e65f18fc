"""The training step's host-side contract: batch indices against a brute-force epoch stream, no value handed
back to the host inside a step, and when ``compile: auto`` compiles."""
import numpy as np
import pytest
import torch

from diffprune.data import ImageDataset
from diffprune.diffusion import TrainConfig, setup, trainer
from diffprune.diffusion.batches import _epoch_permutation, global_batch_indices
from diffprune.testing import count_host_syncs


@pytest.mark.parametrize("batch_size, num_examples", [(8, 24), (7, 10), (5, 3), (16, 16)])
def test_global_batch_indices_cut_the_stream_of_epoch_permutations(batch_size, num_examples):
    stream = torch.cat([_epoch_permutation(3, e, num_examples) for e in range(40)])  # brute force: whole stream
    for step in range(12):
        expected = stream[step * batch_size:(step + 1) * batch_size]
        assert torch.equal(global_batch_indices(step, batch_size, num_examples, 3), expected)


def _conditional_weighted_run(tmp_path, **options):
    images = np.random.default_rng(0).integers(0, 256, (24, 1, 8, 8), dtype=np.uint8)
    ds = ImageDataset(images, np.arange(24) % 4, list("abcd"), name="toy")
    cfg = TrainConfig(preset="ddpm-tiny", steps=6, batch_size=8, lr=1e-3, warmup_steps=2, ema_decay=0.9,
                      checkpoint_every=0, seed=3, hflip=True, conditional=True, compile=False, **options).resolved()
    run = setup.set_up(cfg, ds, tmp_path, {"a": 0.1, "b": 0.2, "c": 0.3, "d": 0.4}, None, cfg.steps)
    return run, cfg


@pytest.mark.parametrize("options", [{}, {"snr_gamma": 5.0, "lr_schedule": "cosine"}])
def test_a_training_step_hands_no_value_back_to_the_host(tmp_path, options):
    """Every branch of the step (class loss weights, Min-SNR weights, label dropout, flips, clipping, EMA, the LR
    schedule) stays on the device: on a GPU, any ``.item()``/``.tolist()``/``bool(tensor)`` here would stall the
    host every step."""
    run, cfg = _conditional_weighted_run(tmp_path, **options)
    for step in range(cfg.steps):
        with count_host_syncs(run.accelerator.device) as seen:
            batch = trainer._global_batch(run, cfg, step, None)
            loss = trainer._micro_step(run, cfg, batch, step, 0, None)
            run.lr_schedule.step()
            run.ema.update()
        assert seen == [], f"step {step} handed values to the host: {seen}"
    with count_host_syncs(run.accelerator.device) as seen:  # the counter does see one
        float(loss)
        loss.item()
    assert [s.rsplit(": ", 1)[1] for s in seen] == ["Tensor.__float__", "Tensor.item"]


@pytest.mark.parametrize("setting, device, steps, expected", [
    (True, "cpu", 1, True), (False, "cuda", 10**6, False),
    ("auto", "cuda", setup.AUTO_COMPILE_MIN_STEPS["cuda"], True),
    ("auto", "cuda", setup.AUTO_COMPILE_MIN_STEPS["cuda"] - 1, False),
    ("auto", "cpu", setup.AUTO_COMPILE_MIN_STEPS["cpu"] - 1, False),
    ("auto", "mps", 10**6, False),
])
def test_compile_auto_compiles_long_runs_only(setting, device, steps, expected):
    assert setup.should_compile(setting, torch.device(device), steps) is expected


def test_compile_auto_needs_a_cpp_compiler_on_a_cpu(monkeypatch):
    steps = setup.AUTO_COMPILE_MIN_STEPS["cpu"]
    monkeypatch.setattr(setup.shutil, "which", lambda name: "/usr/bin/c++")
    assert setup.should_compile("auto", torch.device("cpu"), steps)
    monkeypatch.setattr(setup.shutil, "which", lambda name: None)
    assert not setup.should_compile("auto", torch.device("cpu"), steps)
