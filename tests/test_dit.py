"""diffprune's DiT: parity with diffusers' DiT, the paper's parameter counts, MDT masking, loading, presets."""
import json

import pytest
import torch
from diffusers import DDPMScheduler, DiTTransformer2DModel

from diffprune.diffusion import ModelError, create_model, create_scheduler, diffusion_loss, load_model, save_model
from diffprune.diffusion.dit import DiT, dit_from_diffusers
from diffprune.diffusion.models import count_parameters, downsample_factor, is_conditional, null_class_label


def _diffusers_dit(seed: int = 0) -> DiTTransformer2DModel:
    """A random diffusers DiT whose blocks share one timestep/label embedder, as converted checkpoints do."""
    torch.manual_seed(seed)
    m = DiTTransformer2DModel(num_attention_heads=2, attention_head_dim=32, in_channels=4, out_channels=8,
                              num_layers=2, sample_size=8, patch_size=2, num_embeds_ada_norm=10).eval()
    shared = m.transformer_blocks[0].norm1.emb.state_dict()
    for block in m.transformer_blocks[1:]:
        block.norm1.emb.load_state_dict(shared)
    return m


def _randomised(model: torch.nn.Module, std: float = 0.1) -> torch.nn.Module:
    """Move every parameter off DiT's zero init, so outputs and gradients depend on every part."""
    torch.manual_seed(1)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * std)
    return model


def _mdt(**kw) -> DiT:
    torch.manual_seed(0)
    return _randomised(create_model("dit-tiny", num_class_embeds=11, side_interpolater_depth=1, **kw))


def _inputs(b: int = 3):
    g = torch.Generator().manual_seed(2)
    return torch.randn(b, 4, 8, 8, generator=g), torch.tensor([0, 500, 999][:b]), torch.tensor([1, 10, 4][:b])


# ---- parity with diffusers ---------------------------------------------------------------------------------


@torch.no_grad()
def test_converted_diffusers_dit_gives_the_same_outputs():
    theirs = _diffusers_dit()
    ours = dit_from_diffusers(theirs).eval()
    assert isinstance(ours, DiT) and ours.config.out_channels == 8 and null_class_label(ours) == 10
    x, t, y = _inputs()  # label 10 is the null label
    expected = theirs(x, t, class_labels=y).sample
    assert expected.abs().mean() > 0.1  # a non-trivial output
    torch.testing.assert_close(ours(x, t, class_labels=y).sample, expected, atol=1e-5, rtol=1e-5)
    float_t = torch.tensor([0.5, 250.25, 998.0])
    torch.testing.assert_close(ours(x, float_t, class_labels=y).sample, theirs(x, float_t, class_labels=y).sample,
                               atol=1e-5, rtol=1e-5)
    # no label on a conditional model = the null label
    torch.testing.assert_close(ours(x, t).sample, theirs(x, t, class_labels=torch.full((3,), 10)).sample,
                               atol=1e-5, rtol=1e-5)


def test_conversion_refuses_per_block_embedders():
    torch.manual_seed(0)
    m = DiTTransformer2DModel(num_attention_heads=2, attention_head_dim=32, in_channels=4, num_layers=2,
                              sample_size=8, num_embeds_ada_norm=10)
    with pytest.raises(ValueError, match="embedder differs"):
        dit_from_diffusers(m)


@pytest.mark.parametrize("legacy", [False, True])
@torch.no_grad()
def test_load_model_converts_a_diffusers_dit_pipeline_dir(tmp_path, legacy):
    theirs = _diffusers_dit()
    theirs.save_pretrained(tmp_path / "transformer")
    DDPMScheduler(beta_schedule="linear", clip_sample=False).save_pretrained(tmp_path / "scheduler")
    index = {"_class_name": "DiTPipeline", "transformer": ["diffusers", "DiTTransformer2DModel"],
             "scheduler": ["diffusers", "DDPMScheduler"]}
    (tmp_path / "model_index.json").write_text(json.dumps(index))
    if legacy:  # facebook/DiT-XL-2-256 predates DiTTransformer2DModel
        cfg_path = tmp_path / "transformer" / "config.json"
        cfg_path.write_text(json.dumps(json.loads(cfg_path.read_text()) | {"_class_name": "Transformer2DModel"}))
    model, sched = load_model(tmp_path)
    assert isinstance(model, DiT) and not model.training and sched.config.clip_sample is False
    x, t, y = _inputs()
    torch.testing.assert_close(model(x, t, class_labels=y).sample, theirs(x, t, class_labels=y).sample,
                               atol=1e-5, rtol=1e-5)


# ---- presets ------------------------------------------------------------------------------------------------


def _dit_paper_parameters(d: int, depth: int, p: int = 2, c: int = 4, classes: int = 1000, tokens: int = 256) -> int:
    """Parameters of facebookresearch/DiT's ``DiT`` (learned sigma), module by module; its frozen positional
    embedding is an nn.Parameter there and counted in the totals DiT reports."""
    out = 2 * c
    embed = (c * p * p * d + d) + (256 * d + d + d * d + d) + (classes + 1) * d + tokens * d
    block = (3 * d * d + 3 * d) + (d * d + d) + (4 * d * d + 4 * d) + (4 * d * d + d) + (6 * d * d + 6 * d)
    final = (2 * d * d + 2 * d) + (d * p * p * out + p * p * out)
    return embed + depth * block + final


