"""Stable Diffusion fine-tuning model: class-prompt conditioning against the text encoder by hand, saving, training."""
import os
import shutil

import numpy as np
import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from diffusers import DDPMScheduler, PNDMScheduler, UNet2DConditionModel  # noqa: E402
from transformers import CLIPTextModel, CLIPTokenizer  # noqa: E402

from diffprune.diffusion.models import ModelError  # noqa: E402
from diffprune.diffusion.sd import (  # noqa: E402
    ClassPromptUNet,
    build_class_prompt_unet,
    class_prompts,
    encode_prompts,
    export_unet,
    load_sd_scheduler,
    save_tiny_sd,
)

NAMES = ["cat", "dog"]


@pytest.fixture(scope="module")
def sd_dir(tmp_path_factory):
    return save_tiny_sd(tmp_path_factory.mktemp("sd") / "tiny-sd", seed=0)


@pytest.fixture(scope="module")
def model(sd_dir):
    return build_class_prompt_unet(sd_dir, NAMES).eval()


def _inputs(n=3, size=8):
    g = torch.Generator().manual_seed(0)
    return torch.randn(n, 4, size, size, generator=g), torch.tensor([3, 400, 999][:n])


@torch.no_grad()
def _by_hand(sd_dir, prompt, x, t):
    tok = CLIPTokenizer.from_pretrained(sd_dir / "tokenizer")
    ids = tok([prompt] * len(x), padding="max_length", max_length=tok.model_max_length, return_tensors="pt").input_ids
    context = CLIPTextModel.from_pretrained(sd_dir / "text_encoder")(ids)[0]
    return UNet2DConditionModel.from_pretrained(sd_dir / "unet")(x, t, encoder_hidden_states=context).sample


