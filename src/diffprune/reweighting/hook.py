"""``DROHook``: DoReMi's proxy step as a per-step hook of the one trainer (``diffusion.train(step_hook=...)``).

The trainer draws each step's timesteps and noise and runs the proxy; the hook, on every process:
  1. chooses the step's global batch (class-balanced, a pure function of (seed, step): ``ClassBalancedBatches``);
  2. computes the frozen reference's unreduced loss on the very x0, t and noise of its micro-batch
     (``torch.inference_mode``; under the launch's bf16 autocast when the proxy trains in bf16);
  3. forms the per-class excess statistics of the configured estimator (``reweighting.excess``), sums them over
     the processes (one all-reduce of 3K float64 numbers; the timestep estimator's bucket means are reduced
     too), so every process holds the statistics of the whole global batch and the same weights;
  4. every ``update_every`` steps calls ``ClassDRO.update`` (before the proxy step, as DoReMi);
  5. returns per-example loss multipliers B a_y / (n_y S) (n_y: class y's examples in the global batch,
     S = sum of a_k over the classes in it), so the trainer's mean loss, averaged by DDP over the processes,
     is sum_k a_k * (mean loss of class k) / S: the class-weighted objective of ``weighted_class_loss``.

Its state (``ClassDRO`` state, the run log, the accumulator and the timestep normaliser) is written into the
trainer's checkpoint folder as ``dro_hook.npz`` (no pickle) plus ``dro_identity.json``, and restored on resume.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from diffprune.data import ImageDataset
from diffprune.diffusion import diffusion_loss
from diffprune.diffusion.precision import autocast
from diffprune.io import atomic_write_json, read_json
from diffprune.reweighting.checkpoint import RunLog
from diffprune.reweighting.config import ReweightConfig
from diffprune.reweighting.dro import ClassDRO
from diffprune.reweighting.errors import ReweightError
from diffprune.reweighting.excess import ExcessAccumulator, TimestepNormaliser, per_class_excess_sums
from diffprune.reweighting.sampling import ClassBalancedBatches

HOOK_STATE = "dro_hook.npz"
HOOK_IDENTITY = "dro_identity.json"


def reduce_sum(x: torch.Tensor) -> torch.Tensor:
    """``x`` summed over the processes of a launched run (itself in one process)."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        x = x.clone()
        dist.all_reduce(x, op=dist.ReduceOp.SUM)
    return x


def class_labels_for(model: Any, labels: torch.Tensor, num_classes: int) -> torch.Tensor | None:
    """The labels a conditional reference needs (None for an unconditional one)."""
    n = getattr(model.config, "num_class_embeds", None)
    if n is None:
        return None
    if n < num_classes:
        raise ReweightError(f"conditional model has {n} class embeddings but the dataset has {num_classes} classes")
    return labels


def accumulate_and_update(acc: ExcessAccumulator, dro: ClassDRO, log: RunLog, step: int, sums: torch.Tensor,
                          counts: torch.Tensor, update_every: int) -> None:
    """Add one step's per-class excess ``sums`` / ``counts`` (float K each); every ``update_every`` steps move
    the DRO weights with their mean and record the update in ``log`` (the real DRO and the null control alike)."""
    acc.add(sums, counts)
    if acc.steps == update_every:
        excess, present = acc.pop()
        dro.update(excess, present)
        log.update_steps.append(step)
        log.present.append(present)


