"""Checks that tests and benchmarks share: counting the calls that make the host wait for the device."""
from __future__ import annotations

import sys
import warnings
from collections.abc import Iterator
from contextlib import contextmanager

import torch

# Tensor methods that hand a value to Python, so that on an accelerator the host waits for the device
_HOST_VALUE_METHODS = ("item", "tolist", "numpy", "cpu", "__bool__", "__float__", "__int__", "__index__")


@contextmanager
def count_host_syncs(device: torch.device | str) -> Iterator[list[str]]:
    """Collect the host-device synchronisations made inside the block into the yielded list.

    On CUDA: every synchronisation torch reports (``torch.cuda.set_sync_debug_mode("warn")``: blocking copies,
    ``.item()``, ``nonzero`` and the like). Elsewhere, where nothing synchronises for real, the Python-level
    calls that would (``.item()``, ``.tolist()``, ``.numpy()``, ``.cpu()``, ``bool/float/int(tensor)``), each
    named with its caller's file and line.
    """
    seen: list[str] = []
    if torch.device(device).type == "cuda":
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            torch.cuda.set_sync_debug_mode("warn")
            try:
                yield seen
            finally:
                torch.cuda.set_sync_debug_mode("default")
        seen.extend(f"{w.filename}:{w.lineno}: {w.message}" for w in caught if "synchroniz" in str(w.message))
        return
    originals = {name: getattr(torch.Tensor, name) for name in _HOST_VALUE_METHODS}

    def counting(name: str):
        original = originals[name]

        def method(self, *args, **kwargs):
            caller = sys._getframe(1)
            seen.append(f"{caller.f_code.co_filename}:{caller.f_lineno}: Tensor.{name}")
            return original(self, *args, **kwargs)
        return method

    for name in _HOST_VALUE_METHODS:
        setattr(torch.Tensor, name, counting(name))
    try:
        yield seen
    finally:
        for name, original in originals.items():
            setattr(torch.Tensor, name, original)
