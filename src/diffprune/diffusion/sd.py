"""Stable Diffusion fine-tuning on class labels: the UNet conditioned on frozen class-name prompt embeddings.

``build_class_prompt_unet(sd_dir, class_names)`` loads a diffusers Stable Diffusion directory (or hub id), runs
the CLIP text encoder ONCE over "a photo of a {class}" for every class and over the empty prompt "", keeps the
K + 1 embeddings as a buffer and drops the text encoder. The resulting ``ClassPromptUNet`` speaks diffprune's
class-conditional protocol: ``model(x, t, class_labels=y).sample`` with labels in [0, K] where K (the last row,
the empty prompt) is the null label of classifier-free guidance, and ``config.num_class_embeds == K + 1``.

Only the UNet trains (the prompt embeddings are a buffer, not a parameter). ``export_unet`` writes the
fine-tuned UNet alone, which drops into the original pipeline::

    unet = UNet2DConditionModel.from_pretrained(exported_dir)
    pipe = StableDiffusionPipeline.from_pretrained(sd_dir, unet=unet)
    pipe("a photo of a cat")

``save_tiny_sd(dir)`` writes a tiny random SD-layout directory offline (tests, smoke runs).
"""
from __future__ import annotations

import inspect
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from diffusers import DDPMScheduler, UNet2DConditionModel
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin
from diffusers.utils import BaseOutput

from diffprune import hub
from diffprune.data.latents import tiny_random_vae
from diffprune.diffusion.models import ModelError
from diffprune.io import atomic_path

DEFAULT_TEMPLATE = "a photo of a {}"
COMPONENTS = ("unet", "tokenizer", "text_encoder", "scheduler")
_HUB_FILES = [
    "model_index.json", "scheduler/*.json", "tokenizer/*", "unet/config.json",
    "unet/diffusion_pytorch_model.safetensors", "text_encoder/config.json", "text_encoder/model.safetensors",
    "vae/config.json", "vae/diffusion_pytorch_model.safetensors",
]


@dataclass
class ClassPromptOutput(BaseOutput):
    """``sample``: float B x C x h x w, the UNet's noise prediction."""

    sample: torch.Tensor


class ClassPromptUNet(ModelMixin, ConfigMixin):
    """A ``UNet2DConditionModel`` (``self.unet``) whose text conditioning is looked up by class label.

    ``prompt_embeds``: float (K + 1) x L x D buffer (saved in the state dict, never trained); row k is the
    text-encoder output for ``template.format(class k)``, row K the empty prompt (the null label).
    ``sample_size`` / ``in_channels`` / ``out_channels`` mirror the UNet's so code written for ``UNet2DModel``
    (``model.config.sample_size``) works unchanged.
    """

    _supports_gradient_checkpointing = True

    @register_to_config
    def __init__(self, unet_config: dict[str, Any], num_class_embeds: int, prompt_length: int, prompt_dim: int,
                 class_names: list[str] | None = None, template: str = DEFAULT_TEMPLATE,
                 sample_size: int | None = None, in_channels: int | None = None,
                 out_channels: int | None = None) -> None:
        super().__init__()
        class_names = list(class_names or [])
        if num_class_embeds != len(class_names) + 1:
            raise ModelError(f"num_class_embeds must be K + 1 = {len(class_names) + 1} (K classes and the null "
                             f"label), got {num_class_embeds}")
        self.unet = UNet2DConditionModel.from_config(unet_config)
        if self.unet.config.cross_attention_dim != prompt_dim:
            raise ModelError(f"the UNet's cross_attention_dim {self.unet.config.cross_attention_dim} differs from "
                             f"the prompt embedding size {prompt_dim}; use the text encoder of the same SD model")
        self.register_buffer("prompt_embeds", torch.zeros(num_class_embeds, prompt_length, prompt_dim),
                             persistent=True)
        self.register_to_config(sample_size=self.unet.config.sample_size, in_channels=self.unet.config.in_channels,
                                out_channels=self.unet.config.out_channels)

    @property
    def null_label(self) -> int:
        return self.config.num_class_embeds - 1

    @property
    def prompts(self) -> list[str]:
        """The K + 1 prompts behind ``prompt_embeds`` (the last one is "")."""
        return class_prompts(self.config.class_names, self.config.template)

    def forward(self, sample: torch.Tensor, timestep: torch.Tensor | float | int,
                class_labels: torch.Tensor | None = None, return_dict: bool = True) -> ClassPromptOutput | tuple:
        """Noise prediction for ``sample`` (B x C x h x w latents) at ``timestep`` (B or scalar) given int64 B
        ``class_labels`` in [0, K]; None conditions every example on the empty prompt (the null label)."""
        if class_labels is None:
            class_labels = torch.full((sample.shape[0],), self.null_label, dtype=torch.long, device=sample.device)
        context = self.prompt_embeds[class_labels.to(self.prompt_embeds.device)].to(sample.dtype)
        out = self.unet(sample, timestep, encoder_hidden_states=context).sample
        return ClassPromptOutput(sample=out) if return_dict else (out,)


