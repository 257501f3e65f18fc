"""``run_dro``: train a proxy DM with Group-DRO class weights against a frozen reference DM (METHOD.md stage 3).

Every step, on one class-balanced batch:
  1. draw timesteps t and noise e once (a generator seeded by (seed, step)) and compute, on the same x0, t, e,
     the reference's unreduced loss under ``torch.inference_mode`` and the proxy's with autograd;
  2. add the per-class clipped excess sums to an accumulator; every ``update_every`` steps turn them into
     per-class excess losses and update ``ClassDRO`` (DoReMi updates before the proxy step, so the step
     uses the new weights);
  3. step the proxy on sum_k a_k * (mean loss of class k in the batch).
The output is ``ClassDRO.average`` (initial weights included), written as ``class_weights.json``.
"""
from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from diffprune.data import ImageDataset
from diffprune.diffusion.batches import to_model_input
from diffprune.io import config_hash, hash_state_dict
from diffprune.reweighting.checkpoint import (
    CheckpointMismatchError,
    RunLog,
    checkpoint_step,
    load_checkpoint,
    save_checkpoint,
)
from diffprune.reweighting.config import ReweightConfig
from diffprune.reweighting.dro import ClassDRO
from diffprune.reweighting.excess import (
    ExcessAccumulator,
    TimestepNormaliser,
    per_class_excess_sums,
    weighted_class_loss,
)
from diffprune.reweighting.outputs import write_outputs
from diffprune.reweighting.sampling import ClassBalancedBatches, step_seed
from diffprune.reweighting.weights import weights_entropy
from diffprune.runtime import Interrupted, StopOnSignal, progress_bar, resolve_device

logger = logging.getLogger("diffprune.reweighting")

# Fields that do not change what a step computes: a checkpoint stays valid when only these differ.
_RESUMABLE_FIELDS = ("steps", "checkpoint_every", "device")


class ReweightError(ValueError):
    """The reweight stage cannot run on these inputs; the message names the problem and the fix."""


class DROInterrupted(Interrupted):
    """SIGINT/SIGTERM stopped ``run_dro`` after it checkpointed; rerun with ``resume=True`` to continue."""


def check_dataset(dataset: ImageDataset) -> None:
    if dataset.labels is None or dataset.num_classes == 0:
        raise ReweightError(
            f"dataset '{dataset.name}' has no labels; DRO needs groups. For unlabelled data pass the selection "
            "stage's clusters as labels (ImageDataset(images, groups, group_names))"
        )
    if len(dataset) == 0:
        raise ReweightError(f"dataset '{dataset.name}' is empty")


def check_reference(model: Any, scheduler: Any, dataset: ImageDataset, where: str) -> None:
    cfg = model.config
    size = cfg.sample_size if isinstance(cfg.sample_size, int) else cfg.sample_size[0]
    if size != dataset.resolution or cfg.in_channels != dataset.channels:
        raise ReweightError(
            f"reference '{where}' models {cfg.in_channels} x {size} x {size} images but the dataset holds "
            f"{dataset.channels} x {dataset.resolution} x {dataset.resolution}; load the data at the reference's "
            "resolution and channels (data.resolution, data.channels) or train a reference (unset reference)"
        )
    if scheduler.config.prediction_type != "epsilon":
        raise ReweightError(
            f"reference '{where}' predicts {scheduler.config.prediction_type!r}; the DRO excess loss is defined "
            "for epsilon-prediction models"
        )


def _class_labels_for(model: Any, labels: torch.Tensor, num_classes: int) -> torch.Tensor | None:
    n = getattr(model.config, "num_class_embeds", None)
    if n is None:
        return None
    if n < num_classes:
        raise ReweightError(f"conditional model has {n} class embeddings but the dataset has {num_classes} classes")
    return labels


def build_proxy(config: ReweightConfig, dataset: ImageDataset) -> torch.nn.Module:
    """A fresh proxy of ``config.proxy_preset`` sized for the dataset, initialised from ``config.seed``."""
    from diffprune.diffusion import create_model

    overrides = {
        "sample_size": dataset.resolution,
        "in_channels": dataset.channels,
        "out_channels": dataset.channels,
        **config.model_overrides,
    }
    torch.manual_seed(config.seed)
    return create_model(config.proxy_preset, **overrides)


