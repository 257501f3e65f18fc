"""Figures of a selection, written beside it for the report: kept and pruned examples, and the score histogram."""
from __future__ import annotations

from pathlib import Path

import numpy as np

EXAMPLES = 8  # images per row of examples.png


def _grey_or_rgb(image: np.ndarray) -> np.ndarray:
    """uint8 C x H x W -> H x W (grey) or H x W x 3 for imshow."""
    return image[0] if image.shape[0] == 1 else image.transpose(1, 2, 0)


def selection_figures(out_dir: Path, images: np.ndarray, selection) -> list[Path]:
    """``examples.png`` (top row: the highest-scored kept images; bottom row: the lowest-scored pruned ones)
    and ``scores.png`` (histogram of the scores, kept vs pruned). ``images``: uint8 N x C x H x W."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out_dir = Path(out_dir)
    kept = np.zeros(len(selection.scores), dtype=bool)
    kept[selection.indices] = True
    scores = np.asarray(selection.scores, dtype=np.float64)
    finite = np.isfinite(scores)
    rows = [("kept (highest scores)", np.where(kept)[0]), ("pruned (lowest scores)", np.where(~kept)[0])]
    rows = [(name, idx[np.argsort(-scores[idx] if "kept" in name else scores[idx], kind="stable")][:EXAMPLES])
            for name, idx in rows if len(idx)]
    fig, axes = plt.subplots(len(rows), EXAMPLES, figsize=(EXAMPLES * 0.9, len(rows) * 1.1), squeeze=False)
    for r, (name, idx) in enumerate(rows):
        for c in range(EXAMPLES):
            ax = axes[r][c]
            ax.axis("off")
            if c < len(idx):
                ax.imshow(_grey_or_rgb(np.asarray(images[idx[c]])), cmap="gray", vmin=0, vmax=255)
        axes[r][0].set_title(name, fontsize=8, loc="left")
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
