"""Stage 4: diffusion models (presets), the accelerate trainer, and sampling; in pixel or VAE latent space.

Public API::

    create_model(preset, **overrides) -> UNet2DModel (ddpm-*) | DiT (dit-*)
    create_scheduler(preset) -> DDPMScheduler
    diffusion_loss(model, scheduler, x0, timesteps, noise, class_labels=None, mask_ratio=0) -> B x C x H x W
    load_model(path_or_hub) -> (UNet2DModel | DiT | ClassPromptUNet, DDPMScheduler)
    train(TrainConfig, ImageDataset | LatentDataset, out_dir, class_weights=None, resume=False) -> summary dict
    sample_images(model, scheduler, SampleConfig, class_labels=None) -> uint8 N x H x W x C
    save_samples(out_dir, images, labels=None)
    generate(model_path, out_dir, SampleConfig, class_labels=None) -> out_dir   # load + sample + save
"""
from diffprune.diffusion.batches import WeightsError
from diffprune.diffusion.config import SampleConfig, TrainConfig
from diffprune.diffusion.dit import DiT
from diffprune.diffusion.loading import load_model, read_meta, save_model
from diffprune.diffusion.models import (
    PRESETS,
    ModelError,
    count_parameters,
    create_model,
    create_scheduler,
    is_conditional,
    null_class_label,
    register_preset,
)
from diffprune.diffusion.objective import diffusion_loss
from diffprune.diffusion.sampling import generate, image_grid, sample_images, save_samples
from diffprune.diffusion.setup import total_steps
from diffprune.diffusion.trainer import TrainError, TrainingInterrupted, train

__all__ = [
    "DiT",
    "PRESETS",
    "ModelError",
    "SampleConfig",
    "TrainConfig",
    "TrainError",
    "TrainingInterrupted",
    "WeightsError",
    "count_parameters",
    "create_model",
    "create_scheduler",
    "diffusion_loss",
    "generate",
    "image_grid",
    "is_conditional",
    "load_model",
    "null_class_label",
    "read_meta",
    "register_preset",
    "sample_images",
    "save_model",
    "save_samples",
    "total_steps",
    "train",
]
