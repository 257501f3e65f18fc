"""Signal-to-null ratio of the DRO excess-loss estimators (which default carries class signal, not noise).

Three ddpm-tiny models are trained on scikit-learn's digits (16 px, grayscale) with the same recipe:
    A  seed 0, classes uniform                                  (the reference)
    B  seed 1, classes uniform                                  (null pair B vs A: true excess zero)
    C  seed 2, classes DEPRIVED resampled with probability 0.02 (real pair C vs A: true excess on DEPRIVED)
On the same paired class-balanced batches (same x0, t, noise for both models of a pair) every estimator of
``reweighting.excess`` gives per-class excess scores. For each estimator and pair:
    spread     std over classes of the per-class excess (averaged over all batches)
    contrast   mean excess of the deprived classes minus that of the others
    snr        contrast on the real pair / spread on the null pair (how many null spreads the signal is)
    spread_ratio  spread(real) / spread(null)
    dro_max_dev   max_k |a_k - 1/K| of ClassDRO's averaged weights driven by that pair's per-batch excess
                  (DoReMi's eta 1, smoothing 1e-3, one update per batch)
    dro_deprived  the averaged DRO weight of the deprived classes (uniform: 3 / 10)

    python benchmarks/bench_dro_null.py            # prints a table, writes benchmarks/results/bench_dro_null.json
    python benchmarks/bench_dro_null.py --quick    # fewer training steps and batches (a smoke run)
    python benchmarks/bench_dro_null.py --models DIR   # keep the three trained models in DIR (reused if there)
"""
from __future__ import annotations

import argparse
import os
import platform
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402

from diffprune.data import load_dataset  # noqa: E402
from diffprune.diffusion import TrainConfig, diffusion_loss, load_model, train  # noqa: E402
from diffprune.diffusion.batches import to_model_input  # noqa: E402
from diffprune.io import atomic_write_json, read_json  # noqa: E402
from diffprune.reweighting import ClassDRO, ReweightConfig, load_class_weights, prepare_reference, run_dro  # noqa: E402
from diffprune.reweighting.excess import ESTIMATORS, TimestepNormaliser, per_class_excess_sums  # noqa: E402
from diffprune.reweighting.sampling import ClassBalancedBatches, step_seed  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results" / "bench_dro_null.json"
DEPRIVED = (0, 1, 2)


def train_model(data, out: Path, seed: int, steps: int, weights: dict[str, float] | None) -> Path:
    state = out / "state" / "trainer_state.json"
    if state.is_file() and read_json(state)["step"] == steps:
        return out / "model"  # trained by an earlier call with --models (folder keyed by steps; seeds fixed)
    cfg = TrainConfig(preset="ddpm-tiny", steps=steps, batch_size=64, seed=seed, ema_warmup=True,
                      checkpoint_every=0, log_every=50, weighting="resample")
    train(cfg, data, out, class_weights=weights, progress=False, resume=True)
    return out / "model"


def paired_excess(ref, other, scheduler, data, batches: int, batch_size: int, seed: int) -> dict[str, np.ndarray]:
    """float64 S x K per-batch excess per estimator (NaN where a class is absent), same batches for all."""
    k = data.num_classes
    sampler = ClassBalancedBatches(data.labels, k, batch_size, seed)
    images, labels = torch.from_numpy(data.images), torch.from_numpy(data.labels)
    t_max = int(scheduler.config.num_train_timesteps)
    out = {e: np.full((batches, k), np.nan) for e in ESTIMATORS}
    normaliser = TimestepNormaliser()  # one per pair, across its batches, as in a DRO run
    with torch.inference_mode():
        for s in range(batches):
            idx = torch.from_numpy(sampler.indices_at(s))
            x0, y = to_model_input(images[idx]), labels[idx]
            g = torch.Generator().manual_seed(step_seed(seed, s))
            t = torch.randint(0, t_max, (len(idx),), generator=g)
            noise = torch.randn(x0.shape, generator=g)
            l_ref = diffusion_loss(ref, scheduler, x0, t, noise)
            l_other = diffusion_loss(other, scheduler, x0, t, noise)
            for e in ESTIMATORS:
                sums, counts = per_class_excess_sums(l_other, l_ref, y, k, e, timesteps=t, num_timesteps=t_max,
                                                     normaliser=normaliser if e == "timestep" else None)
                sums, counts = sums.numpy(), counts.numpy()
                out[e][s] = np.divide(sums, counts, out=np.full(k, np.nan), where=counts > 0)
    return out


