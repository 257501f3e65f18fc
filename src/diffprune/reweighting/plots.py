"""PNG plots of a DRO run: the final (averaged) weights, and the weights and excess losses over steps."""
from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from diffprune.io import atomic_path

MAX_LABELLED_LINES = 12


def _pyplot():
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: str | os.PathLike) -> Path:
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=120, bbox_inches="tight")
    _pyplot().close(fig)
    return Path(path)


def plot_weights(path: str | os.PathLike, average: np.ndarray, final: np.ndarray, class_names: Sequence[str]) -> Path:
    """Bar chart of the output (averaged) weights, the last weights as dots, uniform as a dashed line."""
    plt = _pyplot()
    k = len(class_names)
    fig, ax = plt.subplots(figsize=(max(5.0, min(0.45 * k + 2, 24)), 3.6))
    x = np.arange(k)
    ax.bar(x, average, color="tab:blue", label="output (average over steps)")
    ax.plot(x, final, "o", color="tab:orange", ms=4, label="last step")
    ax.axhline(1.0 / k, color="k", ls="--", lw=1, label="uniform")
    if k <= 40:
        ax.set_xticks(x, [str(n) for n in class_names], rotation=45 if k > 6 else 0, ha="right" if k > 6 else "center")
    ax.set_ylabel("class weight")
    ax.set_title("DRO class weights")
    ax.legend(fontsize=8)
    return _save(fig, path)


def plot_trajectory(
    path: str | os.PathLike,
    steps: np.ndarray,
    weights: np.ndarray,
    excess: np.ndarray,
    class_names: Sequence[str],
) -> Path:
    """Two panels over proxy steps: weights (S x K) and per-class excess scores (S x K).

    With many classes only the MAX_LABELLED_LINES classes of largest final weight are coloured and labelled.
    """
    plt = _pyplot()
    k = len(class_names)
    fig, (ax_w, ax_e) = plt.subplots(2, 1, figsize=(8, 6), sharex=True)
    order = np.argsort(-weights[-1]) if len(weights) else np.arange(k)
    labelled = set(order[:MAX_LABELLED_LINES].tolist())
    for c in range(k):
        style = {"lw": 1.2, "label": str(class_names[c])} if c in labelled else {"lw": 0.5, "color": "0.8"}
        ax_w.plot(steps, weights[:, c], **style)
        ax_e.plot(steps, excess[:, c], **{k_: v for k_, v in style.items() if k_ != "label"})
    ax_w.axhline(1.0 / k, color="k", ls="--", lw=1)
    ax_w.set_ylabel("weight")
    ax_w.legend(fontsize=7, ncol=2, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    ax_e.set_ylabel("clipped excess loss")
    ax_e.set_xlabel("proxy step")
    ax_w.set_title("DRO trajectory")
    return _save(fig, path)
