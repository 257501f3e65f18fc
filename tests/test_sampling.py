"""Sampling against diffusers' reference pipelines, the CFG formula, determinism and the output files."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from diffusers import DDIMPipeline, DDIMScheduler, DDPMPipeline
from PIL import Image

from diffprune.config import ConfigError, validate_config
from diffprune.diffusion import SampleConfig, create_model, create_scheduler, sample_images, save_samples
from diffprune.diffusion.batches import stream_seed
from diffprune.diffusion.sampling import _STREAM_SAMPLE



@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return create_model("ddpm-tiny", sample_size=8).eval()


@pytest.fixture(scope="module")
def cond_model():
    torch.manual_seed(1)
    return create_model("ddpm-tiny", sample_size=8, in_channels=1, out_channels=1, num_class_embeds=4).eval()


def _sample_seed(seed, i):
    return torch.Generator().manual_seed(stream_seed(seed, _STREAM_SAMPLE, i))


@pytest.mark.parametrize("sampler", ["ddim", "ddpm"])
def test_matches_the_diffusers_pipeline(model, sampler):
    sched = create_scheduler("ddpm-tiny")
    cfg = SampleConfig(num_samples=2, sampler=sampler, steps=4, seed=5)
    ours = sample_images(model, sched, cfg, progress=False)
    for i in range(2):  # the pipelines draw one image from one generator: sample i's own stream
        if sampler == "ddim":
            pipe = DDIMPipeline(unet=model, scheduler=DDIMScheduler.from_config(sched.config))
            ref = pipe(batch_size=1, generator=_sample_seed(5, i), eta=0.0, num_inference_steps=4, output_type="np")
        else:
            pipe = DDPMPipeline(unet=model, scheduler=create_scheduler("ddpm-tiny"))
            ref = pipe(batch_size=1, generator=_sample_seed(5, i), num_inference_steps=4, output_type="np")
        expected = np.round(ref.images[0] * 255).astype(np.uint8)
        assert np.abs(ours[i].astype(int) - expected.astype(int)).max() <= 1


def test_deterministic_per_seed_and_independent_of_batching(model):
    sched = create_scheduler("ddpm-tiny")
    a = sample_images(model, sched, SampleConfig(num_samples=5, steps=3, batch_size=5, seed=1), progress=False)
    b = sample_images(model, sched, SampleConfig(num_samples=5, steps=3, batch_size=2, seed=1), progress=False)
    c = sample_images(model, sched, SampleConfig(num_samples=5, steps=3, batch_size=5, seed=2), progress=False)
    assert a.shape == (5, 8, 8, 3) and a.dtype == np.uint8
    assert np.abs(a.astype(int) - b.astype(int)).max() <= 1
    assert np.abs(a.astype(int) - c.astype(int)).mean() > 10


def test_classifier_free_guidance_formula(cond_model):
    sched = create_scheduler("ddpm-tiny")
    labels = np.array([0, 2, 1])
    s = 3.0
    ours = sample_images(cond_model, sched, SampleConfig(num_samples=3, steps=3, guidance_scale=s),
                         class_labels=labels, progress=False)
    ddim = DDIMScheduler.from_config(sched.config)
    ddim.set_timesteps(3)
    x = torch.cat([torch.randn((1, 1, 8, 8), generator=_sample_seed(0, i)) for i in range(3)])
    y, null = torch.from_numpy(labels), torch.full((3,), 3)
    with torch.no_grad():
        for t in ddim.timesteps:
            cond, uncond = cond_model(x, t, class_labels=y).sample, cond_model(x, t, class_labels=null).sample
            x = ddim.step(uncond + s * (cond - uncond), t, x).prev_sample
    expected = ((x.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()
    assert np.abs(ours.astype(int) - expected.astype(int)).max() <= 1
    plain = sample_images(cond_model, sched, SampleConfig(num_samples=3, steps=3), class_labels=labels,
                          progress=False)
    assert np.abs(plain.astype(int) - ours.astype(int)).mean() > 1  # guidance changes the images


def test_label_and_config_errors(model, cond_model):
    sched = create_scheduler("ddpm-tiny")
    with pytest.raises(ValueError, match="model is unconditional"):
        sample_images(model, sched, SampleConfig(num_samples=2, steps=1), class_labels=np.array([0, 1]))
    with pytest.raises(ValueError, match="needs a class-conditional model"):
        sample_images(model, sched, SampleConfig(num_samples=2, steps=1, guidance_scale=2.0))
    with pytest.raises(ValueError, match="null label 3 is reserved"):
        sample_images(cond_model, sched, SampleConfig(num_samples=2, steps=1), class_labels=np.array([0, 3]))
    with pytest.raises(ConfigError, match="sampler"):
        validate_config(SampleConfig, {"sampler": "euler"})
    with pytest.raises(ConfigError, match="steps: got 0"):
        validate_config(SampleConfig, {"steps": 0})


def test_save_samples_writes_the_evaluator_format(tmp_path):
    images = np.random.default_rng(0).integers(0, 256, (5, 8, 8, 3), dtype=np.uint8)
    save_samples(tmp_path, images, labels=np.array([0, 1, 2, 0, 1]))
    with np.load(tmp_path / "samples.npz") as f:
        assert sorted(f.files) == ["arr_0", "labels"]
        assert np.array_equal(f["arr_0"], images) and f["labels"].tolist() == [0, 1, 2, 0, 1]
    grid = np.asarray(Image.open(tmp_path / "grid.png"))
    assert grid.shape == (2 * 10 + 2, 3 * 10 + 2, 3)  # 5 images -> 2 rows x 3 columns, 2 px padding
    assert np.array_equal(grid[2:10, 12:20], images[1])
    save_samples(tmp_path / "grey", images[..., :1])
    with np.load(tmp_path / "grey" / "samples.npz") as f:
        assert f.files == ["arr_0"]
    with pytest.raises(ValueError, match="uint8 N x H x W x C"):
        save_samples(tmp_path, images.astype(np.float32))


def test_generate_writes_labelled_samples_from_a_saved_model(cond_model, tmp_path):
    from diffprune.diffusion import generate, load_model, save_model

    save_model(tmp_path / "m", cond_model, create_scheduler("ddpm-tiny"))
    out = generate(tmp_path / "m", tmp_path / "s", SampleConfig(num_samples=4, steps=2, batch_size=3), progress=False,
                   chunk=3)
    with np.load(out / "samples.npz") as f:
        assert f["arr_0"].shape == (4, 8, 8, 1) and f["labels"].tolist() == [0, 1, 2, 0]  # i % K, K = 3
    model, sched = load_model(tmp_path / "m")
    again = sample_images(model, sched, SampleConfig(num_samples=4, steps=2), progress=False)
    with np.load(out / "samples.npz") as f:
        assert np.array_equal(f["arr_0"], again)


def test_generate_resumes_from_finished_chunks(model, tmp_path, monkeypatch):
    import diffprune.diffusion.sampling as sampling_mod
    from diffprune.diffusion import generate, save_model

    save_model(tmp_path / "m", model, create_scheduler("ddpm-tiny"))
    cfg = SampleConfig(num_samples=5, steps=2, batch_size=2)
    straight = generate(tmp_path / "m", tmp_path / "a", cfg, progress=False, chunk=2)
    real, calls = sampling_mod._render, []

    def die_on_third_batch(*args, **kwargs):
        calls.append(args[2])
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(sampling_mod, "_render", die_on_third_batch)
    with pytest.raises(KeyboardInterrupt):
        generate(tmp_path / "m", tmp_path / "b", cfg, progress=False, chunk=2)
    assert len(list((tmp_path / "b" / ".chunks").glob("*.npy"))) == 2  # chunks [0, 2) and [2, 4) were saved
    calls.clear()

    def record(*args, **kwargs):
        calls.append(args[2])
        return real(*args, **kwargs)

    monkeypatch.setattr(sampling_mod, "_render", record)
    generate(tmp_path / "m", tmp_path / "b", cfg, progress=False, chunk=2)
    assert calls == [range(4, 5)]  # only the unfinished chunk was rendered
    with np.load(straight / "samples.npz") as a, np.load(tmp_path / "b" / "samples.npz") as b:
        assert np.array_equal(a["arr_0"], b["arr_0"]) and a["arr_0"].shape == (5, 8, 8, 3)
    assert not (tmp_path / "b" / ".chunks").exists()