def handicap(root: Path, classes=(0, 7)) -> dict:
    """The DRO itself, proxy trained from scratch: a reference trained on one digit class only (8 px, 150 steps)
    against a proxy on all ten (40 DRO steps of 20), as tests/test_reweighting.py's handicap test; the
    handicapped class should get the largest weight."""
    digits = load_dataset("digits", resolution=8)
    tiny = dict(proxy_preset="ddpm-tiny", batch_size=20, lr=1e-3, warmup_steps=0, device="cpu")
    out = {}
    for cls in classes:
        subset = digits.subset(np.flatnonzero(digits.labels == cls))
        ref_cfg = ReweightConfig(**{**tiny, "reference_steps": 150, "batch_size": 32, "seed": cls})
        ref = prepare_reference(ref_cfg, subset, root / f"handicap-ref{cls}", progress=False)
        for e in ESTIMATORS:
            cfg = ReweightConfig(**{**tiny, "steps": 40, "seed": 0, "estimator": e})
            run_dro(cfg, digits, ref, root / f"handicap-{cls}-{e}", progress=False, resume=False)
            a = np.array(list(load_class_weights(root / f"handicap-{cls}-{e}" / "class_weights.json").values()))
            out.setdefault(e, {})[str(cls)] = {"weight": float(a[cls]), "argmax": int(a.argmax()),
                                               "max": float(a.max())}
    return out


def dro_weights(excess: np.ndarray) -> np.ndarray:
    dro = ClassDRO(excess.shape[1])
    for row in excess:
        present = np.isfinite(row)
        dro.update(np.where(present, row, 0.0), present)
    return dro.average


def summarise(per_batch: np.ndarray) -> dict[str, float]:
    mean = np.nanmean(per_batch, axis=0)
    mask = np.zeros(len(mean), dtype=bool)
    mask[list(DEPRIVED)] = True
    a = dro_weights(per_batch)
    return {
        "mean": float(mean.mean()), "spread": float(mean.std()),
        "contrast": float(mean[mask].mean() - mean[~mask].mean()),
        "per_class": mean.tolist(), "dro_weights": a.tolist(),
        "dro_max_dev": float(np.abs(a - 1 / len(a)).max()), "dro_deprived": float(a[mask].sum()),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--steps", type=int, default=600, help="training steps of each model")
    ap.add_argument("--batches", type=int, default=100, help="paired class-balanced batches")
    ap.add_argument("--batch-size", type=int, default=100)
    ap.add_argument("--models", type=Path, default=None, help="keep (and reuse) the trained models here")
    args = ap.parse_args()
    if args.quick:
        args.steps, args.batches = 60, 10
    torch.set_num_threads(1)  # on a shared CPU, 2 threads oversubscribe (see docs/benchmarks.md)
    torch.manual_seed(0)
    data = load_dataset("digits", resolution=16, resize="resize", channels=1)
    k = data.num_classes
    starved = {n: (0.02 if i in DEPRIVED else (1 - 0.02 * len(DEPRIVED)) / (k - len(DEPRIVED)))
               for i, n in enumerate(data.class_names)}
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        root = args.models / f"steps{args.steps}" if args.models else Path(tmp)
        paths = {"A": train_model(data, root / "A", 0, args.steps, None),
                 "B": train_model(data, root / "B", 1, args.steps, None),
                 "C": train_model(data, root / "C", 2, args.steps, starved)}
        train_seconds = time.perf_counter() - t0
        (ref, scheduler), (null, _), (real, _) = (load_model(str(paths[m])) for m in "ABC")
        null_x = paired_excess(ref, null, scheduler, data, args.batches, args.batch_size, seed=7)
        real_x = paired_excess(ref, real, scheduler, data, args.batches, args.batch_size, seed=7)
        hand = handicap(Path(tmp))

    rows = {}
    for e in ESTIMATORS:
        n, r = summarise(null_x[e]), summarise(real_x[e])
        rows[e] = {"null": n, "real": r, "snr": r["contrast"] / max(n["spread"], 1e-300),
                   "spread_ratio": r["spread"] / max(n["spread"], 1e-300)}
    best = max(rows, key=lambda e: rows[e]["snr"])

    print(f"digits 16 px, ddpm-tiny, {args.steps} steps each, {args.batches} paired batches of {args.batch_size}; "
          f"deprived classes {DEPRIVED} (p = 0.02 each)")
    print(f"{'estimator':<10} {'null mean':>10} {'null spread':>12} {'real contrast':>14} {'snr':>7} "
          f"{'spread ratio':>13} {'DRO dev null':>13} {'DRO dev real':>13} {'DRO deprived':>13}")
    for e, row in rows.items():
        n, r = row["null"], row["real"]
        print(f"{e:<10} {n['mean']:>10.4g} {n['spread']:>12.4g} {r['contrast']:>14.4g} {row['snr']:>7.2f} "
              f"{row['spread_ratio']:>13.2f} {n['dro_max_dev']:>13.4f} {r['dro_max_dev']:>13.4f} "
              f"{r['dro_deprived']:>13.4f}")
    print(f"best signal-to-null ratio: {best}")
    print("handicap (DRO from scratch; reference trained on one class): weight of that class, argmax")
    for e, row in hand.items():
        print(f"  {e:<10} " + "  ".join(f"class {c}: {v['weight']:.3f} (argmax {v['argmax']})" for c, v in row.items()))
    result = {
        "machine": platform.platform(), "torch": torch.__version__, "threads": torch.get_num_threads(),
        "steps": args.steps, "batches": args.batches, "batch_size": args.batch_size, "deprived": list(DEPRIVED),
        "train_seconds": train_seconds, "seconds": time.perf_counter() - t0, "estimators": rows, "best": best, "handicap": hand,
        "quick": args.quick,
    }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_json(RESULTS, result)
    print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()
