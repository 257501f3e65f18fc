"""Time per DRO step, before (the reweight stage's own loop) vs after (``diffusion.train`` with a ``DROHook``).

Both sides run the public ``run_dro`` on the same data, reference and config (CPU, one thread, checkpoint only at
the end) for N1 and N2 steps in fresh folders; the time per step is (T(N2) - T(N1)) / (N2 - N1), so the fixed
costs (loading, the Accelerator, the final checkpoint, the output files) cancel and what remains is the loop:
batch, reference forward, proxy forward/backward, excess statistics, ``ClassDRO`` update, optimizer step (and,
after, the trainer's EMA update and per-step metrics line). "before" runs the source tree of git revision
``--before`` (default: the last commit with the old loop), extracted with ``git archive``; "after" runs this
checkout. Workers alternate before/after so the load of a shared machine hits both alike.

    python benchmarks/bench_dro_loop.py             # prints a table, writes benchmarks/results/bench_dro_loop.json
    python benchmarks/bench_dro_loop.py --quick     # one pair of workers, fewer steps
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results" / "bench_dro_loop.json"
BEFORE_REV = "6f0a6e7"  # the last commit whose reweighting/runner.py ran its own DRO loop
SETTING = {"preset": "ddpm-tiny", "resolution": 8, "channels": 1, "batch_size": 32, "classes": 10, "n": 500}


def worker(steps: list[int], out: Path) -> dict:
    """In this process (PYTHONPATH picks the source tree): run_dro for each step count; seconds per count."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import numpy as np
    import torch

    from diffprune.data import ImageDataset
    from diffprune.diffusion import create_model, create_scheduler, save_model
    from diffprune.reweighting import ReweightConfig, run_dro

    torch.set_num_threads(1)
    s = SETTING
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(s["n"], s["channels"], s["resolution"], s["resolution"]), dtype=np.uint8)
    ds = ImageDataset(images, np.arange(s["n"]) % s["classes"], [f"c{i}" for i in range(s["classes"])], name="bench")
    torch.manual_seed(1)
    reference = create_model(s["preset"], sample_size=s["resolution"], in_channels=s["channels"],
                             out_channels=s["channels"])
    save_model(out / "ref", reference, create_scheduler(s["preset"]))
    times = {}
    for n in steps:
        cfg = ReweightConfig(proxy_preset=s["preset"], batch_size=s["batch_size"], lr=1e-4, warmup_steps=0,
                             steps=n, checkpoint_every=10**6, device="cpu")
        t0 = time.perf_counter()
        run_dro(cfg, ds, out / "ref", out / f"dro-{n}", progress=False, resume=False)
        times[n] = time.perf_counter() - t0
    return times


def _extract(rev: str, dest: Path) -> Path:
    archive = subprocess.run(["git", "-C", str(ROOT), "archive", rev, "src"], check=True, capture_output=True).stdout
    subprocess.run(["tar", "-x", "-C", str(dest)], input=archive, check=True)
    return dest / "src"


def _spawn(src: Path, steps: list[int], out: Path) -> dict:
    env = dict(os.environ, PYTHONPATH=str(src), OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1")
    proc = subprocess.run([sys.executable, __file__, "--worker", str(out), *map(str, steps)], env=env,
                          capture_output=True, text=True, timeout=3600)
    if proc.returncode:
        raise SystemExit(f"worker failed ({src}):\n{proc.stderr[-3000:]}")
    return {int(k): v for k, v in json.loads(proc.stdout.strip().splitlines()[-1]).items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="one pair of workers, fewer steps")
    parser.add_argument("--before", default=BEFORE_REV, help=f"git revision of the old loop (default {BEFORE_REV})")
    parser.add_argument("--pairs", type=int, default=3, help="before/after worker pairs (medians are reported)")
    parser.add_argument("--worker", type=Path, default=None, help=argparse.SUPPRESS)
    parser.add_argument("steps", nargs="*", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker is not None:
        print(json.dumps(worker(args.steps, args.worker)))
        return
    n1, n2 = (3, 11) if args.quick else (4, 24)
    pairs = 1 if args.quick else args.pairs
    per_step: dict[str, list[float]] = {"before": [], "after": []}
    totals: dict[str, list[float]] = {"before": [], "after": []}
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory() as tmp:
        sources = {"before": _extract(args.before, Path(tmp)), "after": ROOT / "src"}
        for p in range(pairs):
            for side in (("before", "after") if p % 2 == 0 else ("after", "before")):
                with tempfile.TemporaryDirectory() as out:
                    t = _spawn(sources[side], [n1, n2], Path(out))
                per_step[side].append((t[n2] - t[n1]) / (n2 - n1))
                totals[side].append(t[n2])
    med = statistics.median
    rows = [{"loop": side, "per_step_s": med(per_step[side]), "per_step_runs_s": per_step[side],
             f"run_dro_{n2}_steps_s": med(totals[side])} for side in ("before", "after")]
    ratio = rows[1]["per_step_s"] / rows[0]["per_step_s"]
    print(f"{'loop':<8} {'s/step':>8} {'run_dro ' + str(n2) + ' steps s':>20}")
    for r in rows:
        print(f"{r['loop']:<8} {r['per_step_s']:>8.4f} {r[f'run_dro_{n2}_steps_s']:>20.2f}")
    print(f"after / before per step: {ratio:.3f}")
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    sys.path.insert(0, str(ROOT / "src"))
    from diffprune.io import atomic_write_json

    atomic_write_json(RESULTS, {
        "benchmark": "bench_dro_loop", "setting": SETTING, "steps": [n1, n2], "pairs": pairs, "before_rev": args.before,
        "rows": rows, "after_over_before": ratio,
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "threads": 1, "device": "cpu",
                    "load_average_before": load_before, "load_average_after": os.getloadavg(),
                    "note": "shared machine: other jobs ran at the same time; workers alternate before/after"},
    })
    print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()