def class_prompts(class_names: list[str], template: str = DEFAULT_TEMPLATE) -> list[str]:
    """``template.format(name)`` per class (underscores read as spaces: ``aquarium_fish``), then ""."""
    if template.count("{}") != 1:
        raise ModelError(f"the prompt template needs exactly one '{{}}' for the class name, got {template!r}")
    return [template.format(str(name).replace("_", " ")) for name in class_names] + [""]


@torch.no_grad()
def encode_prompts(tokenizer: Any, text_encoder: torch.nn.Module, prompts: list[str],
                   device: torch.device | str | None = None, batch_size: int = 64) -> torch.Tensor:
    """float32 P x L x D last hidden states, prompts padded to ``tokenizer.model_max_length`` (as SD pipelines do:
    no attention mask), on ``device``; ``batch_size`` prompts per forward pass (1000 ImageNet classes fit)."""
    device = torch.device(device) if device is not None else next(text_encoder.parameters()).device
    text_encoder = text_encoder.to(device)
    ids = tokenizer(prompts, padding="max_length", max_length=tokenizer.model_max_length, truncation=True,
                    return_tensors="pt").input_ids.to(device)
    return torch.cat([text_encoder(ids[i: i + batch_size])[0].float() for i in range(0, len(ids), batch_size)])


def build_class_prompt_unet(sd_dir: str | os.PathLike, class_names: list[str], template: str = DEFAULT_TEMPLATE,
                            device: torch.device | str | None = None,
                            sample_size: int | None = None) -> ClassPromptUNet:
    """A ``ClassPromptUNet`` from the ``unet/``, ``tokenizer/`` and ``text_encoder/`` of ``sd_dir``.

    ``sample_size`` (latent side, e.g. 32 for 256 px images under SD's VAE) replaces the UNet config's default
    resolution (64 for SD 1.5); the architecture does not depend on it. The model ends up on ``device``
    (default CPU), in train-ready float32.
    """
    root = resolve_sd_dir(sd_dir, ("unet", "tokenizer", "text_encoder"))
    prompts = class_prompts(class_names, template)
    tokenizer, text_encoder = _load_text_side(root)
    embeds = encode_prompts(tokenizer, text_encoder, prompts, device or "cpu").cpu()
    del text_encoder
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    unet = _from_pretrained(UNet2DConditionModel, root / "unet")
    if sample_size is not None:
        unet.register_to_config(sample_size=int(sample_size))
    model = _wrap(unet, embeds, list(class_names), template)
    return model.to(device) if device is not None else model


