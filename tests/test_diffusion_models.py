"""Model presets, the noise schedule, the loss and model loading, checked against independent oracles."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from diffusers import DDPMPipeline, DDPMScheduler, UNet2DModel

from diffprune.diffusion import (
    PRESETS,
    ModelError,
    count_parameters,
    create_model,
    create_scheduler,
    diffusion_loss,
    load_model,
    null_class_label,
    save_model,
)



def test_ddpm_cifar10_is_the_original_35_7m_unet():
    model = create_model("ddpm-cifar10")
    assert round(count_parameters(model) / 1e6, 1) == 35.7  # Ho et al. 2020, Table/Appendix B
    cfg = model.config
    assert tuple(cfg.block_out_channels) == (128, 256, 256, 256)  # ch=128, ch_mult=(1, 2, 2, 2)
    assert cfg.layers_per_block == 2 and cfg.dropout == 0.1 and cfg.sample_size == 32
    assert cfg.norm_eps == 1e-6 and cfg.freq_shift == 1 and cfg.flip_sin_to_cos is False
    assert cfg.downsample_padding == 0 and cfg.attention_head_dim is None  # single-head attention
    # attention only at 16x16: the second down level and, mirrored, the third up level
    assert [type(b).__name__ for b in model.down_blocks] == ["DownBlock2D", "AttnDownBlock2D", "DownBlock2D",
                                                             "DownBlock2D"]
    assert [type(b).__name__ for b in model.up_blocks] == ["UpBlock2D", "UpBlock2D", "AttnUpBlock2D", "UpBlock2D"]
    resolutions = [32 // 2**i for i in range(4)]
    down_attn = [r for r, b in zip(resolutions, model.down_blocks) if getattr(b, "attentions", None)]
    up_attn = [r for r, b in zip(reversed(resolutions), model.up_blocks) if getattr(b, "attentions", None)]
    assert down_attn == [16] and up_attn == [16]
    assert model.mid_block.attentions[0] is not None  # the middle block has attention too (as in the original)


def test_small_and_tiny_presets_are_small():
    assert 0.5e6 < count_parameters(create_model("ddpm-small")) < 3e6
    # the preset's description states its measured size (it once said 2.6M)
    assert count_parameters(create_model("ddpm-small")) == 1_113_955
    assert count_parameters(create_model("ddpm-small", in_channels=1, out_channels=1)) == 1_112_801
    assert "1.1M" in PRESETS["ddpm-small"].description and "1,113,955" in PRESETS["ddpm-small"].description
    assert 1e5 < count_parameters(create_model("ddpm-tiny")) < 1e6
    assert set(PRESETS) >= {"ddpm-cifar10", "ddpm-small", "ddpm-tiny"}


def test_overrides_and_their_errors():
    m = create_model("ddpm-small", sample_size=28, in_channels=1, out_channels=1, num_class_embeds=11)
    assert m.config.sample_size == 28 and m.config.in_channels == 1 and null_class_label(m) == 10
    out = m(torch.zeros(2, 1, 28, 28), torch.tensor([0, 999]), class_labels=torch.tensor([3, 10])).sample
    assert out.shape == (2, 1, 28, 28)
    with pytest.raises(ModelError, match="not divisible by 4"):
        create_model("ddpm-small", sample_size=30)
    with pytest.raises(ModelError, match="unknown UNet2DModel option"):
        create_model("ddpm-tiny", chanels=3)
    with pytest.raises(ModelError, match="choose one of"):
        create_model("ddpm-huge")


def test_scheduler_is_the_original_linear_schedule():
    s = create_scheduler("ddpm-cifar10")
    betas = np.linspace(1e-4, 0.02, 1000, dtype=np.float64)  # Ho et al.: linear, T = 1000
    np.testing.assert_allclose(s.betas.numpy(), betas, rtol=1e-6)
    np.testing.assert_allclose(s.alphas_cumprod.numpy(), np.cumprod(1 - betas), rtol=1e-5)
    assert s.config.variance_type == "fixed_large" and s.config.prediction_type == "epsilon"


class _Recorder(torch.nn.Module):
    """A stand-in 'model' that returns a fixed prediction and records what it was given."""

    def __init__(self, pred):
        super().__init__()
        self.pred = pred

    def forward(self, x, t, class_labels=None):
        self.seen = (x.clone(), t.clone(), class_labels)
        return type("Out", (), {"sample": self.pred})()


def test_diffusion_loss_matches_the_closed_form():
    g = torch.Generator().manual_seed(0)
    x0 = torch.rand(4, 3, 8, 8, generator=g) * 2 - 1
    noise = torch.randn(4, 3, 8, 8, generator=g)
    pred = torch.randn(4, 3, 8, 8, generator=g)
    t = torch.tensor([0, 10, 500, 999])
    rec = _Recorder(pred)
    loss = diffusion_loss(rec, create_scheduler("ddpm-tiny"), x0, t, noise, class_labels=torch.tensor([1, 2, 3, 4]))
    abar = np.cumprod(1 - np.linspace(1e-4, 0.02, 1000))[t.numpy()]
    x_t = np.sqrt(abar)[:, None, None, None] * x0.numpy() + np.sqrt(1 - abar)[:, None, None, None] * noise.numpy()
    np.testing.assert_allclose(rec.seen[0].numpy(), x_t, rtol=1e-5, atol=1e-5)  # float32
    assert rec.seen[2].tolist() == [1, 2, 3, 4]
    assert loss.shape == (4, 3, 8, 8) and loss.dtype == torch.float32
    np.testing.assert_allclose(loss.numpy(), (pred.numpy() - noise.numpy()) ** 2, rtol=1e-6)
    with pytest.raises(ValueError, match="timesteps must have shape"):
        diffusion_loss(rec, create_scheduler("ddpm-tiny"), x0, t[:2], noise)


def test_diffusion_loss_of_a_real_unet_is_paired_by_noise():
    torch.manual_seed(0)
    model = create_model("ddpm-tiny", sample_size=8, in_channels=1, out_channels=1).eval()
    s = create_scheduler("ddpm-tiny")
    x0, noise, t = torch.rand(3, 1, 8, 8) * 2 - 1, torch.randn(3, 1, 8, 8), torch.tensor([1, 400, 900])
    a = diffusion_loss(model, s, x0, t, noise)
    b = diffusion_loss(model, s, x0, t, noise)
    assert torch.equal(a, b)  # same (x0, t, noise) -> the same loss: what the DRO stage relies on
    assert not torch.allclose(a, diffusion_loss(model, s, x0, t, torch.randn(3, 1, 8, 8)))


def test_save_and_load_roundtrip_and_diffusers_compatibility(tmp_path):
    torch.manual_seed(0)
    model = create_model("ddpm-tiny", sample_size=8)
    save_model(tmp_path / "m", model, create_scheduler("ddpm-tiny"), meta={"preset": "ddpm-tiny"})
    assert (tmp_path / "m" / "diffusion_pytorch_model.safetensors").exists()
    loaded, sched = load_model(tmp_path / "m")
    for (k, v), (k2, v2) in zip(model.state_dict().items(), loaded.state_dict().items()):
        assert k == k2 and torch.equal(v, v2)
    assert isinstance(sched, DDPMScheduler) and sched.config.variance_type == "fixed_large"
    # plain diffusers can use the exported folder
    unet = UNet2DModel.from_pretrained(tmp_path / "m")
    pipe = DDPMPipeline(unet=unet, scheduler=DDPMScheduler.from_pretrained(tmp_path / "m", subfolder="scheduler"))
    out = pipe(batch_size=1, num_inference_steps=2, generator=torch.Generator().manual_seed(0), output_type="np")
    assert out.images.shape == (1, 8, 8, 3)
    # a diffusers pipeline folder (model_index.json + unet/ + scheduler/), as published on the hub
    pipe.save_pretrained(tmp_path / "pipe")
    loaded2, _ = load_model(str(tmp_path / "pipe"))
    assert torch.equal(next(iter(loaded2.state_dict().values())), next(iter(model.state_dict().values())))
    # a diffprune train dir holds the model in model/
    (tmp_path / "run").mkdir()
    save_model(tmp_path / "run" / "model", model, create_scheduler("ddpm-tiny"))
    assert load_model(tmp_path / "run")[0].config.sample_size == 8
    assert json.loads((tmp_path / "m" / "diffprune.json").read_text()) == {"preset": "ddpm-tiny"}


def test_load_errors_are_clear(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelError, match="holds no diffusers model"):
        load_model(tmp_path)
    with pytest.raises(ModelError, match="neither an existing directory nor a hub id"):
        load_model(str(tmp_path / "missing" / "deep" / "x"))
    with pytest.raises(ModelError, match="could not fetch hub model 'nobody-here/no-such-model-xyz'"):
        load_model("nobody-here/no-such-model-xyz")
