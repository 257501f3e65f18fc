"""Budget modes of a run's arms and early stop at a quality target (issue 24).

- ``train.budget: equal_steps``: every arm trains the full arm's number of steps (``epochs`` x the full data's
  size / ``batch_size``), so a pruned arm gets the same compute and is not stopped before it can reach the full
  arm's quality (with ``budget: epochs`` a 30% arm trains 30% of the steps, and the speed-up is 1/r by
  construction).
- ``train.eval_every_images``: evaluations every that many training images, so with one batch size for all arms
  every curve has the same x points.
- ``train.stop_at_target``: a pruned arm stops once ``patience`` consecutive evaluations have reached the target,
  the full arm's final value of the metric (same seed) x (1 + tolerance). The full arm therefore trains first:
  ``Runner.train`` of a pruned arm trains (or finds cached) the full arm of its seed before it starts, under the
  full arm's folder lock, so the sweep's order (the full arm first in every seed) is a convenience, not a
  requirement, and two processes working on one grid in opposite orders still agree.

Early stop without changing the trainer: the arm trains in pieces that end at evaluation steps (a piece spans the
evaluations before which the rule cannot fire, so with patience k mostly k evaluations), each resuming the last one's
checkpoint (``steps`` may change on resume and the trainer resumes exactly, so the pieces follow the
same trajectory as one uninterrupted run); the LR schedule's horizon stays the whole budget. Each piece pays the
trainer's set-up and a checkpoint (measured: 2.9 s per piece for ddpm-tiny at 16 px on the 2-core VM under a load
of about 7), and with ``train.compile`` on, a compilation per piece: use ``compile: false`` with early stop on a
GPU, until the trainer can stop at an evaluator's request.
"""
from __future__ import annotations

import json
import math
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from diffprune.diffusion.config import StopAtTarget, TrainConfig, TrainError


def equal_steps(config: TrainConfig, full_size: int) -> int:
    """The full arm's number of optimizer steps (``config`` resolved): ``steps`` if given, else
    ceil(epochs x ``full_size`` / batch_size)."""
    if config.steps is not None:
        return config.steps
    return max(1, math.ceil(config.epochs * full_size / config.batch_size))


def budgeted(config: TrainConfig, full_size: int) -> TrainConfig:
    """``config`` (resolved) with its budget made explicit: ``budget: equal_steps`` turns ``epochs`` into the full
    arm's steps; a decaying LR schedule of a budget in steps gets that horizon (``lr_schedule_steps``), so that
    training in pieces and a run extended later keep the schedule of this budget."""
    update: dict[str, Any] = {}
    if config.budget == "equal_steps" and config.epochs is not None:
        update = {"steps": equal_steps(config, full_size), "epochs": None}
    steps = update.get("steps", config.steps)
    if config.lr_schedule != "constant" and config.lr_schedule_steps is None and steps is not None:
        update["lr_schedule_steps"] = steps
    return config.model_copy(update=update)


def evaluation_curve(metrics_path: str | os.PathLike, metric: str) -> list[tuple[int, float]]:
    """(step, value) of every evaluation during training in a trainer's ``metrics.jsonl`` that has ``metric``."""
    curve = []
    for line in Path(metrics_path).read_text().splitlines():
        row = json.loads(line)
        if row.get(metric) is not None and "eval_seconds" in row:
            curve.append((int(row["step"]), float(row[metric])))
    return curve


def stop_target(full_metrics: str | os.PathLike, stop: StopAtTarget) -> float:
    """The target of ``stop``: the last evaluation's ``stop.metric`` of the full arm x (1 + tolerance)."""
    curve = evaluation_curve(full_metrics, stop.metric)
    if not curve:
        raise TrainError(f"the full arm's {full_metrics} has no evaluation with {stop.metric}; it needs "
                         f"train.eval_every_images (or eval_every) and {stop.metric} in train.eval.metrics")
    return curve[-1][1] * (1.0 + stop.tolerance)


