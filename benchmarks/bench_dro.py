"""Cost of one DRO step relative to one plain proxy training step (target: ratio <= 1.6).

Both go through the one trainer (``diffusion.train``): the plain step is the proxy's ``TrainConfig``
(``reweighting.proxy.proxy_train_config``) without a hook, the DRO step the same with the ``DROHook``
(``run_dro``: reference forward under ``torch.inference_mode``, per-class excess, ``ClassDRO`` update, class-weighted
loss). The time per step is (T(N2) - T(N1)) / (N2 - N1) of whole runs, so fixed costs cancel; runs alternate
(plain, DRO, DRO, plain, ...) so the load of a shared machine hits both alike. The reference has the proxy's
architecture (DoReMi's setting); its weights do not affect the cost. A breakdown times the reference forward and
the DRO bookkeeping alone. (The old loop's before/after comparison is ``bench_dro_loop.py``.)

    python benchmarks/bench_dro.py            # prints a table, writes benchmarks/results/bench_dro.json
    python benchmarks/bench_dro.py --quick    # fewer repeats

``--fashion-mnist DIR`` instead runs the whole stage on Fashion-MNIST (28 px, a random 10% of each class as the
"coreset", a reference trained on the full training set), sized for a few minutes of CPU, and records the
weights that came out under the key ``fashion_mnist`` of the same JSON file.
"""
from __future__ import annotations

import argparse
import math
import os
import platform
import statistics
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402

from diffprune.data import ImageDataset, load_dataset  # noqa: E402
from diffprune.diffusion import count_parameters, create_scheduler, diffusion_loss  # noqa: E402
from diffprune.io import atomic_write_json, read_json  # noqa: E402
from diffprune.reweighting import ReweightConfig, load_class_weights, prepare_reference, run_dro  # noqa: E402
from diffprune.reweighting.excess import per_class_excess_sums  # noqa: E402
from diffprune.reweighting.dro import ClassDRO  # noqa: E402
from diffprune.reweighting.proxy import build_proxy, proxy_train_config  # noqa: E402
from diffprune.reweighting.sampling import PairedBatches  # noqa: E402

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


def _per_step(run, n1: int, n2: int) -> float:
    return (_timed(lambda: run(n2)) - _timed(lambda: run(n1))) / (n2 - n1)


