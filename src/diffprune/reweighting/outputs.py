"""The files of the reweight stage, written from a finished ``ClassDRO`` and its run log."""
from __future__ import annotations

import logging
import math
from pathlib import Path

import numpy as np

from diffprune.io import atomic_save_npz, atomic_write_json
from diffprune.reweighting.checkpoint import RunLog
from diffprune.reweighting.config import ReweightConfig
from diffprune.reweighting.dro import ClassDRO
from diffprune.reweighting.plots import plot_trajectory, plot_weights
from diffprune.reweighting.weights import (
    collapse_message,
    is_collapsed,
    save_class_weights,
    weights_entropy,
    weights_to_dict,
)

logger = logging.getLogger("diffprune.reweighting")


def write_outputs(
    out_dir: Path,
    dro: ClassDRO,
    log: RunLog,
    class_names: list[str],
    config: ReweightConfig,
    seconds: float,
    progress: bool,
    extra: dict | None = None,
) -> dict[str, float]:
    """Write class_weights.json, trajectory.npz, weights.png, trajectory.png and summary.json (with ``extra``
    merged in: the proxy/reference setting, the null control); log the entropy and warn (logging, and the rich
    console when ``progress``) when the weights collapse. Returns the numeric summary (see ``run_dro``)."""
    k = len(class_names)
    average = dro.average
    weights = weights_to_dict(average, class_names)
    save_class_weights(out_dir / "class_weights.json", average, class_names)
    steps = np.asarray(log.update_steps, dtype=np.int64)
    atomic_save_npz(
        out_dir / "trajectory.npz",
        weights=dro.history, excess=dro.score_history, present=np.asarray(log.present, dtype=bool).reshape(-1, k),
        steps=steps, average=average, initial=dro.initial, loss=np.asarray(log.losses, dtype=np.float64),
        class_names=np.asarray(class_names, dtype=str),
    )
    plot_weights(out_dir / "weights.png", average, dro.weights, class_names)
    plot_trajectory(out_dir / "trajectory.png", steps, dro.history, dro.score_history, class_names)

    entropy = weights_entropy(average)
    collapsed = is_collapsed(average)
    tail = max(1, len(log.losses) // 10)
    numbers = {
        "entropy": entropy,
        "normalized_entropy": entropy / math.log(k) if k > 1 else 1.0,
        "max_weight": float(average.max()),
        "min_weight": float(average.min()),
        "collapsed": float(collapsed),
        "last_weights_collapsed": float(is_collapsed(dro.weights)),
        "steps": float(len(log.losses)),
        "updates": float(dro.num_updates),
        "seconds": float(seconds),
        "final_loss": float(np.mean(log.losses[-tail:])),
    }
    summary = {
        **numbers,
        "collapsed": collapsed,
        "last_weights_collapsed": bool(numbers["last_weights_collapsed"]),
        "entropy_uniform": math.log(k),
        "max_class": class_names[int(np.argmax(average))],
        "min_class": class_names[int(np.argmin(average))],
        "num_classes": k,
        "estimator": config.estimator,
        "weights": weights,
        "warning": collapse_message(weights) if collapsed else None,
        **(extra or {}),
    }
    atomic_write_json(out_dir / "summary.json", summary)
    logger.info("DRO weights: entropy %.3f nats (uniform %.3f), max %.3f (%s)", entropy, math.log(k),
                numbers["max_weight"], summary["max_class"])
    if collapsed or numbers["last_weights_collapsed"]:
        message = collapse_message(weights if collapsed else weights_to_dict(dro.weights, class_names),
                                   "DRO output weights" if collapsed else "DRO weights at the last step")
        logger.warning(message)
        if progress:
            from rich.console import Console

            Console(stderr=True).print(f"[bold yellow]warning:[/] {message}")
    return numbers