@pytest.mark.parametrize("preset,d,depth,paper_m", [("dit-s-2", 384, 12, 33), ("dit-b-2", 768, 12, 130),
                                                    ("dit-xl-2", 1152, 28, 675)])
def test_presets_have_the_dit_papers_parameter_counts(preset, d, depth, paper_m):
    assert _dit_paper_parameters(1152, 28) == 675_129_632  # what DiT's train.py logs for DiT-XL/2
    with torch.device("meta"):
        model = create_model(preset, out_channels=8)  # DiT's learned-sigma output
    ours = count_parameters(model) + model.num_tokens * d  # + DiT's frozen positional "parameter" (a buffer here)
    assert ours == _dit_paper_parameters(d, depth)
    assert abs(ours / 1e6 - paper_m) < 1  # the paper's rounded figures
    assert model.config.num_class_embeds == 1001 and null_class_label(model) == 1000
    sched = create_scheduler(preset)
    assert (sched.config.clip_sample, sched.config.variance_type, sched.config.beta_schedule) == (
        False, "fixed_small", "linear")


def test_dit_tiny_helpers_and_errors():
    model = create_model("dit-tiny")
    assert downsample_factor(model) == 2 and not is_conditional(model) and null_class_label(model) is None
    assert model.config.out_channels is None and model.out_channels == 4
    with pytest.raises(ModelError, match=r"unknown DiT option\(s\) \['block_out_channels'\]"):
        create_model("dit-tiny", block_out_channels=(8,))
    with pytest.raises(ModelError, match="sample_size 9 is not divisible by 2, the patch size"):
        create_model("dit-tiny", sample_size=9)
    with pytest.raises(ModelError, match="not divisible by num_heads"):
        create_model("dit-tiny", num_heads=3)
    with pytest.raises(ModelError, match="num_class_embeds must be >= 2"):
        create_model("dit-tiny", num_class_embeds=1)
    with pytest.raises(ModelError, match="Stable Diffusion pipeline"):
        create_model("sd")
    x = torch.randn(2, 4, 8, 8)
    with pytest.raises(ValueError, match=r"build the model with side_interpolater_depth > 0 \(train.mask_ratio"):
        model(x, 1, mask_ratio=0.3)
    with pytest.raises(ValueError, match="unconditional"):
        model(x, 1, class_labels=torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="expects B x 4 x 8 x 8"):
        model(torch.randn(2, 4, 16, 16), 1)


@torch.no_grad()
def test_scalar_timestep_equals_a_vector():
    model = _randomised(create_model("dit-tiny", num_class_embeds=5)).eval()
    x, y = torch.randn(2, 4, 8, 8), torch.tensor([0, 3])
    out = model(x, 7, class_labels=y).sample
    assert out.shape == (2, 4, 8, 8)
    torch.testing.assert_close(out, model(x, torch.tensor([7, 7]), class_labels=y).sample)
    torch.testing.assert_close(out, model(x, torch.tensor(7.0), class_labels=y, return_dict=False)[0])


# ---- MDT masking --------------------------------------------------------------------------------------------


def _encoder_inputs(model: DiT, fn) -> list[torch.Tensor]:
    seen = []
    handle = model.blocks[0].register_forward_pre_hook(lambda mod, args: seen.append(args[0].detach().clone()))
    try:
        fn()
    finally:
        handle.remove()
    return seen


def test_masked_forward_encodes_a_per_example_subset_and_trains_the_side_interpolater():
    model = _mdt()
    x, t, y = _inputs()
    full_tokens = _encoder_inputs(model, lambda: model(x, t, class_labels=y))[0]  # 3 x 16 x 64
    gen = torch.Generator().manual_seed(5)
    out = None

    def run():
        nonlocal out
        out = model(x, t, class_labels=y, mask_ratio=0.3, generator=gen).sample

    kept = _encoder_inputs(model, run)[0]
    assert kept.shape == (3, round(0.7 * 16), 64) and out.shape == (3, 4, 8, 8)
    picked = []
    for b in range(3):  # every token the encoder sees is one of the example's own tokens, each at most once
        match = (kept[b][:, None] - full_tokens[b][None]).abs().amax(-1) < 1e-6  # kept x all
        assert (match.sum(1) == 1).all()
        picked.append(frozenset(match.float().argmax(1).tolist()))
    assert len(set(picked)) > 1  # masks are drawn per example
    out.square().mean().backward()
    side = [p.grad for p in model.side_blocks.parameters()] + [model.mask_token.grad]
    assert all(g is not None and g.abs().sum() > 0 for g in side)


@torch.no_grad()
def test_masks_are_reproducible_from_the_generator():
    model = _mdt().eval()
    x, t, y = _inputs()

    def masked(seed):
        return model(x, t, class_labels=y, mask_ratio=0.5, generator=torch.Generator().manual_seed(seed)).sample

    assert torch.equal(masked(3), masked(3))
    assert not torch.allclose(masked(3), masked(4))


