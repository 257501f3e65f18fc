"""The DDPM training objective (epsilon prediction), unreduced so callers can weight examples or classes.

MDT-style masked training (``mask_ratio > 0``, DiT models built with a side-interpolater): the loss is the sum of
the unmasked prediction's error and the masked prediction's error on the same noisy input, as in MDT's training
(Gao et al. 2023); both are over all latent tokens.
"""
from __future__ import annotations

import torch
from diffusers import DDPMScheduler, UNet2DModel


def diffusion_loss(
    model: UNet2DModel | torch.nn.Module,
    scheduler: DDPMScheduler,
    x0: torch.Tensor,
    timesteps: torch.Tensor,
    noise: torch.Tensor,
    class_labels: torch.Tensor | None = None,
    mask_ratio: float = 0.0,
    mask_generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Per-pixel squared error of the epsilon prediction, unreduced.

    Args:
        model: a ``UNet2DModel`` (or a DDP/compiled wrapper of one) predicting the added noise.
        scheduler: the ``DDPMScheduler`` whose ``alphas_cumprod`` define q(x_t | x_0).
        x0: clean images, float B x C x H x W in [-1, 1].
        timesteps: int64 B, each in [0, T).
        noise: standard normal B x C x H x W (the same tensor for a proxy and its reference model when the
            caller needs paired losses).
        class_labels: int64 B for a class-conditional model, else None.
        mask_ratio: fraction of latent tokens hidden from the encoder in the extra masked pass (MDT); 0: none.
        mask_generator: draws the masks (reproducible masked passes).

    Returns:
        float32 B x C x H x W: (noise - eps_theta(sqrt(abar_t) x0 + sqrt(1 - abar_t) noise, t))^2.
        Reduce per example with ``.mean((1, 2, 3))``.
    """
    if x0.shape != noise.shape:
        raise ValueError(f"x0 and noise must have the same shape, got {tuple(x0.shape)} and {tuple(noise.shape)}")
    if timesteps.shape != (x0.shape[0],):
        raise ValueError(f"timesteps must have shape ({x0.shape[0]},), got {tuple(timesteps.shape)}")
    noisy = scheduler.add_noise(x0, noise, timesteps)
    pred = model(noisy, timesteps, class_labels=class_labels).sample
    loss = (epsilon_part(pred, noise.shape[1]).float() - noise.float()).square()
    if mask_ratio > 0:
        masked = model(noisy, timesteps, class_labels=class_labels, mask_ratio=mask_ratio,
                       generator=mask_generator).sample
        loss = loss + (epsilon_part(masked, noise.shape[1]).float() - noise.float()).square()
    return loss


def epsilon_part(prediction: torch.Tensor, channels: int) -> torch.Tensor:
    """The epsilon channels of a model output: models with a learned variance (DiT checkpoints, 2C channels)
    put epsilon first; the variance half is not trained by this objective."""
    return prediction if prediction.shape[1] == channels else prediction[:, :channels]


def snr_loss_weights(timesteps: torch.Tensor, scheduler: DDPMScheduler, gamma: float | None) -> torch.Tensor:
    """Min-SNR-gamma weights of per-example epsilon-prediction losses (Hang et al., ICCV 2023): min(SNR_t, gamma)
    / SNR_t with SNR_t = abar_t / (1 - abar_t), as diffusers' ``train_text_to_image.py --snr_gamma`` weighs
    epsilon targets. Low-noise steps (SNR > gamma) are down-weighted; the others keep weight 1.

    Args:
        timesteps: int64 B.
        scheduler: the noise schedule (``alphas_cumprod``).
        gamma: the clamp (5 in the paper); None: every weight is 1 (off).

    Returns:
        float32 B on ``timesteps``' device; multiplies the per-example loss (and composes with class weights).
    """
    if gamma is None:
        return torch.ones(timesteps.shape, dtype=torch.float32, device=timesteps.device)
    # on the timesteps' device, without a host round trip (diffusers' add_noise has already moved alphas_cumprod
    # there, so this .to is free); float32 as diffusers' compute_snr
    abar = scheduler.alphas_cumprod.to(timesteps.device)[timesteps]
    snr = abar / (1.0 - abar)
    return (snr.clamp(max=gamma) / snr).float()
