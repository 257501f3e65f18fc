"""Latent diffusion end to end, CI-sized: pixels -> features -> selection, then VAE latents (encoded once) for the
DRO reference/proxy and the DiT (MDT-masked) or Stable Diffusion UNet, decoded for the pixel-space metrics."""
import json

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from diffprune.cli import app

TINY = [
    "data.limit=80", "data.resolution=16", "data.resize=resize",
    "embed.encoder=pixels", "select.ratio=0.5",
    "latent.vae=tiny-random:0", "latent.batch_size=32", "latent.dtype=float32",
    "reweight.proxy_preset=dit-tiny", "reweight.steps=4", "reweight.batch_size=20", "reweight.reference_steps=4",
    "train.preset=dit-tiny", "train.conditional=true", "train.mask_ratio=0.3", "train.steps=4", "train.batch_size=8",
    "train.checkpoint_every=2",
    "sample.num_samples=10", "sample.steps=3", "sample.batch_size=10", "sample.guidance_scale=1.5",
    "evaluate.num_real=20", "evaluate.metrics=[fid, classifier_fd]", "evaluate.classwise=false",
    "evaluate.cross_check=false", "evaluate.classifier.epochs=1",
    "arms=[{method: gaussian, reweight: true}, {method: random}]",
]


def _invoke(*args):
    result = CliRunner().invoke(app, list(args), catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result.output


def _sets(items):
    return [x for item in items for x in ("--set", item)]


@pytest.fixture(scope="module")
def latent_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("runs")
    out = _invoke("run", "configs/demo.yaml", "--name", "latent", "--no-progress", *_sets([*TINY, f"runs_dir={tmp}"]))
    return tmp / "latent", out


def test_latent_run_goes_through_every_stage(latent_run):
    root, _ = latent_run
    (cache,) = (root / "latents").iterdir()
    meta = json.loads((cache / "meta.json").read_text())
    assert meta["latent_shape"] == [4, 8, 8] and meta["image_shape"] == [1, 16, 16]
    # the reference trains on every image, so every latent is encoded (each once: see the cache tests)
    assert np.load(cache / "done.npy").all()
    weights = json.loads((root / "reweight/gaussian-r0.5/class_weights.json").read_text())
    assert len(weights) == 10 and abs(sum(weights.values()) - 1) < 1e-6
    model_meta = json.loads((root / "train/gaussian+dro/model/diffprune.json").read_text())
    assert model_meta["latent"]["vae"] == "tiny-random:0" and model_meta["latent"]["image_channels"] == 1
    config = json.loads((root / "train/gaussian+dro/model/config.json").read_text())
    assert config["_class_name"] == "DiT" and config["sample_size"] == 8 and config["side_interpolater_depth"] > 0
    with np.load(root / "samples/random/samples.npz") as z:  # decoded to the data's pixels and channels
        assert z["arr_0"].shape == (10, 16, 16, 1) and z["arr_0"].dtype == np.uint8
        assert sorted(set(z["labels"].tolist())) == list(range(10))
    metrics = json.loads((root / "eval/gaussian+dro/metrics.json").read_text())
    assert np.isfinite(metrics["fid"]) and np.isfinite(metrics["classifier_fd"])


def test_latent_rerun_encodes_nothing(latent_run):
    root, first = latent_run
    assert "encode  latents" in first
    out = _invoke("run", "configs/demo.yaml", "--name", "latent", "--no-progress",
                  *_sets([*TINY, f"runs_dir={root.parent}"]))
    assert "encode" not in out and "run     train" not in out and "cached  train" in out


def test_stable_diffusion_arm_fine_tunes_the_class_prompt_unet(tmp_path):
    from diffprune.diffusion.sd import save_tiny_sd

    sd = save_tiny_sd(tmp_path / "sd", sample_size=8)
    items = [*TINY, f"runs_dir={tmp_path}", f"latent.vae={sd}", "train.preset=sd", f"train.init_from={sd}",
             "train.mask_ratio=0", "train.lr=1.0e-4", "arms=[{method: random}]", "train.prompt_names={'0': zero}"]
    _invoke("run", "configs/demo.yaml", "--name", "sd", "--no-progress", *_sets(items))
    root = tmp_path / "sd"
    config = json.loads((root / "train/random/model/config.json").read_text())
    assert config["_class_name"] == "ClassPromptUNet" and config["class_names"][:2] == ["zero", "1"]
    scheduler = json.loads((root / "train/random/model/scheduler/scheduler_config.json").read_text())
    assert scheduler["beta_schedule"] == "scaled_linear"  # SD's schedule, not the DDPM presets'
    with np.load(root / "samples/random/samples.npz") as z:
        assert z["arr_0"].shape == (10, 16, 16, 1)


def test_dit_training_resumes_bit_identically_on_latents(tmp_path):
    """3 steps + resume + 3 steps == 6 steps, with MDT masks and a latent dataset."""
    from diffprune.diffusion import TrainConfig, train
    from diffprune.data.latents import LatentDataset
    from safetensors.torch import load_file

    rng = np.random.default_rng(0)
    data = LatentDataset(rng.normal(size=(24, 4, 8, 8)).astype(np.float32), rng.integers(0, 3, 24),
                         ["a", "b", "c"], scaling_factor=0.5, shift_factor=0.0, image_channels=3, vae_spec="tiny-random")
    cfg = dict(preset="dit-tiny", batch_size=8, conditional=True, mask_ratio=0.3, checkpoint_every=3, log_every=1)
    train(TrainConfig(steps=6, **cfg), data, tmp_path / "once", progress=False)
    train(TrainConfig(steps=3, **cfg), data, tmp_path / "twice", progress=False)
    train(TrainConfig(steps=6, **cfg), data, tmp_path / "twice", resume=True, progress=False)
    a = load_file(tmp_path / "once/model/diffusion_pytorch_model.safetensors")
    b = load_file(tmp_path / "twice/model/diffusion_pytorch_model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    masked = load_file(tmp_path / "once/state/model.safetensors")
    side = [k for k in masked if "side" in k or "mask_token" in k]
    assert side, "the MDT side-interpolater is part of the trained model"


def test_hflip_on_latents_is_refused(tmp_path):
    from diffprune.diffusion import TrainConfig, TrainError, train
    from diffprune.data.latents import LatentDataset

    data = LatentDataset(np.zeros((4, 4, 8, 8), np.float32), None, [], 1.0, 0.0, 3, "tiny-random")
    with pytest.raises(TrainError, match="latents"):
        train(TrainConfig(preset="dit-tiny", steps=1, batch_size=2, hflip=True), data, tmp_path, progress=False)


def test_pretrained_plain_dit_gets_a_side_interpolater_for_masked_fine_tuning():
    from diffprune.diffusion import create_model
    from diffprune.diffusion.build import with_side_interpolater

    torch.manual_seed(0)
    plain = create_model("dit-tiny", num_class_embeds=4)
    masked = with_side_interpolater(plain, 2)
    theirs, ours = plain.state_dict(), masked.state_dict()
    assert all(torch.equal(theirs[k], ours[k]) for k in theirs)  # every pre-trained weight carried over
    assert {k for k in ours if k not in theirs} and all("side" in k or "mask" in k for k in ours if k not in theirs)
    x = torch.randn(2, 4, 8, 8)
    out = masked(x, torch.tensor([3, 500]), torch.tensor([0, 1]), mask_ratio=0.3,
                 generator=torch.Generator().manual_seed(0)).sample
    assert out.shape == x.shape and torch.isfinite(out).all()
