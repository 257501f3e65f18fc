"""The reweight stage's errors, at the package's ground floor so every module can raise them."""
from __future__ import annotations

from diffprune.diffusion import TrainingInterrupted


class ReweightError(ValueError):
    """The reweight stage cannot run on these inputs; the message names the problem and the fix."""


class DROInterrupted(TrainingInterrupted):
    """SIGINT/SIGTERM stopped ``run_dro`` after the trainer checkpointed; rerun with ``resume=True`` to continue."""
