"""Atomic, pickle-free checkpoints of a DRO run: proxy weights, optimizer, DRO state, logs and RNG.

Layout of ``<out_dir>/checkpoint/`` (written as a whole folder via ``atomic_path``, so a crash leaves the
previous checkpoint intact):

    state.json          step, identity of the run (config hash without ``steps``, dataset fingerprint, reference)
    proxy.safetensors   proxy model state dict
    optimizer.pt        optimizer state dict (tensors and numbers only; loaded with ``weights_only=True``)
    rng.safetensors     torch CPU (and CUDA) RNG states
    dro.npz             ``ClassDRO.state_dict()`` plus the run's logs (no object arrays; ``allow_pickle=False``)
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from diffprune.io import atomic_path, atomic_write_json, read_json

CHECKPOINT_DIR = "checkpoint"


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


def save_checkpoint(
    out_dir: Path,
    step: int,
    identity: dict[str, Any],
    proxy: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    dro_state: dict[str, Any],
    log: RunLog,
) -> Path:
    target = Path(out_dir) / CHECKPOINT_DIR
    num_classes = int(dro_state["num_classes"])
    with atomic_path(target, is_dir=True) as tmp:
        save_file({k: v.detach().cpu().contiguous() for k, v in proxy.state_dict().items()},
                  str(tmp / "proxy.safetensors"))
        torch.save(optimizer.state_dict(), tmp / "optimizer.pt")
        rng = {"cpu": torch.get_rng_state()}
        if torch.cuda.is_available():
            rng.update({f"cuda{i}": s for i, s in enumerate(torch.cuda.get_rng_state_all())})
        save_file(rng, str(tmp / "rng.safetensors"))
        with open(tmp / "dro.npz", "wb") as f:
            np.savez(f, **dro_state, **log.arrays(num_classes))
        atomic_write_json(tmp / "state.json", {"step": int(step), **identity})
    return target


def checkpoint_step(out_dir: Path) -> int | None:
    """The step of the checkpoint in ``out_dir``, or None when there is none."""
    state = Path(out_dir) / CHECKPOINT_DIR / "state.json"
    return int(read_json(state)["step"]) if state.is_file() else None


def load_checkpoint(
    out_dir: Path,
    identity: dict[str, Any],
    proxy: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
) -> tuple[int, dict[str, np.ndarray], RunLog]:
    """Restore proxy, optimizer and RNG in place; return (step, DRO state dict, run log)."""
    folder = Path(out_dir) / CHECKPOINT_DIR
    state = read_json(folder / "state.json")
    diffs = [k for k in identity if state.get(k) != identity[k]]
    if diffs:
        raise CheckpointMismatchError(
            f"the checkpoint in '{folder}' belongs to another run ({', '.join(diffs)} differ); "
            "delete that folder or write to another output folder to start afresh"
        )
    device = next(proxy.parameters()).device
    proxy.load_state_dict(load_file(str(folder / "proxy.safetensors"), device=str(device)))
    optimizer.load_state_dict(torch.load(folder / "optimizer.pt", map_location=device, weights_only=True))
    rng = load_file(str(folder / "rng.safetensors"))
    torch.set_rng_state(rng["cpu"])
    cuda_states = [rng[k] for k in sorted(rng) if k.startswith("cuda")]
    if cuda_states and torch.cuda.is_available() and len(cuda_states) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(cuda_states)
    with np.load(folder / "dro.npz", allow_pickle=False) as f:
        arrays = {k: f[k] for k in f.files}
    log = RunLog.from_arrays(arrays)
    dro_state = {k: v for k, v in arrays.items() if not k.startswith(("log_", "acc_"))}
    return int(state["step"]), dro_state, log
