"""What a training run reports besides ``metrics.jsonl``: accelerate trackers (TensorBoard, W&B, ...) and the
``samples/step-<N>.png`` grids of ``sample_every``."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from accelerate import Accelerator
from diffusers import DDPMScheduler

from diffprune.diffusion.config import SampleConfig, TrainConfig, TrainError
from diffprune.diffusion.sampling import sample_images, save_grid



def trackers_of(cfg: TrainConfig) -> list[str]:
    """accelerate trackers to log to (``log_with`` plus ``tensorboard: true``), each checked to be installed."""
    from accelerate.utils import is_tensorboard_available, is_wandb_available

    names = list(dict.fromkeys([*cfg.log_with, *(["tensorboard"] if cfg.tensorboard else [])]))
    checks = {"tensorboard": is_tensorboard_available, "wandb": is_wandb_available}
    for name in names:
        if name in checks and not checks[name]():
            raise TrainError(f"log_with {name} needs the {name} package: pip install {name} "
                             f"(or pip install diffprune[{name}])")
    return names


def scalar_config(cfg: TrainConfig) -> dict[str, Any]:
    """The config's scalar fields (what every tracker's hyper-parameter table accepts)."""
    return {k: v for k, v in cfg.model_dump(mode="json").items() if isinstance(v, (int, float, str, bool))}


def sample_grid(accelerator: Accelerator, model: Any, scheduler: DDPMScheduler, cfg: TrainConfig, out_dir: Path,
                 step: int, trackers: list[str]) -> None:
    """``samples/step-<step>.png``: 16 DDIM-50 samples of the EMA model (fixed seed, so grids compare across
    steps), sharded over every process; logged to image-capable trackers as well."""
    from PIL import Image

    images = sample_images(model, scheduler, SampleConfig(num_samples=16, sampler="ddim", steps=50, seed=cfg.seed),
                           progress=False, device=accelerator.device)
    if not accelerator.is_main_process:
        return
    (out_dir / "samples").mkdir(parents=True, exist_ok=True)
    grid = np.asarray(Image.open(save_grid(out_dir / "samples" / f"step-{step}.png", images)))
    for name in trackers:
        tracker = accelerator.get_tracker(name, unwrap=True)
        if name == "tensorboard":
            tracker.add_image("samples", grid, step, dataformats="HW" if grid.ndim == 2 else "HWC")
        elif name == "wandb":
            import wandb

            tracker.log({"samples": wandb.Image(grid)}, step=step)
