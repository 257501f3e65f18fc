"""The trainer's ``metrics.jsonl``: one JSON object a line (step, loss, lr, img/s, evaluations, ...)."""
from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from diffprune.io import atomic_write_text


def append_jsonl(path: Path, row: Mapping[str, Any]) -> None:
    """Append ``row`` as one line (a crash can leave a torn last line; ``truncate_metrics`` drops it)."""
    with open(path, "a", encoding="utf-8") as f:
        f.write(json.dumps(row) + "\n")


def truncate_metrics(path: Path, keep_through_step: int) -> None:
    """Drop metrics lines after the checkpoint we resume from (or all of them on a fresh start)."""
    if not path.exists():
        return
    keep = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            if json.loads(line)["step"] <= keep_through_step:
                keep.append(line)
        except (ValueError, KeyError, TypeError):
            continue  # a torn last line from a killed run
    atomic_write_text(path, "".join(f"{line}\n" for line in keep))