@torch.no_grad()
def test_masking_nothing_equals_the_unmasked_forward():
    """A ratio that keeps every token only permutes them: attention is permutation-equivariant and the masked
    shortcut keeps every encoder output, so the gather/scatter must restore the unmasked result."""
    model = _mdt().eval()
    x, t, y = _inputs()
    assert model.kept_tokens(0.01) == model.num_tokens
    masked = model(x, t, class_labels=y, mask_ratio=0.01, generator=torch.Generator().manual_seed(0)).sample
    torch.testing.assert_close(masked, model(x, t, class_labels=y).sample, atol=1e-5, rtol=1e-5)


def test_unmasked_mdt_is_dit_plus_mdts_decoder_positions_and_skips_the_side_interpolater():
    model = _mdt()
    plain = DiT(**{**model.config, "side_interpolater_depth": 0})
    missing, unexpected = plain.load_state_dict(model.state_dict(), strict=False)
    assert not missing and all(k.startswith(("side_blocks.", "mask_token")) for k in unexpected)
    first_decoder = model.config.depth - model.config.decoder_depth
    plain.blocks[first_decoder].register_forward_pre_hook(lambda mod, args: (args[0] + plain.pos_embed, args[1]))
    x, t, y = _inputs()
    out = model(x, t, class_labels=y).sample
    torch.testing.assert_close(out, plain(x, t, class_labels=y).sample)
    out.square().mean().backward()
    assert all(p.grad is None for p in model.side_blocks.parameters()) and model.mask_token.grad is None


# ---- saving, loading, objective -----------------------------------------------------------------------------


@torch.no_grad()
def test_save_and_load_roundtrip(tmp_path):
    model = _mdt().eval()
    save_model(tmp_path / "m", model, create_scheduler("dit-tiny"), meta={"preset": "dit-tiny"})
    loaded, sched = load_model(tmp_path / "m")
    public = {k: v for k, v in model.config.items() if not k.startswith("_")}
    assert isinstance(loaded, DiT) and sched.config.variance_type == "fixed_small"
    assert {k: v for k, v in loaded.config.items() if not k.startswith("_")} == public
    assert "pos_embed" not in loaded.state_dict()
    x, t, y = _inputs()
    assert torch.equal(loaded(x, t, class_labels=y).sample, model(x, t, class_labels=y).sample)
    kw = dict(class_labels=y, mask_ratio=0.3)
    assert torch.equal(loaded(x, t, generator=torch.Generator().manual_seed(1), **kw).sample,
                       model(x, t, generator=torch.Generator().manual_seed(1), **kw).sample)
    model.save_pretrained(tmp_path / "bare")  # no scheduler config: the DiT presets' schedule
    assert load_model(tmp_path / "bare")[1].config.clip_sample is False


def test_diffusion_loss_backpropagates_through_dit():
    model = _mdt()
    sched = create_scheduler("dit-tiny")
    x0, t, y = _inputs()
    noise = torch.randn_like(x0)
    loss = diffusion_loss(model, sched, x0, t, noise, y)
    assert loss.shape == x0.shape and torch.isfinite(loss).all()
    loss.mean().backward()
    assert model.final_layer.linear.weight.grad.abs().sum() > 0 and model.mask_token.grad is None
    model.zero_grad()
    masked = diffusion_loss(model, sched, x0, t, noise, y, mask_ratio=0.3,
                            mask_generator=torch.Generator().manual_seed(0))
    masked.mean().backward()
    assert model.mask_token.grad.abs().sum() > 0


def test_gradient_checkpointing_and_bf16_autocast():
    model = _mdt()
    x, t, y = _inputs()
    kw = dict(class_labels=y, mask_ratio=0.3)

    def grads():
        model.zero_grad()
        model(x, t, generator=torch.Generator().manual_seed(0), **kw).sample.square().mean().backward()
        return [p.grad.clone() for p in model.parameters()]

    plain = grads()
    model.enable_gradient_checkpointing()
    for a, b in zip(plain, grads()):
        torch.testing.assert_close(a, b)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(x, t, generator=torch.Generator().manual_seed(0), **kw).sample
    assert out.shape == x.shape and torch.isfinite(out).all()


def test_load_model_dispatches_on_the_class_name(tmp_path):
    (tmp_path / "odd").mkdir()
    (tmp_path / "odd" / "config.json").write_text(json.dumps({"_class_name": "VQModel"}))
    with pytest.raises(ModelError, match="holds a VQModel; load_model reads UNet2DModel, DiT"):
        load_model(tmp_path / "odd")
    (tmp_path / "cp").mkdir()  # no weights: whether or not diffprune.diffusion.sd exists yet, a clear ModelError
    (tmp_path / "cp" / "config.json").write_text(json.dumps({"_class_name": "ClassPromptUNet"}))
    with pytest.raises(ModelError, match="ClassPromptUNet"):
        load_model(tmp_path / "cp")