class DROHook:
    """The DRO state of one proxy run and its per-step hook.

    Args:
        config: the reweight section.
        dataset: labelled images (the coreset); must be the dataset the trainer trains on.
        reference: the frozen reference model (moved to the batch's device on first use, eval, no grad).
        scheduler: the reference's noise scheduler (the same betas as the proxy's).
        identity: what a checkpoint must match to be resumed (``proxy._identity``).
    """

    def __init__(self, config: ReweightConfig, dataset: ImageDataset, reference: torch.nn.Module, scheduler: Any,
                 identity: dict[str, Any]) -> None:
        self.config, self.num_classes, self._identity = config, dataset.num_classes, identity
        self.reference = reference.eval().requires_grad_(False)
        self.scheduler = scheduler
        self.num_timesteps = int(scheduler.config.num_train_timesteps)
        self.labels = np.asarray(dataset.labels, dtype=np.int64)
        self.sampler = ClassBalancedBatches(self.labels, dataset.num_classes, config.batch_size, config.seed)
        self.dro = ClassDRO(self.num_classes, eta=config.eta, smoothing=config.smoothing)
        self.acc = ExcessAccumulator(self.num_classes)
        self.normaliser = TimestepNormaliser(reduce=reduce_sum)
        self.log = RunLog([], [], [], self.acc.sums, self.acc.counts, 0)
        self._batch: tuple[int, np.ndarray] | None = None  # (step, global batch indices)
        self.mixed_precision = "no"  # the trainer hands over the proxy's precision before its first step

    # ---- the StepHook protocol ---------------------------------------------------------------------------

    def batch_indices(self, step: int) -> torch.Tensor:
        """int64 B: the class-balanced global batch of ``step``."""
        idx = self.sampler.indices_at(step)
        self._batch = (step, idx)
        return torch.from_numpy(idx)

    def __call__(self, step: int, x0: torch.Tensor, labels: torch.Tensor, timesteps: torch.Tensor,
                 noise: torch.Tensor, loss: torch.Tensor) -> torch.Tensor:
        """Reference loss, per-class statistics (summed over processes), weight update; float32 B multipliers."""
        k, device = self.num_classes, x0.device
        if next(self.reference.parameters()).device != device:
            self.reference.to(device)
        with torch.inference_mode(), autocast(device, self.mixed_precision):
            ref_loss = diffusion_loss(self.reference, self.scheduler, x0, timesteps, noise,
                                      class_labels_for(self.reference, labels, k)).float()
        sums, counts = per_class_excess_sums(loss, ref_loss, labels, k, mode=self.config.estimator,
                                             timesteps=timesteps, num_timesteps=self.num_timesteps,
                                             normaliser=self.normaliser)
        per_example = loss.detach().double().reshape(len(labels), -1).mean(dim=1)
        loss_sums = torch.zeros(k, dtype=torch.float64, device=device).index_add_(0, labels, per_example)
        stats = reduce_sum(torch.cat([sums, counts, loss_sums])).cpu()
        accumulate_and_update(self.acc, self.dro, self.log, step, stats[:k], stats[k:2 * k], self.config.update_every)

        n = np.bincount(self.labels[self._global_batch(step)], minlength=k).astype(np.float64)
        a = self.dro.weights
        in_batch = n > 0
        total = a[in_batch].sum()
        self.log.losses.append(float((a * stats[2 * k:].numpy() / np.maximum(n, 1))[in_batch].sum() / total))
        per_class = np.where(in_batch, len(self._global_batch(step)) * a / (np.maximum(n, 1) * total), 0.0)
        return torch.as_tensor(per_class, dtype=torch.float32, device=device)[labels]

    def identity(self) -> dict[str, Any]:
        return dict(self._identity)

    def save(self, folder: Path) -> None:
        self.log.acc_sums, self.log.acc_counts, self.log.acc_steps = self.acc.sums, self.acc.counts, self.acc.steps
        self.log.bucket_sums, self.log.bucket_counts = self.normaliser.sums, self.normaliser.counts
        with open(Path(folder) / HOOK_STATE, "wb") as f:
            np.savez(f, **self.dro.state_dict(), **self.log.arrays(self.num_classes))
        atomic_write_json(Path(folder) / HOOK_IDENTITY, self.identity())

    def load(self, folder: Path) -> None:
        with np.load(Path(folder) / HOOK_STATE, allow_pickle=False) as f:
            arrays = {key: f[key] for key in f.files}
        self.log = RunLog.from_arrays(arrays)
        self.dro.load_state_dict({key: v for key, v in arrays.items() if not key.startswith(("log_", "acc_"))})
        self.acc.sums, self.acc.counts, self.acc.steps = self.log.acc_sums, self.log.acc_counts, self.log.acc_steps
        if self.log.bucket_sums is not None:
            self.normaliser.sums, self.normaliser.counts = self.log.bucket_sums, self.log.bucket_counts

    # ---- helpers -------------------------------------------------------------------------------------------

    def _global_batch(self, step: int) -> np.ndarray:
        if self._batch is None or self._batch[0] != step:
            self._batch = (step, self.sampler.indices_at(step))
        return self._batch[1]


def saved_identity(state_dir: Path) -> dict[str, Any] | None:
    """The identity a DRO checkpoint folder was written with (None when it has none)."""
    path = Path(state_dir) / HOOK_IDENTITY
    return read_json(path) if path.is_file() else None
