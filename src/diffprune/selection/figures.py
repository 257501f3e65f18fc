"""Figures of a selection, written beside it for the report: kept and pruned examples, and the score histogram."""
from __future__ import annotations

from pathlib import Path

import numpy as np

EXAMPLES = 8  # images per row of examples.png: half kept, half pruned
MAX_GROUPS = 10  # rows (classes) of examples.png


def _grey_or_rgb(image: np.ndarray) -> np.ndarray:
    """uint8 C x H x W -> H x W (grey) or H x W x 3 for imshow."""
    return image[0] if image.shape[0] == 1 else image.transpose(1, 2, 0)


def example_rows(selection, per_side: int = EXAMPLES // 2,
                 max_groups: int = MAX_GROUPS) -> list[tuple[str, np.ndarray, np.ndarray]]:
    """Per group (class or cluster; at most ``max_groups``, evenly spread): its name, its ``per_side``
    highest-scored kept examples and its ``per_side`` lowest-scored pruned ones (indices into the dataset).
    Ranked within the group, since per-class selection compares scores only there."""
    kept = np.zeros(len(selection.scores), dtype=bool)
    kept[selection.indices] = True
    scores = np.asarray(selection.scores, dtype=np.float64)
    groups = np.asarray(selection.groups)
    names = list(selection.group_names) or ["all"]
    shown = np.unique(np.linspace(0, len(names) - 1, min(len(names), max_groups)).round().astype(int))
    rows = []
    for g in shown:
        keep_g, prune_g = np.where(kept & (groups == g))[0], np.where(~kept & (groups == g))[0]
        rows.append((str(names[g]), keep_g[np.argsort(-scores[keep_g], kind="stable")][:per_side],
                     prune_g[np.argsort(scores[prune_g], kind="stable")][:per_side]))
    return rows


def selection_figures(out_dir: Path, images: np.ndarray, selection) -> list[Path]:
    """``examples.png`` (a row per class: its highest-scored kept images, then its lowest-scored pruned ones)
    and ``scores.png`` (histogram of the scores, kept vs pruned). ``images``: uint8 N x C x H x W."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out_dir = Path(out_dir)
    kept = np.zeros(len(selection.scores), dtype=bool)
    kept[selection.indices] = True
    scores = np.asarray(selection.scores, dtype=np.float64)
    finite = np.isfinite(scores)
    rows, half = example_rows(selection), EXAMPLES // 2
    fig, axes = plt.subplots(len(rows), 2 * half + 1, figsize=((2 * half + 1) * 0.9, len(rows) * 1.15),
                             squeeze=False, gridspec_kw={"width_ratios": [1] * half + [0.3] + [1] * half,
                                                         "hspace": 0.45})
    for r, (name, keep_idx, prune_idx) in enumerate(rows):
        for c in range(2 * half + 1):
            axes[r][c].axis("off")
        for c, i in enumerate(keep_idx):
            axes[r][c].imshow(_grey_or_rgb(np.asarray(images[i])), cmap="gray", vmin=0, vmax=255)
        for c, i in enumerate(prune_idx):
            axes[r][half + 1 + c].imshow(_grey_or_rgb(np.asarray(images[i])), cmap="gray", vmin=0, vmax=255)
        axes[r][0].set_title(f"{name}: kept (highest)", fontsize=7, loc="left")
        axes[r][half + 1].set_title("pruned (lowest)", fontsize=7, loc="left")
    paths = [out_dir / "examples.png"]
    fig.savefig(paths[0], dpi=110, bbox_inches="tight")
    plt.close(fig)
    fig, ax = plt.subplots(figsize=(5.5, 3.2))
    bins = np.histogram_bin_edges(scores[finite], bins=40) if finite.any() else 10
    for name, mask in (("kept", kept & finite), ("pruned", ~kept & finite)):
        if mask.any():
            ax.hist(scores[mask], bins=bins, alpha=0.6, label=f"{name} ({int(mask.sum())})")
    ax.set_xlabel(f"{selection.method} score (higher = more typical)")
    ax.set_ylabel("images")
    ax.legend(fontsize=8)
    paths.append(out_dir / "scores.png")
    fig.savefig(paths[1], dpi=110, bbox_inches="tight")
    plt.close(fig)
    return paths
