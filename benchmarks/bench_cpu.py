"""Training on a CPU against the CPU's measured peak (a roofline table), and under contention.

    python benchmarks/bench_cpu.py roofline      # img/s and achieved GFLOP/s of each preset, per setting
    python benchmarks/bench_cpu.py contention    # solo vs beside one busy process, per OpenMP wait policy

roofline: for each preset (at the batch and size its configs use) and each setting (threads, channels_last,
torch.compile), diffprune's trainer is timed by ``bench_train.py`` (its img/s from the trainer's own metrics
lines, start-up excluded; the bare diffusers loop beside it) in a fresh process, so OpenMP settings apply.
Training FLOPs per image (forward + backward, counted by FlopCounterMode) times img/s gives the achieved
GFLOP/s, shown against the peak of a 2048^3 fp32 matrix product measured with the same thread count.
contention: the same short training run alone and next to one CPU-bound competitor process (a single-thread
matrix-product loop), with OpenMP's default wait policy and with ``OMP_WAIT_POLICY=PASSIVE``
(what ``import diffprune`` sets); each pair is measured back to back, repeated, medians reported.
Results: printed tables and benchmarks/results/bench_cpu_<what>.json.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
# preset: resolution, channels, batch. The small presets at their configs' shapes; the CIFAR-10 UNet at batch 8
# (its config's 128 takes minutes per step on 2 cores). DiT presets train on latents, which bench_train.py's
# pixel datasets cannot stand in for: bench_dit.py measures them.
PRESETS = {"ddpm-tiny": (16, 1, 32), "ddpm-small": (32, 3, 32), "ddpm-cifar10": (32, 3, 8)}
SETTINGS = {  # name: (threads, bench_train mode)
    "1 thread": (1, "fp32"), "2 threads": (2, "fp32"), "1 thread, channels_last": (1, "fp32-cl"),
    "1 thread, compile": (1, "fp32-compile"), "2 threads, compile": (2, "fp32-compile"),
}
PEAK_CODE = """
import time, torch
torch.set_num_threads({threads}); a, b = torch.randn(2048, 2048), torch.randn(2048, 2048)
for _ in range(2): a @ b
t = time.perf_counter(); n = 8
for _ in range(n): a @ b
print(2 * 2048**3 * n / (time.perf_counter() - t) / 1e9)
"""
COMPETITOR = "import torch; torch.set_num_threads(1); a = torch.randn(512, 512)\nwhile True: a @ a"


def _env(threads: int, policy: str | None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "OMP_NUM_THREADS")}
    env.update(OMP_NUM_THREADS=str(threads), HF_HUB_OFFLINE="1", PYTHONPATH=str(HERE.parent / "src"))
    if policy:
        env["OMP_WAIT_POLICY"] = policy
    return env


def peak_gflops(threads: int) -> float:
    out = subprocess.run([sys.executable, "-c", PEAK_CODE.format(threads=threads)], env=_env(threads, None),
                         capture_output=True, text=True, check=True)
    return float(out.stdout.strip())


def train_flops_per_image(preset: str) -> float:
    code = ("import torch; from diffprune.diffusion import create_model, create_scheduler; "
            "from diffprune.evaluation.flops import diffusion_flops_per_image; "
            f"r, c, b = {PRESETS[preset]}; m = create_model({preset!r}, sample_size=r, in_channels=c, out_channels=c); "
            f"print(diffusion_flops_per_image(m, create_scheduler({preset!r}), torch.zeros(2, c, r, r)))")
    out = subprocess.run([sys.executable, "-c", code], env=_env(1, None), capture_output=True, text=True, check=True)
    return float(out.stdout.strip().splitlines()[-1])


def trainer_img_per_s(preset: str, threads: int, mode: str, steps: int, policy: str | None = "PASSIVE") -> dict:
    """diffprune's trainer and the bare loop, one bench_train.py process (``threads``, ``policy``)."""
    resolution, channels, batch = PRESETS[preset]
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "r.json"
        warmup = max(1, steps // 2)
        cmd = [sys.executable, str(HERE / "bench_train.py"), "--preset", preset, "--resolution", str(resolution),
               "--channels", str(channels), "--batch", str(batch), "--steps", str(steps), "--warmup", str(warmup),
               "--repeats", "1", "--modes", mode, "--device", "cpu", "--threads", str(threads), "--no-sampling",
               "--out", str(out)]
        t0 = time.perf_counter()
        proc = subprocess.run(cmd, env=_env(threads, policy), capture_output=True, text=True)
        if proc.returncode != 0:
            return {"error": proc.stderr[-1500:]}
        row = json.loads(out.read_text())["training"][0]
        return {"ours": row["ours_median"], "bare": row["bare_median"], "process_seconds": time.perf_counter() - t0}


def roofline(args) -> dict:
    peaks = {t: statistics.median(peak_gflops(t) for _ in range(3)) for t in (1, 2)}
    rows = []
    for preset in args.presets.split(","):
        flops = train_flops_per_image(preset)
        for name in args.settings.split(";"):
            threads, mode = SETTINGS[name]
            r = trainer_img_per_s(preset, threads, mode, args.steps)
            row = {"preset": preset, "shape": PRESETS[preset], "setting": name, "train_gflop_per_image": flops / 1e9,
                   "peak_gflops": peaks[threads], **r}
            if "ours" in r:
                row["achieved_gflops"] = r["ours"] * flops / 1e9
                row["share_of_peak"] = row["achieved_gflops"] / peaks[threads]
            rows.append(row)
            print(_roofline_line(row), flush=True)
    return {"peak_gflops_fp32_2048": peaks, "rows": rows}


def _roofline_line(row: dict) -> str:
    if "ours" not in row:
        return f"{row['preset']:<13} {row['setting']:<26} failed: {row['error'].splitlines()[-1]}"
    return (f"{row['preset']:<13} {row['setting']:<26} ours {row['ours']:8.1f} img/s  bare {row['bare']:8.1f}  "
            f"{row['achieved_gflops']:6.1f} GFLOP/s = {100 * row['share_of_peak']:4.1f}% of {row['peak_gflops']:.0f}")


def contention(args) -> dict:
    """Trainer img/s alone and beside one competitor, per wait policy and thread count; ``repeats`` pairs."""
    rows = []
    for policy in ("default", "PASSIVE"):
        for threads in (2, 1):
            solo, shared = [], []
            for _ in range(args.repeats):
                solo.append(trainer_img_per_s("ddpm-tiny", threads, "fp32", args.steps, _policy(policy))["ours"])
                rival = subprocess.Popen([sys.executable, "-c", COMPETITOR], env=_env(1, None))
                try:
                    time.sleep(2)  # the competitor is busy before the run starts
                    shared.append(trainer_img_per_s("ddpm-tiny", threads, "fp32", args.steps, _policy(policy))["ours"])
                finally:
                    rival.kill()
                    rival.wait()
            row = {"policy": policy, "threads": threads, "solo": solo, "contended": shared,
                   "solo_median": statistics.median(solo), "contended_median": statistics.median(shared)}
            row["kept"] = row["contended_median"] / row["solo_median"]
            rows.append(row)
            print(f"OMP_WAIT_POLICY={policy:<8} {threads} thread(s): solo {row['solo_median']:7.1f} img/s, beside a busy "
                  f"process {row['contended_median']:7.1f} img/s: kept {100 * row['kept']:.0f}%", flush=True)
    return {"preset": "ddpm-tiny", "shape": PRESETS["ddpm-tiny"], "steps": args.steps, "rows": rows}


def _policy(name: str) -> str | None:
    return None if name == "default" else name


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("what", choices=["roofline", "contention"])
    p.add_argument("--presets", default="ddpm-tiny,ddpm-small,ddpm-cifar10")
    p.add_argument("--settings", default=";".join(SETTINGS), help="';'-separated, of " + "; ".join(SETTINGS))
    p.add_argument("--steps", type=int, default=8, help="timed steps per run (after as many warm-up steps / 2)")
    p.add_argument("--repeats", type=int, default=3, help="contention: solo/contended pairs per setting")
    p.add_argument("--out", type=Path)
    args = p.parse_args()
    t0 = time.time()
    result = roofline(args) if args.what == "roofline" else contention(args)
    result.update(command=" ".join(sys.argv), started=time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(t0)),
                  wall_seconds=time.time() - t0, cpus=os.cpu_count(), load_average_after=list(os.getloadavg()))
    out = args.out or RESULTS / f"bench_cpu_{args.what}.json"
    out.write_text(json.dumps(result, indent=1))
    print(f"written: {out}")


if __name__ == "__main__":
    main()
