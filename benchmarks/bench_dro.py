"""Cost of one DRO step relative to one plain proxy training step (target: ratio <= 1.6).

Both steps run on the same proxy, the same batch (x0, t, noise of the same step index) and the same process;
they are interleaved one by one (order alternating) so that the load of a shared machine hits both alike.
The DRO step is ``DROLoop.step`` (reference forward under ``torch.inference_mode``, proxy forward/backward,
per-class excess, ``ClassDRO`` update, weighted objective); the plain step is ``DROLoop.plain_step`` (proxy
forward/backward on the mean loss). The reference has the proxy's architecture (DoReMi's setting); its weights
do not affect the cost. A breakdown times the reference forward and the DRO bookkeeping alone.

    python benchmarks/bench_dro.py            # prints a table, writes benchmarks/results/bench_dro.json
    python benchmarks/bench_dro.py --quick    # fewer repeats
"""
from __future__ import annotations

import argparse
import os
import platform
import statistics
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402

from diffprune.data import ImageDataset  # noqa: E402
from diffprune.diffusion import count_parameters, create_scheduler, diffusion_loss  # noqa: E402
from diffprune.io import atomic_write_json  # noqa: E402
from diffprune.reweighting import ReweightConfig  # noqa: E402
from diffprune.reweighting.excess import per_class_excess_sums  # noqa: E402
from diffprune.reweighting.runner import DROLoop, build_proxy  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results" / "bench_dro.json"
SETTINGS = [
    # (preset, resolution, channels, batch size)
    ("ddpm-tiny", 16, 1, 64),
    ("ddpm-small", 32, 1, 32),
]


def _dataset(resolution: int, channels: int, n: int = 500, k: int = 10) -> ImageDataset:
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(n, channels, resolution, resolution), dtype=np.uint8)
    return ImageDataset(images, np.arange(n) % k, [f"c{i}" for i in range(k)], name="bench")


def _timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def bench_setting(preset: str, resolution: int, channels: int, batch: int, repeats: int, warmup: int) -> dict:
    ds = _dataset(resolution, channels)
    cfg = ReweightConfig(proxy_preset=preset, batch_size=batch, lr=1e-4, warmup_steps=0, device="cpu")
    reference = build_proxy(cfg.model_copy(update={"seed": 1}), ds)
    loop = DROLoop(cfg, ds, reference, create_scheduler(preset), torch.device("cpu"))
    for s in range(warmup):
        loop.step(s)
        loop.plain_step(s)
    dro_t, plain_t = [], []
    for r in range(repeats):
        s = warmup + r
        if r % 2 == 0:
            dro_t.append(_timed(lambda: loop.step(s)))
            plain_t.append(_timed(lambda: loop.plain_step(s)))
        else:
            plain_t.append(_timed(lambda: loop.plain_step(s)))
            dro_t.append(_timed(lambda: loop.step(s)))

    # breakdown on one batch: the reference forward and the DRO bookkeeping alone
    x0, y, t, noise = loop.batch(0)
    ref_fwd, bookkeeping = [], []
    with torch.inference_mode():
        ref_loss = diffusion_loss(loop.reference, loop.scheduler, x0, t, noise)
        proxy_loss = diffusion_loss(loop.proxy, loop.scheduler, x0, t, noise)
    for _ in range(max(3, repeats // 2)):
        def ref_step() -> None:
            with torch.inference_mode():
                diffusion_loss(loop.reference, loop.scheduler, x0, t, noise)
        ref_fwd.append(_timed(ref_step))

        def book() -> None:
            sums, counts = per_class_excess_sums(proxy_loss, ref_loss, y, ds.num_classes)
            loop.dro.update((sums / counts).numpy(), (counts > 0).numpy())
        bookkeeping.append(_timed(book))

    med = statistics.median
    pair_ratios = [d / p for d, p in zip(dro_t, plain_t)]
    return {
        "preset": preset, "resolution": resolution, "channels": channels, "batch_size": batch,
        "params": count_parameters(loop.proxy), "repeats": repeats,
        "dro_step_s": med(dro_t), "plain_step_s": med(plain_t), "ratio_of_medians": med(dro_t) / med(plain_t),
        "median_pair_ratio": med(pair_ratios), "reference_forward_s": med(ref_fwd),
        "bookkeeping_s": med(bookkeeping),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer repeats (smoke run)")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads (default 1: on a shared 2-core machine more threads are slower)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    repeats, warmup = (6, 2) if args.quick else (30, 3)
    load_before = os.getloadavg()
    rows = [bench_setting(*s, repeats=repeats, warmup=warmup) for s in SETTINGS]
    load_after = os.getloadavg()

    header = f"{'preset':<11} {'px':>3} {'B':>3} {'params':>8} {'plain s':>8} {'DRO s':>8} {'ratio':>6} " \
             f"{'pair':>6} {'ref fwd s':>9} {'book s':>8}"
    print(header)
    print("-" * len(header))
    for r in rows:
        print(f"{r['preset']:<11} {r['resolution']:>3} {r['batch_size']:>3} {r['params']:>8} "
              f"{r['plain_step_s']:>8.4f} {r['dro_step_s']:>8.4f} {r['ratio_of_medians']:>6.2f} "
              f"{r['median_pair_ratio']:>6.2f} {r['reference_forward_s']:>9.4f} {r['bookkeeping_s']:>8.5f}")
    result = {
        "benchmark": "bench_dro", "target_ratio": 1.6, "rows": rows,
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "torch": torch.__version__,
                    "threads": args.threads, "device": "cpu",
                    "load_average_before": load_before, "load_average_after": load_after,
                    "note": "shared machine: other jobs ran at the same time; ratios come from interleaved steps"},
    }
    atomic_write_json(RESULTS, result)
    print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()
