"""``coreset.csv`` / ``coreset.jsonl``: the kept examples as a file list any trainer can read.

One row per kept example, in dataset-index order:
  index                 row of the source dataset (for folders: the documented file order of
                        ``data.folders.list_image_files``, unreadable files skipped)
  source                file path relative to the dataset root (folders, CSVs), the row index (arrays),
                        or the dataset's own example id (Hugging Face datasets)
  label                 the dataset's class name ("" when unlabelled)
  group                 the selection group (class, or k-means cluster when unlabelled): what class weights key
  score                 the selection score (higher = kept first under keep="top")
  sampling_probability  probability of drawing the example per draw in diffprune's training (sums to 1)
  loss_weight           multiplier of its per-example loss in diffprune's training
The last two come from ``diffusion.batches.example_weights`` (the trainer's formulas) for the arm's class
weights and ``train.weighting``; without class weights they are 1/n and 1.
"""
from __future__ import annotations

import csv
import io
import json
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from diffprune.data import ImageDataset
from diffprune.diffusion.batches import class_weight_vector, example_weights
from diffprune.io import atomic_write_text

COLUMNS = ("index", "source", "label", "group", "score", "sampling_probability", "loss_weight")


def coreset_rows(dataset: ImageDataset, selection, class_weights: Mapping[str, float] | None = None,
                 weighting: str = "loss") -> list[dict]:
    """The rows above for ``selection`` (a ``Selection`` over ``dataset``) under ``class_weights``."""
    idx = np.asarray(selection.indices, dtype=np.int64)
    groups = np.asarray(selection.groups, dtype=np.int64)[idx]
    a = None if class_weights is None else class_weight_vector(class_weights, selection.group_names)
    probs, weights = example_weights(groups, a, weighting)
    sources = dataset.source_ids_of(idx) or [str(i) for i in idx.tolist()]
    names = dataset.class_names
    labels = None if dataset.labels is None else dataset.labels[idx]
    return [
        {"index": int(i), "source": src, "label": "" if labels is None else names[int(labels[j])],
         "group": selection.group_names[int(groups[j])], "score": float(selection.scores[i]),
         "sampling_probability": float(probs[j]), "loss_weight": float(weights[j])}
        for j, (i, src) in enumerate(zip(idx.tolist(), sources))
    ]


def write_coreset(out_dir: str | Path, rows: list[dict]) -> tuple[Path, Path]:
    """Write ``coreset.csv`` (header = ``COLUMNS``) and ``coreset.jsonl`` into ``out_dir``, atomically."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=COLUMNS, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    csv_path = atomic_write_text(out / "coreset.csv", buf.getvalue())
    jsonl_path = atomic_write_text(out / "coreset.jsonl", "".join(json.dumps(r) + "\n" for r in rows))
    return csv_path, jsonl_path


def read_coreset(path: str | Path) -> list[dict]:
    """Rows of a ``coreset.csv`` or ``coreset.jsonl``, numbers parsed."""
    p = Path(path)
    if p.suffix == ".jsonl":
        return [json.loads(line) for line in p.read_text().splitlines() if line.strip()]
    with p.open(newline="") as f:
        rows = list(csv.DictReader(f))
    for r in rows:
        r["index"] = int(r["index"])
        for key in ("score", "sampling_probability", "loss_weight"):
            r[key] = float(r[key])
    return rows