def _wrap(unet: UNet2DConditionModel, embeds: torch.Tensor, class_names: list[str], template: str) -> ClassPromptUNet:
    from accelerate import init_empty_weights

    config = {k: v for k, v in dict(unet.config).items() if not k.startswith("_")}
    with init_empty_weights():  # a throw-away meta UNet instead of a random init of ~860M weights
        model = ClassPromptUNet(unet_config=config, num_class_embeds=embeds.shape[0], prompt_length=embeds.shape[1],
                                prompt_dim=embeds.shape[2], class_names=class_names, template=template)
    model.unet = unet
    model.prompt_embeds.copy_(embeds)
    return model.train()


def export_unet(model: ClassPromptUNet, out_dir: str | os.PathLike) -> Path:
    """Write ``model.unet`` alone (safetensors + config.json, atomically) for ``StableDiffusionPipeline``."""
    with atomic_path(out_dir, is_dir=True) as tmp:
        model.unet.save_pretrained(tmp, safe_serialization=True)
    return Path(out_dir)


def load_sd_scheduler(sd_dir: str | os.PathLike, require_epsilon: bool = True) -> DDPMScheduler:
    """The training ``DDPMScheduler`` with the noise schedule of ``sd_dir/scheduler`` (any scheduler class: SD 1.5
    ships PNDM; only the betas, T, prediction type and sample clipping matter for training).

    ``require_epsilon``: diffprune's loss predicts noise, so v-prediction models (SD 2 768-v) are refused.
    """
    root = resolve_sd_dir(sd_dir, ("scheduler",))
    config = DDPMScheduler.load_config(root / "scheduler")
    accepted = set(inspect.signature(DDPMScheduler.__init__).parameters) - {"self"}
    scheduler = DDPMScheduler.from_config({k: v for k, v in config.items() if k in accepted})
    if require_epsilon and scheduler.config.prediction_type != "epsilon":
        raise ModelError(f"{root} predicts {scheduler.config.prediction_type!r}; diffprune trains epsilon-prediction "
                         f"models only (use an SD 1.x / SD 2 base checkpoint)")
    return scheduler


def resolve_sd_dir(sd_dir: str | os.PathLike, components: tuple[str, ...] = COMPONENTS) -> Path:
    """A local Stable Diffusion directory holding ``components`` (hub ids are downloaded, safetensors only)."""
    root = Path(sd_dir).expanduser()
    if not root.exists():
        root = hub.snapshot(str(sd_dir), _HUB_FILES, error=ModelError, what="Stable Diffusion model")
    if not root.is_dir():
        raise ModelError(f"{root} is not a directory; pass a diffusers Stable Diffusion directory or a hub id")
    missing = [c for c in components if not (root / c).is_dir() or not any((root / c).iterdir())]
    if missing:
        raise ModelError(f"{root} lacks {', '.join(f'{c}/' for c in missing)}: a diffusers Stable Diffusion "
                         f"directory holds unet/, vae/, text_encoder/, tokenizer/ and scheduler/")
    return root


def _load_text_side(root: Path) -> tuple[Any, torch.nn.Module]:
    from transformers import AutoTokenizer, CLIPTextModel

    try:
        tokenizer = AutoTokenizer.from_pretrained(root / "tokenizer")
    except (OSError, ValueError, TypeError) as e:
        raise ModelError(f"could not load the tokenizer in {root / 'tokenizer'}: {e}") from None
    text_encoder = _from_pretrained(CLIPTextModel, root / "text_encoder")
    return tokenizer, text_encoder.eval().requires_grad_(False)


def _from_pretrained(cls: Any, path: Path) -> Any:
    return hub.from_pretrained(cls, path, ModelError)


# ---- a tiny random SD directory ----------------------------------------------------------------------------


