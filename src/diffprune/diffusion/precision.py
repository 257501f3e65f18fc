"""Mixed precision: the one autocast helper (sampling, the DRO hook), and accelerate's once-per-process precision."""
from __future__ import annotations

import torch
from accelerate.state import AcceleratorState

from diffprune.diffusion.config import TrainError
from diffprune.runtime import process_state

_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def autocast(device: torch.device, mixed_precision: str) -> torch.autocast:
    """bf16/fp16 autocast on ``device`` for "bf16"/"fp16"; a disabled one for "no"."""
    dtype = _DTYPES.get(mixed_precision)
    return torch.autocast(device.type, dtype=dtype, enabled=dtype is not None)


def allow_precision_change(mixed_precision: str | None) -> None:
    """accelerate fixes the precision once per process. A single (non-launched) process may run several
    trainings with different precisions (e.g. a reference model then the arms), so reset its state then;
    under ``accelerate launch`` a change is an error, as accelerate would raise."""
    state = AcceleratorState._shared_state
    if not state or (mixed_precision is not None and state.get("_mixed_precision") in (None, mixed_precision)):
        return
    if process_state().num_processes > 1:
        if mixed_precision is None:  # the launch's precision stays
            return
        raise TrainError(
            f"this launched process already trains with mixed_precision={state.get('_mixed_precision')!r}; "
            f"use the same precision for every training in one `accelerate launch`, or launch separately"
        )
    AcceleratorState._reset_state()