def _identity(config: ReweightConfig, dataset: ImageDataset, reference: torch.nn.Module) -> dict[str, Any]:
    """What a checkpoint must match to be resumed: the config (but ``_RESUMABLE_FIELDS``), the data and the
    reference's weights (a retrained or replaced reference invalidates the checkpoint)."""
    stable = config.model_dump(mode="json", exclude=set(_RESUMABLE_FIELDS))
    return {
        "config_hash": config_hash(stable),
        "dataset": dataset.fingerprint,
        "reference_weights": hash_state_dict(reference.state_dict()),
    }


class PairedBatches:
    """``batches(step)`` = (x0, labels, timesteps, noise) of a DRO step: class-balanced, a pure function of
    (seed, step), so the proxy, the reference and the null control's second reference see the same ones."""

    def __init__(self, config: ReweightConfig, dataset: ImageDataset, num_timesteps: int,
                 device: torch.device) -> None:
        self.seed, self.device, self.num_timesteps = config.seed, device, num_timesteps
        self.images = torch.from_numpy(np.ascontiguousarray(dataset.images)).to(device)  # uint8 images or latents
        self.labels = torch.from_numpy(dataset.labels).to(device)
        self.sampler = ClassBalancedBatches(dataset.labels, dataset.num_classes, config.batch_size, config.seed)

    def __call__(self, step: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        idx = torch.from_numpy(self.sampler.indices_at(step)).to(self.device)
        x0, y = to_model_input(self.images[idx]), self.labels[idx]
        gen = torch.Generator(device=self.device).manual_seed(step_seed(self.seed, step))
        t = torch.randint(0, self.num_timesteps, (len(idx),), generator=gen, device=self.device)
        noise = torch.randn(x0.shape, generator=gen, device=self.device)
        return x0, y, t, noise


def update_weights(acc: ExcessAccumulator, dro: ClassDRO, log: RunLog, update_every: int, step: int) -> bool:
    """After ``update_every`` accumulated steps: one ``ClassDRO.update`` from the accumulated excess, logged."""
    if acc.steps != update_every:
        return False
    excess, present = acc.pop()
    dro.update(excess, present)
    log.update_steps.append(step)
    log.present.append(present)
    return True


class DROLoop:
    """The state of one DRO run and its step; ``run_dro`` drives it, the benchmark times it.

    Args:
        config: the reweight section.
        dataset: labelled images (the coreset).
        reference: the frozen reference model (moved to ``device``, eval mode, no grad).
        scheduler: the reference's noise scheduler, used for both models.
        device: where to run.
    """

    def __init__(self, config: ReweightConfig, dataset: ImageDataset, reference: torch.nn.Module, scheduler: Any,
                 device: torch.device) -> None:
        self.config, self.device, self.num_classes = config, device, dataset.num_classes
        self.reference = reference.to(device).eval().requires_grad_(False)
        self.scheduler = scheduler
        self.num_timesteps = int(scheduler.config.num_train_timesteps)
        self.proxy = build_proxy(config, dataset).to(device).train()
        self.lr, self.warmup_steps = config.proxy_lr(), config.proxy_warmup_steps()
        self.optimizer = torch.optim.Adam(self.proxy.parameters(), lr=self.lr)
        self.dro = ClassDRO(self.num_classes, eta=config.eta, smoothing=config.smoothing)
        self.acc = ExcessAccumulator(self.num_classes)
        self.normaliser = TimestepNormaliser()
        self.log = RunLog([], [], [], self.acc.sums, self.acc.counts, 0)
        self.batch = PairedBatches(config, dataset, self.num_timesteps, device)

    def excess(self, proxy_loss: torch.Tensor, ref_loss: torch.Tensor, y: torch.Tensor, t: torch.Tensor) -> None:
        """Add one step's per-class excess statistics (the configured estimator); update the weights every
        ``update_every`` steps."""
        self.acc.add(*per_class_excess_sums(proxy_loss, ref_loss, y, self.num_classes, mode=self.config.estimator,
                                            timesteps=t, num_timesteps=self.num_timesteps,
                                            normaliser=self.normaliser))

    def _optimize(self, loss: torch.Tensor, step: int) -> float:
        if not torch.isfinite(loss):
            raise ReweightError(f"proxy loss is {loss.item()} at step {step}; lower lr (now {self.lr})")
        for group in self.optimizer.param_groups:  # linear warm-up, a pure function of the step
            group["lr"] = self.lr * min(1.0, (step + 1) / self.warmup_steps) if self.warmup_steps else self.lr
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if self.config.grad_clip is not None:
            torch.nn.utils.clip_grad_norm_(self.proxy.parameters(), self.config.grad_clip)
        self.optimizer.step()
        return float(loss.detach())

    def step(self, step: int) -> float:
        """One DRO step (reference loss, proxy loss, excess statistics, weight update, proxy update)."""
        from diffprune.diffusion import diffusion_loss

        k = self.num_classes
        x0, y, t, noise = self.batch(step)
        with torch.inference_mode():
            ref_loss = diffusion_loss(self.reference, self.scheduler, x0, t, noise,
                                      _class_labels_for(self.reference, y, k))
        proxy_loss = diffusion_loss(self.proxy, self.scheduler, x0, t, noise, _class_labels_for(self.proxy, y, k))
        self.excess(proxy_loss, ref_loss, y, t)
        update_weights(self.acc, self.dro, self.log, self.config.update_every, step)
        weights = torch.as_tensor(self.dro.weights, dtype=torch.float32, device=self.device)
        value = self._optimize(weighted_class_loss(proxy_loss, y, weights), step)
        self.log.losses.append(value)
        return value

    def plain_step(self, step: int) -> float:
        """A plain proxy training step on the same batch (the cost baseline of the benchmark)."""
        from diffprune.diffusion import diffusion_loss

        x0, y, t, noise = self.batch(step)
        loss = diffusion_loss(self.proxy, self.scheduler, x0, t, noise, _class_labels_for(self.proxy, y,
                                                                                          self.num_classes))
        return self._optimize(loss.mean(), step)

    def save(self, out_dir: Path, step: int, identity: dict[str, Any]) -> None:
        self.log.acc_sums, self.log.acc_counts, self.log.acc_steps = self.acc.sums, self.acc.counts, self.acc.steps
        self.log.bucket_sums, self.log.bucket_counts = self.normaliser.sums, self.normaliser.counts
        save_checkpoint(out_dir, step, identity, self.proxy, self.optimizer, self.dro.state_dict(), self.log)

    def restore(self, out_dir: Path, identity: dict[str, Any]) -> int:
        start, dro_state, self.log = load_checkpoint(out_dir, identity, self.proxy, self.optimizer)
        self.dro.load_state_dict(dro_state)
        self.acc.sums, self.acc.counts, self.acc.steps = self.log.acc_sums, self.log.acc_counts, self.log.acc_steps
        if self.log.bucket_sums is not None:
            self.normaliser.sums, self.normaliser.counts = self.log.bucket_sums, self.log.bucket_counts
        return start


def run_dro(
    config: ReweightConfig,
    dataset: ImageDataset,
    reference_dir: str | Path,
    out_dir: str | Path,
    progress: bool = True,
    resume: bool = True,
    null_reference_dir: str | Path | None = None,
) -> dict[str, float]:
    """Group DRO of a proxy DM against the reference in ``reference_dir``; write the stage's files.

    Args:
        config: the reweight section.
        dataset: the coreset; ``labels`` are the groups (classes or clusters), ``class_names`` their names.
        reference_dir: a folder (or hub id) that ``diffprune.diffusion.load_model`` reads, e.g. the output of
            ``prepare_reference``.
        out_dir: receives ``class_weights.json`` ({name: weight}, sums to 1), ``trajectory.npz``
            (``weights`` S x K after each update, ``excess`` S x K scores used, ``present`` S x K, ``steps`` S,
            ``average`` K, ``initial`` K, ``loss`` per proxy step), ``weights.png``, ``trajectory.png``,
            ``summary.json`` and ``checkpoint/``.
        progress: show a rich progress bar.
            SIGINT/SIGTERM checkpoint at the end of the current step and raise ``DROInterrupted``.
        resume: continue from ``out_dir/checkpoint`` when it belongs to the same run (raising when it does not);
            False starts afresh.
        null_reference_dir: the null control's second reference (``prepare_reference(..., null=True)``); when
            given, the same DRO also runs on it (``reweighting.null``) and writes ``null_weights.json``,
            ``null_trajectory.npz`` and ``null_control.json``; ``summary.json`` gets its band under ``null``.

    Returns:
        The numeric summary: entropy (nats), normalized_entropy, max_weight, min_weight, collapsed (0/1),
        last_weights_collapsed (0/1), steps, updates, seconds, final_loss; with a null control also
        null_band_halfwidth, signal_to_null and distinguishable_classes.
    """
    from diffprune.diffusion import load_model

    check_dataset(dataset)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    device = resolve_device(config.device)
    t0 = time.perf_counter()
    reference, scheduler = load_model(str(reference_dir))
    check_reference(reference, scheduler, dataset, str(reference_dir))
    loop = DROLoop(config, dataset, reference, scheduler, device)

    identity = _identity(config, dataset, reference)
    start = 0
    if resume and checkpoint_step(out_dir) is not None:
        start = loop.restore(out_dir, identity)
        if start > config.steps:
            raise CheckpointMismatchError(
                f"the checkpoint in '{out_dir}' is at step {start}, beyond the requested {config.steps} steps; "
                "raise steps or write to another folder"
            )
        logger.info("resuming DRO from step %d of %d", start, config.steps)

    with StopOnSignal() as stop, progress_bar("{task.fields[info]}", enabled=progress) as bar:
        task = bar.add_task("dro", total=config.steps, completed=start, info="")
        for step in range(start, config.steps):
            loss = loop.step(step)
            done = step + 1
            if done % config.checkpoint_every == 0 or done == config.steps or stop.requested:
                loop.save(out_dir, done, identity)
            if stop.requested:
                raise DROInterrupted(
                    f"DRO stopped by a signal after step {done}/{config.steps}; the checkpoint is in "
                    f"'{out_dir / 'checkpoint'}'; rerun to continue"
                )
            w = loop.dro.weights
            bar.update(task, advance=1, info=f"loss {loss:.4f}  entropy {weights_entropy(w):.3f}  max {w.max():.3f}")

    if not loop.log.update_steps:
        raise ReweightError(
            f"no DRO update happened: steps ({config.steps}) < update_every ({config.update_every}); "
            "raise steps or lower update_every"
        )
    from diffprune.diffusion import count_parameters
    from diffprune.reweighting.reference import reference_setting

    extra: dict[str, Any] = {"proxy_reference": reference_setting(
        config, count_parameters(reference), count_parameters(loop.proxy))}
    if extra["proxy_reference"]["setting"] != "doremi":
        logger.info("proxy and reference differ from DoReMi's setting: %s",
                    "; ".join(extra["proxy_reference"]["notes"]))
    null_numbers = {}
    if null_reference_dir is not None:
        from diffprune.reweighting.null import run_null_dro, write_null_outputs

        null_dro, null_log = run_null_dro(config, dataset, reference_dir, null_reference_dir, progress)
        source = {"null_reference": str(null_reference_dir), "null_seed": None if config.null_reference
                  else config.null_reference_seed}
        extra["null"] = write_null_outputs(out_dir, null_dro, null_log, loop.dro.average, dataset.class_names,
                                           source)
        null_numbers = {"null_band_halfwidth": extra["null"]["band_halfwidth"],
                        "signal_to_null": extra["null"]["signal_to_null"],
                        "distinguishable_classes": float(len(extra["null"]["distinguishable"]))}
    numbers = write_outputs(out_dir, loop.dro, loop.log, dataset.class_names, config, time.perf_counter() - t0,
                            progress, extra)
    return {**numbers, **null_numbers}