def test_class_label_is_the_class_prompt_and_null_is_the_empty_prompt(sd_dir, model):
    x, t = _inputs()
    assert model.config.num_class_embeds == 3 and model.prompt_embeds.shape == (3, 77, 32)
    assert model.prompts == ["a photo of a cat", "a photo of a dog", ""]
    with torch.no_grad():
        dog = model(x, t, class_labels=torch.tensor([1, 1, 1])).sample
        null = model(x, t, class_labels=torch.tensor([2, 2, 2])).sample
        default = model(x, t).sample
    torch.testing.assert_close(dog, _by_hand(sd_dir, "a photo of a dog", x, t), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(null, _by_hand(sd_dir, "", x, t), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(default, null, rtol=0, atol=0)
    assert not torch.allclose(dog, null)
    assert (model.config.sample_size, model.config.in_channels, model.config.out_channels) == (8, 4, 4)


def test_prompt_batches_give_the_same_embeddings(sd_dir, model):
    tok = CLIPTokenizer.from_pretrained(sd_dir / "tokenizer")
    te = CLIPTextModel.from_pretrained(sd_dir / "text_encoder")
    torch.testing.assert_close(encode_prompts(tok, te, model.prompts, batch_size=2), model.prompt_embeds,
                               rtol=1e-5, atol=1e-6)


def test_save_and_load_round_trip_keeps_the_prompt_embeddings(tmp_path, model):
    from diffprune.diffusion.loading import save_model

    assert "prompt_embeds" in model.state_dict()
    save_model(tmp_path / "m", model, DDPMScheduler(), meta={"class_names": NAMES})
    loaded = ClassPromptUNet.from_pretrained(tmp_path / "m").eval()
    assert loaded.config.class_names == NAMES and loaded.config.template == model.config.template
    assert torch.equal(loaded.prompt_embeds, model.prompt_embeds)
    x, t = _inputs(2)
    y = torch.tensor([0, 2])
    with torch.no_grad():
        torch.testing.assert_close(loaded(x, t, class_labels=y).sample, model(x, t, class_labels=y).sample,
                                   rtol=0, atol=0)


def test_training_updates_the_unet_and_not_the_prompts(sd_dir):
    from diffprune.diffusion.objective import diffusion_loss

    model = build_class_prompt_unet(sd_dir, NAMES).train()
    scheduler = load_sd_scheduler(sd_dir)
    names = {n for n, _ in model.named_parameters()}
    assert "prompt_embeds" not in names and all(n.startswith("unet.") for n in names)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    g = torch.Generator().manual_seed(1)
    for _ in range(2):
        x0 = torch.randn(2, 4, 8, 8, generator=g)
        t = torch.randint(0, 1000, (2,), generator=g)
        loss = diffusion_loss(model, scheduler, x0, t, torch.randn(x0.shape, generator=g), torch.tensor([0, 2]))
        loss.mean().backward()
        assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())
        opt.step()
        opt.zero_grad()
    after = model.state_dict()
    assert torch.equal(after["prompt_embeds"], before["prompt_embeds"])
    assert not torch.equal(after["unet.conv_in.weight"], before["unet.conv_in.weight"])
    changed = [k for k in names if not torch.equal(after[k], before[k])]
    assert len(changed) > 0.9 * len(names)


def test_exported_unet_drops_into_a_stable_diffusion_pipeline(tmp_path, sd_dir, model):
    from diffusers import StableDiffusionPipeline

    out = export_unet(model, tmp_path / "unet")
    unet = UNet2DConditionModel.from_pretrained(out)
    assert all(torch.equal(v, unet.state_dict()[k]) for k, v in model.unet.state_dict().items())
    pipe = StableDiffusionPipeline.from_pretrained(sd_dir, unet=unet, safety_checker=None)
    pipe.set_progress_bar_config(disable=True)
    images = pipe("a photo of a cat", num_inference_steps=2, output_type="np",
                  generator=torch.Generator().manual_seed(0)).images
    assert images.shape == (1, 16, 16, 3) and np.isfinite(images).all()


def test_scheduler_is_sd_schedule_and_v_prediction_is_refused(tmp_path, sd_dir):
    s = load_sd_scheduler(sd_dir)
    expected = torch.linspace(0.00085**0.5, 0.012**0.5, 1000, dtype=torch.float32) ** 2
    torch.testing.assert_close(s.betas, expected)
    assert (s.config.prediction_type, s.config.clip_sample, s.config.num_train_timesteps) == ("epsilon", False, 1000)
    pndm = tmp_path / "pndm"
    PNDMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                  skip_prk_steps=True).save_pretrained(pndm / "scheduler")
    assert isinstance(load_sd_scheduler(pndm), DDPMScheduler)
    v = tmp_path / "v"
    DDPMScheduler(prediction_type="v_prediction").save_pretrained(v / "scheduler")
    with pytest.raises(ModelError, match="v_prediction"):
        load_sd_scheduler(v)


def test_clear_errors_and_prompt_details(tmp_path, sd_dir):
    broken = tmp_path / "broken"
    shutil.copytree(sd_dir, broken, ignore=shutil.ignore_patterns("text_encoder"))
    with pytest.raises(ModelError, match="lacks text_encoder/"):
        build_class_prompt_unet(broken, NAMES)
    with pytest.raises(ModelError, match="HF_HUB_OFFLINE"):
        build_class_prompt_unet("stable-diffusion-v1-5/stable-diffusion-v1-5", NAMES)
    with pytest.raises(ModelError, match="exactly one"):
        class_prompts(NAMES, "a photo")
    assert class_prompts(["aquarium_fish"], "{}, a photo") == ["aquarium fish, a photo", ""]
    big = build_class_prompt_unet(sd_dir, ["x", "y", "z"], sample_size=16)
    assert big.config.sample_size == 16 and big.unet.config.sample_size == 16
    with pytest.raises(ModelError, match="K \\+ 1"):
        ClassPromptUNet(unet_config=dict(big.unet.config), num_class_embeds=3, prompt_length=77, prompt_dim=32,
                        class_names=NAMES + ["z"])
