"""The DRO run's log as plain arrays: what its checkpoint keeps besides ``ClassDRO.state_dict()``.

The checkpoint itself is the trainer's (``<out_dir>/proxy/state/``, swapped in atomically by
``diffusion.train``); the DRO hook adds ``dro_hook.npz`` (``ClassDRO`` state plus these arrays, no object
arrays, loaded with ``allow_pickle=False``) and ``dro_identity.json`` to it (``reweighting.hook``).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np


class CheckpointMismatchError(ValueError):
    """A checkpoint exists but belongs to another run (config, data or reference differ)."""


@dataclass
class RunLog:
    """What the run records besides the DRO state: per-step losses and per-update steps and presence."""

    losses: list[float]
    update_steps: list[int]
    present: list[np.ndarray]
    acc_sums: np.ndarray
    acc_counts: np.ndarray
    acc_steps: int
    bucket_sums: np.ndarray | None = None  # the timestep estimator's running reference loss per bucket
    bucket_counts: np.ndarray | None = None

    def arrays(self, num_classes: int) -> dict[str, np.ndarray]:
        return {
            "log_losses": np.asarray(self.losses, dtype=np.float64),
            "log_update_steps": np.asarray(self.update_steps, dtype=np.int64),
            "log_present": np.asarray(self.present, dtype=bool).reshape(-1, num_classes),
            "acc_sums": self.acc_sums,
            "acc_counts": self.acc_counts,
            "acc_steps": np.int64(self.acc_steps),
            **({} if self.bucket_sums is None else {"acc_bucket_sums": self.bucket_sums,
                                                    "acc_bucket_counts": self.bucket_counts}),
        }

    @classmethod
    def from_arrays(cls, arrays: dict[str, np.ndarray]) -> "RunLog":
        return cls(
            losses=arrays["log_losses"].tolist(),
            update_steps=arrays["log_update_steps"].tolist(),
            present=list(arrays["log_present"]),
            acc_sums=arrays["acc_sums"].copy(),
            acc_counts=arrays["acc_counts"].copy(),
            acc_steps=int(arrays["acc_steps"]),
            bucket_sums=arrays["acc_bucket_sums"].copy() if "acc_bucket_sums" in arrays else None,
            bucket_counts=arrays["acc_bucket_counts"].copy() if "acc_bucket_counts" in arrays else None,
        )
