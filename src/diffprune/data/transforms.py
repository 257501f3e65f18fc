"""Resolution changes for uint8 N x C x H x W arrays (done once at load time, not per step)."""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image


def pad_to(images: np.ndarray, size: int, value: int = 0) -> np.ndarray:
    """Centre-pad (or centre-crop) square images to ``size`` x ``size``."""
    _, _, h, w = images.shape
    out = images
    if h > size or w > size:
        top, left = max(0, (h - size) // 2), max(0, (w - size) // 2)
        out = out[:, :, top : top + min(h, size), left : left + min(w, size)]
        h, w = out.shape[2:]
    if h == size and w == size:
        return np.ascontiguousarray(out)
    top, left = (size - h) // 2, (size - w) // 2
    padded = np.full((out.shape[0], out.shape[1], size, size), value, dtype=np.uint8)
    padded[:, :, top : top + h, left : left + w] = out
    return padded


def resize_to(images: np.ndarray, size: int, batch: int = 4096) -> np.ndarray:
    """Antialiased bilinear resize to ``size`` x ``size`` (torch), rounded back to uint8."""
    if images.shape[2] == size and images.shape[3] == size:
        return images
    out = np.empty((images.shape[0], images.shape[1], size, size), dtype=np.uint8)
    for start in range(0, len(images), batch):
        x = torch.from_numpy(np.array(images[start : start + batch], dtype=np.float32))
        y = F.interpolate(x, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
        out[start : start + batch] = y.round().clamp(0, 255).to(torch.uint8).numpy()
    return out


def center_crop_pil(image: Image.Image, size: int) -> np.ndarray:
    """ADM / DiT ``center_crop_arr``: returns a uint8 ``size`` x ``size`` (x C) array.

    Halves the image with a BOX filter while its shorter side is >= 2 * ``size``, scales it with BICUBIC so
    the shorter side is ``size``, then crops the centre ``size`` x ``size`` (no stretching).
    """
    while min(image.size) >= 2 * size:
        image = image.resize(tuple(x // 2 for x in image.size), resample=Image.BOX)
    scale = size / min(image.size)
    image = image.resize(tuple(round(x * scale) for x in image.size), resample=Image.BICUBIC)
    arr = np.asarray(image)
    top, left = (arr.shape[0] - size) // 2, (arr.shape[1] - size) // 2
    return arr[top : top + size, left : left + size]


def center_crop_to(images: np.ndarray, size: int) -> np.ndarray:
    """``center_crop_pil`` applied to each uint8 N x C x H x W image; a plain BOX/BICUBIC resize when square."""
    if images.shape[2] == size and images.shape[3] == size:
        return images
    out = np.empty((images.shape[0], images.shape[1], size, size), dtype=np.uint8)
    for i, img in enumerate(images):
        pil = Image.fromarray(img[0] if img.shape[0] == 1 else np.ascontiguousarray(img.transpose(1, 2, 0)))
        a = center_crop_pil(pil, size)
        out[i] = a[None] if a.ndim == 2 else a.transpose(2, 0, 1)
    return out


def to_channels(images: np.ndarray, channels: int) -> np.ndarray:
    """Convert between grey (1) and RGB (3) channels."""
    c = images.shape[1]
    if c == channels:
        return images
    if c == 1 and channels == 3:
        return np.repeat(images, 3, axis=1)
    if c == 3 and channels == 1:
        weights = np.array([0.299, 0.587, 0.114], dtype=np.float32)[None, :, None, None]
        return np.clip((images.astype(np.float32) * weights).sum(1, keepdims=True).round(), 0, 255).astype(np.uint8)
    raise ValueError(f"cannot convert {c} channels to {channels}")
