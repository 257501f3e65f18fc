"""pixels: raw pixel values as features, optionally projected on their top principal components.

The PCA is fitted on the dataset being embedded (``fit``), on a seeded sample of at most ``fit_samples``
images, and stored as buffers so the projection is part of the encoder's weights hash.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from diffprune.encoders.base import Encoder, EncoderError, to_float_rgb
from diffprune.io import hash_arrays


class PixelsEncoder(Encoder):
    """Flattened RGB pixels / 255 (resized to ``size`` if given), or their top ``pca_dim`` PCA coordinates."""

    name = "pixels"

    def __init__(self, size: int | None = None, pca_dim: int | None = None, fit_samples: int = 10000,
                 channels: int = 3) -> None:
        super().__init__()
        if pca_dim is not None and pca_dim < 1:
            raise EncoderError(f"pixels pca_dim must be a positive integer, got {pca_dim}")
        self.size, self.pca_dim, self.fit_samples, self.channels = size, pca_dim, fit_samples, channels
        self.register_buffer("mean", torch.zeros(0))
        self.register_buffer("components", torch.zeros(0, 0))
        self.dim = 0  # known after the first batch (no PCA) or after fit (PCA)
        self.preprocessing = {
            "channels": "grey repeated to RGB",
            "resize": f"bilinear (antialias) to {size}x{size}" if size else "none",
            "scale": "x / 255",
            "pca": {"dim": pca_dim, "fit_samples": fit_samples} if pca_dim else None,
        }

    @property
    def requires_fit(self) -> bool:
        return self.pca_dim is not None and self.components.numel() == 0

    def _flat(self, x: torch.Tensor) -> torch.Tensor:
        if self.size and (x.shape[-1] != self.size or x.shape[-2] != self.size):
            x = F.interpolate(x, size=(self.size, self.size), mode="bilinear", antialias=True, align_corners=False)
        return (x / 255.0).flatten(1)

    def fit(self, images: np.ndarray, seed: int = 0) -> "PixelsEncoder":
        """Fit the PCA on uint8 N x C x H x W images (no-op without ``pca_dim``)."""
        if self.pca_dim is None:
            return self
        rng = np.random.default_rng(seed)
        n = len(images)
        rows = np.sort(rng.choice(n, size=min(n, self.fit_samples), replace=False))

        x = self._flat(to_float_rgb(torch.from_numpy(np.asarray(images[rows])))).double()
        if self.pca_dim > min(x.shape):
            raise EncoderError(f"pixels pca_dim={self.pca_dim} exceeds min(samples, pixels) = {min(x.shape)}")
        mean = x.mean(0)
        _, _, v = torch.linalg.svd(x - mean, full_matrices=False)
        comps = v[: self.pca_dim]
        # fix each component's sign (largest |entry| positive) so results do not depend on the LAPACK build
        signs = torch.sign(comps.gather(1, comps.abs().argmax(1, keepdim=True)))
        self.mean = mean.float().to(self.mean.device)
        self.components = (comps * signs).float().to(self.mean.device)
        self.dim = self.pca_dim
        self.weights_id = hash_arrays(self.mean.cpu().numpy(), self.components.cpu().numpy())
        return self

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        flat = self._flat(x)
        if self.pca_dim is None:
            self.dim = flat.shape[1]
            return flat
        if self.requires_fit:
            raise EncoderError("pixels with pca_dim needs fit(images) first (embed_dataset does this)")
        return (flat - self.mean) @ self.components.T
