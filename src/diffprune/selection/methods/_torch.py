"""Small torch helpers shared by the methods: array conversion (devices: ``diffprune.runtime``)."""
from __future__ import annotations

import numpy as np
import torch


def as_tensor(x: np.ndarray, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(x)).to(device=device, dtype=dtype)