def bench_setting(preset: str, resolution: int, channels: int, batch: int, repeats: int, warmup: int) -> dict:
    import tempfile

    from diffprune.diffusion import save_model, train

    ds = _dataset(resolution, channels)
    cfg = ReweightConfig(proxy_preset=preset, batch_size=batch, lr=1e-4, warmup_steps=0, device="cpu",
                         checkpoint_every=10**6)
    reference = build_proxy(cfg.model_copy(update={"seed": 1}), ds)
    n1, n2 = warmup, warmup + repeats
    with tempfile.TemporaryDirectory() as tmp:
        save_model(Path(tmp) / "ref", reference, create_scheduler(preset))

        def plain(n: int) -> None:
            train(proxy_train_config(cfg.model_copy(update={"steps": n})), ds, Path(tmp) / f"plain-{n}",
                  progress=False)

        def dro(n: int) -> None:
            run_dro(cfg.model_copy(update={"steps": n}), ds, Path(tmp) / "ref", Path(tmp) / f"dro-{n}",
                    progress=False, resume=False)

        dro_t, plain_t = [], []
        for r in range(2):
            if r % 2 == 0:
                plain_t.append(_per_step(plain, n1, n2))
                dro_t.append(_per_step(dro, n1, n2))
            else:
                dro_t.append(_per_step(dro, n1, n2))
                plain_t.append(_per_step(plain, n1, n2))

    # breakdown on one batch: the reference forward and the DRO bookkeeping alone
    x0, y, t, noise = PairedBatches(cfg, ds, 1000, torch.device("cpu"))(0)
    proxy, dro_state = build_proxy(cfg, ds), ClassDRO(ds.num_classes)
    ref_fwd, bookkeeping = [], []
    with torch.inference_mode():
        ref_loss = diffusion_loss(reference, create_scheduler(preset), x0, t, noise)
        proxy_loss = diffusion_loss(proxy, create_scheduler(preset), x0, t, noise)
    for _ in range(max(3, repeats // 2)):
        def ref_step() -> None:
            with torch.inference_mode():
                diffusion_loss(reference, create_scheduler(preset), x0, t, noise)
        ref_fwd.append(_timed(ref_step))

        def book() -> None:
            sums, counts = per_class_excess_sums(proxy_loss, ref_loss, y, ds.num_classes)
            dro_state.update((sums / counts).numpy(), (counts > 0).numpy())
        bookkeeping.append(_timed(book))

    med = statistics.median
    pair_ratios = [d / p for d, p in zip(dro_t, plain_t)]
    return {
        "preset": preset, "resolution": resolution, "channels": channels, "batch_size": batch,
        "params": count_parameters(proxy), "repeats": repeats,
        "dro_step_s": med(dro_t), "plain_step_s": med(plain_t), "ratio_of_medians": med(dro_t) / med(plain_t),
        "median_pair_ratio": med(pair_ratios), "reference_forward_s": med(ref_fwd),
        "bookkeeping_s": med(bookkeeping),
    }


def per_class_subset(labels: np.ndarray, fraction: float, seed: int) -> np.ndarray:
    """Sorted indices of a random ``fraction`` of every class."""
    rng = np.random.default_rng(seed)
    keep = [rng.choice(np.flatnonzero(labels == c), size=round(fraction * np.sum(labels == c)), replace=False)
            for c in np.unique(labels)]
    return np.sort(np.concatenate(keep))


def fashion_mnist_run(out_dir: Path, steps: int, reference_steps: int, fraction: float = 0.1) -> dict:
    """Reference (full training set, uniform weights) + DRO on a random per-class subset; returns a record."""
    full = load_dataset("fashion-mnist", resolution=28)
    subset = full.subset(per_class_subset(full.labels, fraction, seed=0))
    cfg = ReweightConfig(proxy_preset="ddpm-tiny", steps=steps, batch_size=30, reference_steps=reference_steps,
                         seed=0, checkpoint_every=50, device="cpu")
    t0 = time.perf_counter()
    reference = prepare_reference(cfg, full, out_dir / "reference")
    t_ref = time.perf_counter() - t0
    numbers = run_dro(cfg, subset, reference, out_dir / "reweight")
    weights = load_class_weights(out_dir / "reweight" / "class_weights.json", subset.class_names)
    return {
        "data": f"fashion-mnist train, 28 px; DRO on a random {fraction:.0%} of each class ({len(subset)} images); "
                f"reference trained on all {len(full)} images with uniform weights",
        "config": cfg.model_dump(mode="json"), "reference_seconds": t_ref, "dro": numbers, "weights": weights,
        "out_dir": str(out_dir),
    }


def _update_results(key: str, value) -> None:
    data = read_json(RESULTS) if RESULTS.exists() else {"benchmark": "bench_dro"}
    data[key] = value
    atomic_write_json(RESULTS, data)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer repeats (smoke run)")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads (default 1: on a shared 2-core machine more threads are slower)")
    parser.add_argument("--fashion-mnist", type=Path, metavar="DIR", default=None,
                        help="run the DRO stage on Fashion-MNIST into DIR instead of timing steps")
    parser.add_argument("--steps", type=int, default=300, help="DRO steps (--fashion-mnist)")
    parser.add_argument("--reference-steps", type=int, default=300, help="reference steps (--fashion-mnist)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    machine = {"platform": platform.platform(), "cpus": os.cpu_count(), "torch": torch.__version__,
               "threads": args.threads, "device": "cpu"}
    if args.fashion_mnist is not None:
        load_before = os.getloadavg()
        record = fashion_mnist_run(args.fashion_mnist, args.steps, args.reference_steps)
        record["machine"] = {**machine, "load_average_before": load_before, "load_average_after": os.getloadavg()}
        print(f"{'class':<12} {'weight':>7}")
        for name, w in record["weights"].items():
            print(f"{name:<12} {w:>7.4f}")
        print(f"entropy {record['dro']['entropy']:.3f} nats (uniform {math.log(len(record['weights'])):.3f}); "
              f"reference {record['reference_seconds']:.0f} s, DRO {record['dro']['seconds']:.0f} s")
        _update_results("fashion_mnist", record)
        print(f"wrote {RESULTS}")
        return
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
    _update_results("step_cost", {
        "target_ratio": 1.6, "rows": rows,
        "machine": {**machine, "load_average_before": load_before, "load_average_after": load_after,
                    "note": "shared machine: other jobs ran at the same time; ratios come from interleaved steps"},
    })
    print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()