def first_stop_step(curve: Sequence[tuple[int, float]], target: float, patience: int) -> int | None:
    """The step of the evaluation that completes the first run of ``patience`` consecutive evaluations with a
    value <= ``target`` (lower is better); None if the curve has none."""
    streak = 0
    for step, value in curve:
        streak = streak + 1 if value <= target else 0
        if streak >= patience:
            return step
    return None


def piece_ends(start: int, steps_total: int, eval_every: int) -> list[int]:
    """The evaluation steps after ``start`` up to ``steps_total`` (which always ends the last piece)."""
    ends = list(range((start // eval_every + 1) * eval_every, steps_total, eval_every))
    return [*ends, steps_total] if start < steps_total else []


def train_until_target(config: TrainConfig, train_piece: Callable[[TrainConfig, bool], dict[str, Any]],
                       metrics_path: Path, target: float, stop: StopAtTarget, start_step: int,
                       resume: bool) -> dict[str, Any]:
    """Train ``config`` (resolved, ``steps`` set, ``eval_every`` > 0) in pieces ending at its evaluation steps and
    stop after the piece whose evaluation completes ``stop.patience`` consecutive values <= ``target``.

    ``train_piece(config, resume)`` runs ``diffusion.train`` and returns its summary; ``start_step`` is the step
    of the checkpoint a resumed call starts from (0 when none). Returns the pieces' summary merged, with
    ``stopped_at_target`` (the step, or None when the budget ran out first), ``target`` and ``stop``.
    """
    if config.lr_schedule != "constant" and config.lr_schedule_steps is None:
        config = config.model_copy(update={"lr_schedule_steps": config.steps})  # the pieces' schedule: the budget's
    summaries = []
    # lines after the checkpoint (a run killed between an evaluation and its checkpoint) do not count
    stopped = _stop_step(metrics_path, stop, target, through=start_step) if resume and start_step else None
    ends = [] if stopped is not None else piece_ends(start_step, config.steps, config.eval_every)
    i = -1
    while stopped is None and i < len(ends) - 1:
        # the rule cannot fire before `patience - streak` more evaluations: one piece covers them all
        done = ends[i] if i >= 0 else (start_step if resume else 0)
        i = min(i + stop.patience - _streak(metrics_path, stop, target, done), len(ends) - 1)
        summaries.append(train_piece(config.model_copy(update={"steps": ends[i]}), resume or bool(summaries)))
        stopped = _stop_step(metrics_path, stop, target)
    return {**merge_summaries(summaries), "stopped_at_target": stopped, "target": target,
            "stop": stop.model_dump(mode="json")}


def _streak(metrics_path: Path, stop: StopAtTarget, target: float, through: int) -> int:
    """How many of the last evaluations up to step ``through`` are <= ``target`` (0 before any)."""
    if not through or not Path(metrics_path).is_file():
        return 0
    streak = 0
    for step, value in evaluation_curve(metrics_path, stop.metric):
        if step <= through:
            streak = streak + 1 if value <= target else 0
    return min(streak, stop.patience - 1)


def _stop_step(metrics_path: Path, stop: StopAtTarget, target: float, through: int | None = None) -> int | None:
    if not Path(metrics_path).is_file():
        return None
    curve = [(s, v) for s, v in evaluation_curve(metrics_path, stop.metric) if through is None or s <= through]
    return first_stop_step(curve, target, stop.patience)


def merge_summaries(summaries: list[dict[str, Any]]) -> dict[str, Any]:
    """One summary for consecutive ``train`` calls of one run: the last call's state, the calls' times summed."""
    if not summaries:
        return {}
    last, first = summaries[-1], summaries[0]
    seconds = sum(s["seconds"] for s in summaries)
    trained = (last["steps"] - (first.get("resumed_from") or 0)) * (last["images_seen"] / max(last["steps"], 1))
    return {**last, "seconds": seconds, "eval_seconds": sum(s["eval_seconds"] for s in summaries),
            "img_per_s": trained / max(seconds, 1e-9), "resumed_from": first.get("resumed_from"),
            "pieces": len(summaries)}