def save_tiny_sd(out_dir: str | os.PathLike, seed: int = 0, sample_size: int = 8,
                 cross_attention_dim: int = 32) -> Path:
    """Write a tiny random Stable Diffusion directory (``StableDiffusionPipeline.from_pretrained`` loads it).

    unet/ (4 -> 4 channels, ``sample_size`` latents), vae/ (``tiny-random:seed``, factor 2), text_encoder/ (CLIP,
    2 layers, width ``cross_attention_dim``), tokenizer/ (byte-level CLIP BPE without merges), scheduler/
    (SD's scaled-linear DDPM schedule) and model_index.json. Needs no network.
    """
    import diffusers
    from transformers import CLIPTextConfig, CLIPTextModel

    with atomic_path(out_dir, is_dir=True) as tmp, torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        _tiny_unet(sample_size, cross_attention_dim).save_pretrained(tmp / "unet", safe_serialization=True)
        tiny_random_vae(seed).save_pretrained(tmp / "vae", safe_serialization=True)
        vocab = _write_tokenizer(tmp / "tokenizer")
        torch.manual_seed(seed + 1)
        text_config = CLIPTextConfig(
            vocab_size=len(vocab), hidden_size=cross_attention_dim, intermediate_size=2 * cross_attention_dim,
            num_hidden_layers=2, num_attention_heads=2, max_position_embeddings=77, projection_dim=cross_attention_dim,
            bos_token_id=vocab["<|startoftext|>"], eos_token_id=vocab["<|endoftext|>"],
            pad_token_id=vocab["<|endoftext|>"],
        )
        CLIPTextModel(text_config).save_pretrained(tmp / "text_encoder", safe_serialization=True)
        DDPMScheduler(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                      prediction_type="epsilon", clip_sample=False, steps_offset=1,
                      timestep_spacing="leading").save_pretrained(tmp / "scheduler")
        index = {
            "_class_name": "StableDiffusionPipeline", "_diffusers_version": diffusers.__version__,
            "unet": ["diffusers", "UNet2DConditionModel"], "vae": ["diffusers", "AutoencoderKL"],
            "text_encoder": ["transformers", "CLIPTextModel"], "tokenizer": ["transformers", "CLIPTokenizer"],
            "scheduler": ["diffusers", "DDPMScheduler"], "safety_checker": [None, None],
            "feature_extractor": [None, None], "image_encoder": [None, None], "requires_safety_checker": False,
        }
        (tmp / "model_index.json").write_text(json.dumps(index, indent=2) + "\n", encoding="utf-8")
    return Path(out_dir)


def _tiny_unet(sample_size: int, cross_attention_dim: int) -> UNet2DConditionModel:
    return UNet2DConditionModel(
        sample_size=sample_size, in_channels=4, out_channels=4, layers_per_block=1, block_out_channels=(32, 64),
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=cross_attention_dim, attention_head_dim=8, norm_num_groups=8,
    )


def _write_tokenizer(path: Path) -> dict[str, int]:
    """CLIP's byte-level vocabulary (each byte, alone and word-final) with no merges, in SD's file layout."""
    from tokenizers.pre_tokenizers import ByteLevel

    alphabet = sorted(ByteLevel.alphabet())
    vocab = {c: i for i, c in enumerate(alphabet)}
    vocab.update({f"{c}</w>": i + len(alphabet) for i, c in enumerate(alphabet)})
    vocab.update({"<|startoftext|>": len(vocab), "<|endoftext|>": len(vocab) + 1})
    path.mkdir(parents=True)
    (path / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
    (path / "merges.txt").write_text("#version: 0.2\n", encoding="utf-8")
    specials = {"bos_token": "<|startoftext|>", "eos_token": "<|endoftext|>", "unk_token": "<|endoftext|>",
                "pad_token": "<|endoftext|>"}
    (path / "special_tokens_map.json").write_text(json.dumps(specials, indent=2), encoding="utf-8")
    config = {"tokenizer_class": "CLIPTokenizer", "model_max_length": 77, "do_lower_case": True, **specials}
    (path / "tokenizer_config.json").write_text(json.dumps(config, indent=2), encoding="utf-8")
    return vocab


__all__ = [
    "ClassPromptOutput", "ClassPromptUNet", "build_class_prompt_unet", "class_prompts", "encode_prompts",
    "export_unet", "load_sd_scheduler", "resolve_sd_dir", "save_tiny_sd",
]
