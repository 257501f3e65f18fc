"""A compact class-conditional DiT (Peebles & Xie 2023) with optional MDT-style masked training, in one file.

``DiT`` is a diffusers ``ModelMixin``/``ConfigMixin`` whose config names mirror ``UNet2DModel`` where they mean the
same thing (``sample_size``, ``in_channels``, ``out_channels``, ``num_class_embeds``), so ``create_model`` overrides
and ``model(noisy, t, class_labels=y).sample`` work for it as for the pixel UNets.

Architecture (as facebookresearch/DiT ``models.py``): a patchify convolution, a fixed 2-D sin-cos positional
embedding (a non-persistent buffer, so not in the state dict), a timestep embedder (256-d sinusoid -> MLP), a
label table of ``num_class_embeds = K + 1`` rows whose last row ``K`` is the null label of classifier-free
guidance (labels are never dropped inside the model: the trainer replaces them by the null label), ``depth``
blocks with adaLN-Zero modulation (shift/scale/gate of attention and MLP from SiLU(t_emb + y_emb)), a final
adaLN layer and unpatchify. Attention is ``F.scaled_dot_product_attention`` with a fused qkv projection; the
MLP uses GELU(tanh). Initialisation is DiT's: xavier-uniform linears with zero bias, the patchify kernel as a
linear, normal(0.02) label table and timestep MLP, zero adaLN modulation and zero final layer (every block
starts as the identity and the output as 0).

``out_channels`` defaults to ``in_channels``. ``2 * in_channels`` gives DiT's learned-sigma layout (epsilon in the
first ``in_channels`` channels, the variance interpolation after them), e.g. for converted DiT checkpoints.
diffprune's objective is epsilon MSE only: nothing trains the variance half, and samplers must use the epsilon
half (``objective.epsilon_part``) with a fixed variance.

Two config fields exist only so that ``dit_from_diffusers`` reproduces diffusers' ``DiTTransformer2DModel``
exactly: ``freq_shift`` (diffusers' timestep sinusoid divides by ``half - 1``, DiT by ``half``) and
``mlp_norm_eps`` (diffusers' pre-MLP LayerNorm has eps 1e-5, DiT 1e-6). Their defaults are the original DiT's.

MDT-style masking (Gao et al. 2023, "Masked Diffusion Transformer is a Strong Image Synthesizer"), built when
``side_interpolater_depth > 0``:

- the ``depth`` blocks split into ``depth - decoder_depth`` encoder blocks and ``decoder_depth`` decoder blocks
  (MDT: 2), and a side-interpolater of ``side_interpolater_depth`` DiT blocks with a learnable mask token
  (zero-initialised) is added;
- ``forward(..., mask_ratio=r)`` with ``r > 0``: each example keeps ``round((1 - r) * T)`` of its ``T`` latent
  tokens, chosen uniformly at random (from ``generator``); the encoder sees only those. The side-interpolater
  puts the mask token at the dropped positions, adds the positional embedding to all, runs its blocks and, as
  MDT's "masked shortcut", keeps its output only at the dropped positions (kept positions pass through with the
  positional embedding added); the decoder then runs on all ``T`` tokens and the output is full size;
- ``mask_ratio = 0`` (always at inference) skips the side-interpolater; the positional embedding is still added
  again before the decoder, as MDT does, so the decoder sees what it sees in masked training. Such a model is
  therefore not the plain DiT with the same weights (the test suite checks exactly this difference).

Not implemented from MDT: the learnable relative position bias in attention (here: absolute sin-cos only, which
the kept tokens carry from the input embedding); MDTv2's U-Net-like long shortcuts in the encoder and dense
input shortcuts in the decoder; the released code's per-batch jitter of the ratio (drawn in [r, r + 0.2]; a
caller can vary ``mask_ratio``); MDT's loss (unmasked + masked epsilon loss: ``objective.diffusion_loss``
computes it). MDT truncates the kept count (``int``); we round, so ``r = 0.3`` keeps 45 of 64 tokens (MDT: 44).
"""
from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_outputs import Transformer2DModelOutput
from diffusers.models.modeling_utils import ModelMixin
from torch import nn

TIMESTEP_FREQ_DIM = 256


def sincos_pos_embed_2d(dim: int, grid: int) -> torch.Tensor:
    """DiT's fixed positional embedding of a ``grid x grid`` token grid (row-major): float32 (grid^2) x dim.
    The first half of each row encodes the token's column, the second half its row (DiT's convention)."""
    if dim % 4:
        raise ValueError(f"hidden_size must be divisible by 4 for the 2-D sin-cos embedding, got {dim}")
    coords = torch.arange(grid, dtype=torch.float64)
    rows, cols = torch.meshgrid(coords, coords, indexing="ij")
    return torch.cat([_sincos_1d(dim // 2, cols.flatten()), _sincos_1d(dim // 2, rows.flatten())], 1).float()


def _sincos_1d(dim: int, pos: torch.Tensor) -> torch.Tensor:
    omega = 1.0 / 10000 ** (torch.arange(dim // 2, dtype=torch.float64) / (dim / 2))
    angles = pos[:, None] * omega[None]
    return torch.cat([angles.sin(), angles.cos()], 1)


def timestep_embedding(t: torch.Tensor, dim: int = TIMESTEP_FREQ_DIM, freq_shift: int = 0,
                       max_period: float = 10000.0) -> torch.Tensor:
    """Sinusoidal features [cos, sin] of float or int timesteps ``t`` (B): float32 B x dim."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device)
                      / (half - freq_shift))
    args = t.float()[:, None] * freqs[None]
    return torch.cat([args.cos(), args.sin()], 1)


class TimestepEmbedder(nn.Module):
    """B timesteps -> B x hidden: sinusoid then a 2-layer SiLU MLP."""

    def __init__(self, hidden: int, freq_shift: int = 0):
        super().__init__()
        self.freq_shift = freq_shift
        self.mlp = nn.Sequential(nn.Linear(TIMESTEP_FREQ_DIM, hidden), nn.SiLU(), nn.Linear(hidden, hidden))

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        freq = timestep_embedding(t, TIMESTEP_FREQ_DIM, self.freq_shift)
        return self.mlp(freq.to(self.mlp[0].weight.dtype))


class Attention(nn.Module):
    """Multi-head self-attention, B x N x D -> B x N x D."""

    def __init__(self, dim: int, num_heads: int):
        super().__init__()
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, d = x.shape
        q, k, v = self.qkv(x).view(b, n, 3, self.num_heads, d // self.num_heads).permute(2, 0, 3, 1, 4)
        out = F.scaled_dot_product_attention(q, k, v)
        return self.proj(out.transpose(1, 2).reshape(b, n, d))


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(x), approximate="tanh"))


def _modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    return torch.addcmul(shift, x, 1 + scale)  # x * (1 + scale) + shift, one kernel


class DiTBlock(nn.Module):
    """adaLN-Zero transformer block. ``forward(x: B x N x D, c: B x D already through SiLU) -> B x N x D``."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float, mlp_norm_eps: float = 1e-6):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.attn = Attention(dim, num_heads)
        self.norm2 = nn.LayerNorm(dim, elementwise_affine=False, eps=mlp_norm_eps)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))
        self.adaLN_modulation = nn.Linear(dim, 6 * dim)  # DiT's Sequential(SiLU, Linear); SiLU is applied once

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = self.adaLN_modulation(c)[:, None].chunk(6, 2)
        x = torch.addcmul(x, gate_msa, self.attn(_modulate(self.norm1(x), shift_msa, scale_msa)))
        return torch.addcmul(x, gate_mlp, self.mlp(_modulate(self.norm2(x), shift_mlp, scale_mlp)))


class FinalLayer(nn.Module):
    """adaLN LayerNorm + linear to patch pixels: B x N x D -> B x N x (p * p * out_channels)."""

    def __init__(self, dim: int, patch_size: int, out_channels: int):
        super().__init__()
        self.norm_final = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.linear = nn.Linear(dim, patch_size * patch_size * out_channels)
        self.adaLN_modulation = nn.Linear(dim, 2 * dim)

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        shift, scale = self.adaLN_modulation(c)[:, None].chunk(2, 2)
        return self.linear(_modulate(self.norm_final(x), shift, scale))


class DiT(ModelMixin, ConfigMixin):
    """Class-conditional diffusion transformer on latents (see the module docstring).

    Args:
        sample_size: latent height = width (e.g. 32 for 256 px images through the /8 SD VAE).
        in_channels: latent channels.
        out_channels: None -> ``in_channels``; ``2 * in_channels`` = learned-sigma layout (epsilon first).
        patch_size, hidden_size, depth, num_heads, mlp_ratio: the transformer (DiT-S/2: 2, 384, 12, 6, 4).
        num_class_embeds: K + 1 (the last index K is the null label); None = unconditional.
        side_interpolater_depth: > 0 builds MDT's side-interpolater (needed for ``mask_ratio > 0``).
        decoder_depth: of the ``depth`` blocks, how many run after the side-interpolater (MDT only).
        freq_shift, mlp_norm_eps: diffusers-compatibility knobs (module docstring); keep the defaults.
    """

    _supports_gradient_checkpointing = True

    @register_to_config
    def __init__(
        self,
        sample_size: int = 32,
        in_channels: int = 4,
        out_channels: int | None = None,
        patch_size: int = 2,
        hidden_size: int = 384,
        depth: int = 12,
        num_heads: int = 6,
        mlp_ratio: float = 4.0,
        num_class_embeds: int | None = None,
        side_interpolater_depth: int = 0,
        decoder_depth: int = 2,
        freq_shift: int = 0,
        mlp_norm_eps: float = 1e-6,
    ):
        super().__init__()
        _validate(sample_size, patch_size, hidden_size, num_heads, depth, num_class_embeds,
                  side_interpolater_depth, decoder_depth)
        self.out_channels = in_channels if out_channels is None else out_channels
        self.gradient_checkpointing = False
        grid = sample_size // patch_size
        self.x_embedder = nn.Conv2d(in_channels, hidden_size, patch_size, stride=patch_size)
        self.register_buffer("pos_embed", sincos_pos_embed_2d(hidden_size, grid)[None], persistent=False)
        self.t_embedder = TimestepEmbedder(hidden_size, freq_shift)
        self.y_embedder = nn.Embedding(num_class_embeds, hidden_size) if num_class_embeds else None
        self.blocks = nn.ModuleList(DiTBlock(hidden_size, num_heads, mlp_ratio, mlp_norm_eps) for _ in range(depth))
        if side_interpolater_depth > 0:
            self.side_blocks = nn.ModuleList(
                DiTBlock(hidden_size, num_heads, mlp_ratio, mlp_norm_eps) for _ in range(side_interpolater_depth))
            self.mask_token = nn.Parameter(torch.zeros(1, 1, hidden_size))
        self.final_layer = FinalLayer(hidden_size, patch_size, self.out_channels)
        self.initialize_weights()

    @property
    def num_tokens(self) -> int:
        return (self.config.sample_size // self.config.patch_size) ** 2

    @property
    def encoder_blocks(self) -> nn.ModuleList:
        """The blocks before the side-interpolater (all blocks when there is none)."""
        return self.blocks[: len(self.blocks) - self._decoder_depth()]

    @property
    def decoder_blocks(self) -> nn.ModuleList:
        return self.blocks[len(self.blocks) - self._decoder_depth():]

    def _decoder_depth(self) -> int:
        return self.config.decoder_depth if self.config.side_interpolater_depth > 0 else 0

    def initialize_weights(self) -> None:
        """DiT's initialisation (xavier linears, zero adaLN and output, normal 0.02 embeddings)."""
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                nn.init.zeros_(m.bias)
        w = self.x_embedder.weight
        nn.init.xavier_uniform_(w.view(w.shape[0], -1))
        nn.init.zeros_(self.x_embedder.bias)
        if self.y_embedder is not None:
            nn.init.normal_(self.y_embedder.weight, std=0.02)
        nn.init.normal_(self.t_embedder.mlp[0].weight, std=0.02)
        nn.init.normal_(self.t_embedder.mlp[2].weight, std=0.02)
        for block in [*self.blocks, *getattr(self, "side_blocks", [])]:
            nn.init.zeros_(block.adaLN_modulation.weight)
            nn.init.zeros_(block.adaLN_modulation.bias)
        for layer in (self.final_layer.adaLN_modulation, self.final_layer.linear):
            nn.init.zeros_(layer.weight)
            nn.init.zeros_(layer.bias)

    def forward(
        self,
        sample: torch.Tensor,
        timestep: torch.Tensor | float | int,
        class_labels: torch.Tensor | None = None,
        mask_ratio: float = 0.0,
        generator: torch.Generator | None = None,
        return_dict: bool = True,
    ) -> Transformer2DModelOutput | tuple[torch.Tensor]:
        """Predict the noise of ``sample``.

        Args:
            sample: B x in_channels x H x W with H = W = ``sample_size``.
            timestep: a scalar or B timesteps (int or float).
            class_labels: int64 B in [0, K]; None on a conditional model = the null label K.
            mask_ratio: MDT masked training, share of tokens hidden from the encoder (0: no masking).
            generator: draws the masks (its device may differ from the sample's); None: torch's global RNG.

        Returns:
            ``.sample``: B x out_channels x H x W (full size, also when masking).
        """
        b = sample.shape[0]
        self._check_input(sample, mask_ratio)
        x = self.x_embedder(sample).flatten(2).transpose(1, 2) + self.pos_embed  # B x T x D
        c = F.silu(self._condition(timestep, class_labels, b, x))
        x = self._masked_trunk(x, c, mask_ratio, generator) if mask_ratio > 0 else self._trunk(x, c)
        out = self._unpatchify(self.final_layer(x, c))
        return Transformer2DModelOutput(sample=out) if return_dict else (out,)

    def _check_input(self, sample: torch.Tensor, mask_ratio: float) -> None:
        size = self.config.sample_size
        if sample.ndim != 4 or sample.shape[1] != self.config.in_channels or sample.shape[2:] != (size, size):
            raise ValueError(f"DiT expects B x {self.config.in_channels} x {size} x {size} input "
                             f"(sample_size is fixed), got {tuple(sample.shape)}")
        if not 0.0 <= mask_ratio < 1.0:
            raise ValueError(f"mask_ratio must be in [0, 1), got {mask_ratio}")
        if mask_ratio > 0 and self.config.side_interpolater_depth <= 0:
            raise ValueError("mask_ratio > 0 needs MDT's side-interpolater: build the model with "
                             "side_interpolater_depth > 0 (train.mask_ratio needs it)")

    def _condition(self, timestep: Any, class_labels: torch.Tensor | None, b: int, x: torch.Tensor) -> torch.Tensor:
        """t_emb + y_emb: B x D (before SiLU)."""
        t = torch.as_tensor(timestep, device=x.device)
        if t.ndim == 0 or t.numel() == 1:
            t = t.reshape(1).expand(b)
        if t.shape != (b,):
            raise ValueError(f"timestep must be a scalar or have shape ({b},), got {tuple(t.shape)}")
        c = self.t_embedder(t).to(x.dtype)
        if self.y_embedder is None:
            if class_labels is not None:
                raise ValueError("class_labels given, but this DiT is unconditional (num_class_embeds=None)")
            return c
        if class_labels is None:
            class_labels = torch.full((b,), self.config.num_class_embeds - 1, dtype=torch.long, device=x.device)
        return c + self.y_embedder(class_labels.to(x.device)).to(x.dtype)

    def _run(self, blocks: nn.ModuleList, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        for block in blocks:
            if self.gradient_checkpointing and torch.is_grad_enabled():
                x = self._gradient_checkpointing_func(block, x, c)
            else:
                x = block(x, c)
        return x

    def _trunk(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        """All blocks on all tokens; an MDT model adds the positional embedding again before its decoder."""
        if self.config.side_interpolater_depth <= 0:
            return self._run(self.blocks, x, c)
        x = self._run(self.encoder_blocks, x, c) + self.pos_embed
        return self._run(self.decoder_blocks, x, c)

    def _masked_trunk(self, x: torch.Tensor, c: torch.Tensor, mask_ratio: float,
                      generator: torch.Generator | None) -> torch.Tensor:
        """MDT: encoder on the kept tokens, side-interpolater fills the rest, decoder on all. B x T x D."""
        b, t, d = x.shape
        keep = self.kept_tokens(mask_ratio)
        noise = torch.rand(b, t, generator=generator, device=generator.device if generator is not None else x.device)
        ids_keep = noise.to(x.device).argsort(dim=1)[:, :keep]  # B x keep
        index = ids_keep[..., None].expand(-1, -1, d)
        x = self._run(self.encoder_blocks, x.gather(1, index), c)
        full = self.mask_token.to(x.dtype).expand(b, t, d).scatter(1, index, x) + self.pos_embed
        dropped = torch.ones(b, t, 1, dtype=torch.bool, device=x.device).scatter(1, ids_keep[..., None], False)
        x = torch.where(dropped, self._run(self.side_blocks, full, c), full)  # MDT's masked shortcut
        return self._run(self.decoder_blocks, x, c)

    def kept_tokens(self, mask_ratio: float) -> int:
        """How many of the ``num_tokens`` tokens the encoder sees at ``mask_ratio`` (at least 1)."""
        return max(1, round((1.0 - mask_ratio) * self.num_tokens))

    def _unpatchify(self, x: torch.Tensor) -> torch.Tensor:
        """B x T x (p * p * C) -> B x C x H x W."""
        p, c = self.config.patch_size, self.out_channels
        g = self.config.sample_size // p
        x = x.reshape(x.shape[0], g, g, p, p, c).permute(0, 5, 1, 3, 2, 4)
        return x.reshape(x.shape[0], c, g * p, g * p)


def _validate(sample_size: int, patch_size: int, hidden_size: int, num_heads: int, depth: int,
              num_class_embeds: int | None, side_depth: int, decoder_depth: int) -> None:
    if sample_size % patch_size:
        raise ValueError(f"sample_size {sample_size} is not divisible by patch_size {patch_size}")
    if hidden_size % num_heads:
        raise ValueError(f"hidden_size {hidden_size} is not divisible by num_heads {num_heads}")
    if num_class_embeds is not None and num_class_embeds < 2:
        raise ValueError(f"num_class_embeds must be >= 2 (K classes + 1 null label), got {num_class_embeds}")
    if side_depth < 0:
        raise ValueError(f"side_interpolater_depth must be >= 0, got {side_depth}")
    if side_depth > 0 and not 0 <= decoder_depth < depth:
        raise ValueError(f"decoder_depth must be in [0, depth={depth}) so the encoder keeps a block, "
                         f"got {decoder_depth}")


# ---- conversion from diffusers' DiTTransformer2DModel ----------------------------------------------------


def dit_from_diffusers(model: nn.Module) -> DiT:
    """Our ``DiT`` with the weights of a diffusers ``DiTTransformer2DModel`` (e.g. ``facebook/DiT-XL-2-256``'s
    ``transformer/``); same outputs on the same inputs, in eval mode (diffusers drops labels in train mode).

    diffusers keeps a copy of the timestep/label embedder in every block (identical in converted checkpoints);
    ours has one, so the copies must be equal. The null label is diffusers' ``num_embeds_ada_norm``.
    Raises ValueError for configurations our DiT cannot express.
    """
    cfg = model.config
    _check_convertible(model)
    blocks = model.transformer_blocks
    dim = cfg.num_attention_heads * cfg.attention_head_dim
    table = blocks[0].norm1.emb.class_embedder.embedding_table.weight
    ours = DiT(
        sample_size=cfg.sample_size, in_channels=cfg.in_channels, out_channels=model.out_channels,
        patch_size=cfg.patch_size, hidden_size=dim, depth=cfg.num_layers, num_heads=cfg.num_attention_heads,
        mlp_ratio=blocks[0].ff.net[2].in_features / dim, num_class_embeds=table.shape[0],
        freq_shift=1, mlp_norm_eps=cfg.norm_eps,
    )
    ours.load_state_dict(_convert_state_dict(model.state_dict(), cfg.num_layers), strict=True)
    p = next(model.parameters())
    ours = ours.to(p.device) if p.dtype == torch.float32 else ours.to(device=p.device, dtype=p.dtype)
    return ours.train(model.training)


def _check_convertible(model: nn.Module) -> None:
    cfg = model.config
    problems = []
    if cfg.norm_type != "ada_norm_zero":
        problems.append(f"norm_type={cfg.norm_type!r} (need 'ada_norm_zero')")
    if cfg.activation_fn != "gelu-approximate":
        problems.append(f"activation_fn={cfg.activation_fn!r} (need 'gelu-approximate')")
    if not cfg.attention_bias:
        problems.append("attention_bias=False")
    if cfg.norm_elementwise_affine:
        problems.append("norm_elementwise_affine=True")
    if cfg.num_embeds_ada_norm is None:
        problems.append("num_embeds_ada_norm=None")
    blocks = model.transformer_blocks
    ref = blocks[0].norm1.emb.state_dict()
    for i, block in enumerate(blocks[1:], 1):
        if any(not torch.equal(v, ref[k]) for k, v in block.norm1.emb.state_dict().items()):
            problems.append(f"block {i}'s timestep/label embedder differs from block 0's (ours shares one)")
            break
    if problems:
        raise ValueError(f"cannot convert this DiTTransformer2DModel to diffprune's DiT: {'; '.join(problems)}")


def _convert_state_dict(sd: dict[str, torch.Tensor], depth: int) -> dict[str, torch.Tensor]:
    emb = "transformer_blocks.0.norm1.emb."
    out = {
        "x_embedder.weight": sd["pos_embed.proj.weight"],
        "x_embedder.bias": sd["pos_embed.proj.bias"],
        "t_embedder.mlp.0.weight": sd[emb + "timestep_embedder.linear_1.weight"],
        "t_embedder.mlp.0.bias": sd[emb + "timestep_embedder.linear_1.bias"],
        "t_embedder.mlp.2.weight": sd[emb + "timestep_embedder.linear_2.weight"],
        "t_embedder.mlp.2.bias": sd[emb + "timestep_embedder.linear_2.bias"],
        "y_embedder.weight": sd[emb + "class_embedder.embedding_table.weight"],
        "final_layer.adaLN_modulation.weight": sd["proj_out_1.weight"],
        "final_layer.adaLN_modulation.bias": sd["proj_out_1.bias"],
        "final_layer.linear.weight": sd["proj_out_2.weight"],
        "final_layer.linear.bias": sd["proj_out_2.bias"],
    }
    pairs = {"adaLN_modulation": "norm1.linear", "attn.proj": "attn1.to_out.0", "mlp.fc1": "ff.net.0.proj",
             "mlp.fc2": "ff.net.2"}
    for i in range(depth):
        src, dst = f"transformer_blocks.{i}.", f"blocks.{i}."
        for ours, theirs in pairs.items():
            for kind in ("weight", "bias"):
                out[f"{dst}{ours}.{kind}"] = sd[f"{src}{theirs}.{kind}"]
        for kind in ("weight", "bias"):
            out[f"{dst}attn.qkv.{kind}"] = torch.cat([sd[f"{src}attn1.to_{n}.{kind}"] for n in "qkv"])
    return out
