"""Training throughput of diffprune's trainer next to a bare diffusers + PyTorch loop, and sampling throughput.

"ours" is the real ``diffprune.diffusion.train`` (accelerate, per-step global batch and noise streams, class
loss weights, EMA, logging, progress bar); its img/s is read from the timestamps it writes to metrics.jsonl
between step ``warmup`` and the last step, so start-up and the final checkpoint are excluded.
"bare" is the loop a user would write by hand with the same model, batch, Adam, warm-up schedule, clipping,
flips, precision and memory format, and no EMA. Both run in the same process, interleaved (order alternating
per repeat) so a shared machine's load hits both alike; the ratio is ours / bare per repeat, median over
repeats (target >= 0.95).
Sampling: DDIM-n img/s of ``sample_images`` next to diffusers' ``DDIMPipeline`` on the same model and batch.

    python benchmarks/bench_train.py                       # CPU: ddpm-small, prints a table, writes JSON
    python benchmarks/bench_train.py --preset ddpm-cifar10 --batch 128 --device cuda \\
        --modes fp32,bf16,bf16-cl-compile --sample-steps 100    # what scripts/gpu_check.sh runs

Several ``--modes`` run one subprocess each (accelerate fixes the precision once per process).
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

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402

from diffprune.data import ImageDataset  # noqa: E402
from diffprune.diffusion import (  # noqa: E402
    SampleConfig,
    TrainConfig,
    count_parameters,
    create_model,
    create_scheduler,
    sample_images,
    train,
)
from diffprune.io import atomic_write_json  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results" / "bench_train.json"
MODES = {  # name: (mixed_precision, channels_last, compile)
    "fp32": ("no", False, False),
    "fp32-cl": ("no", True, False),
    "fp32-compile": ("no", False, True),
    "bf16": ("bf16", False, False),
    "bf16-cl-compile": ("bf16", True, True),
    "fp16": ("fp16", False, False),
}


def _dataset(resolution: int, channels: int, n: int = 1024, k: int = 10) -> ImageDataset:
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(n, channels, resolution, resolution), dtype=np.uint8)
    return ImageDataset(images, np.arange(n) % k, [f"c{i}" for i in range(k)], name="bench")


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def bare_loop(args, ds: ImageDataset, device: torch.device, mode: str) -> float:
    """img/s of a hand-written diffusers + PyTorch loop (no EMA, no weighting, no logging)."""
    precision, channels_last, compile_ = MODES[mode]
    torch.manual_seed(0)
    model = create_model(args.preset, sample_size=ds.resolution, in_channels=ds.channels,
                         out_channels=ds.channels).to(device)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    fwd = torch.compile(model) if compile_ else model
    scheduler = create_scheduler(args.preset)
    opt = torch.optim.Adam(model.parameters(), lr=2e-4, fused=True)  # the trainer's optimizer
    lr_sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(s / 100, 1.0))
    images = torch.from_numpy(ds.images).to(device)
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision)
    scaler = torch.amp.GradScaler(device.type, enabled=precision == "fp16")
    b = args.batch
    t0 = 0.0
    for step in range(args.warmup + args.steps):
        if step == args.warmup:
            _sync(device)
            t0 = time.perf_counter()
        x0 = images[torch.randint(0, len(images), (b,), device=device)].float() / 127.5 - 1
        x0 = torch.where(torch.rand(b, 1, 1, 1, device=device) < 0.5, x0.flip(3), x0)
        if channels_last:
            x0 = x0.contiguous(memory_format=torch.channels_last)
        noise = torch.randn_like(x0)
        t = torch.randint(0, 1000, (b,), device=device)
        with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
            pred = fwd(scheduler.add_noise(x0, noise, t), t).sample
        loss = torch.nn.functional.mse_loss(pred.float(), noise)
        scaler.scale(loss).backward()
        scaler.unscale_(opt)
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        scaler.step(opt)
        scaler.update()
        lr_sched.step()
        opt.zero_grad(set_to_none=True)
    _sync(device)
    return b * args.steps / (time.perf_counter() - t0)


def ours(args, ds: ImageDataset, mode: str, out: Path) -> float:
    """img/s of diffprune's trainer, from its own metrics.jsonl timestamps after the warm-up steps."""
    precision, channels_last, compile_ = MODES[mode]
    weights = {c: 1 / ds.num_classes for c in ds.class_names}  # exercises the loss-weighting path
    cfg = TrainConfig(preset=args.preset, steps=args.warmup + args.steps, batch_size=args.batch, lr=2e-4,
                      warmup_steps=100, ema_decay=0.9999, hflip=True, mixed_precision=precision,
                      channels_last=channels_last, compile=compile_, log_every=args.warmup, checkpoint_every=0,
                      seed=0)
    train(cfg, ds, out, class_weights=weights, progress=False)
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    at = {r["step"]: r["seconds"] for r in rows}
    last = args.warmup + args.steps
    return args.batch * args.steps / (at[last] - at[args.warmup])


def bench_training(args, mode: str) -> dict:
    device = torch.device(args.device)
    ds = _dataset(args.resolution, args.channels)
    bare_ips, ours_ips = [], []
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.repeats):
            order = ("bare", "ours") if r % 2 == 0 else ("ours", "bare")
            for which in order:
                if which == "bare":
                    bare_ips.append(bare_loop(args, ds, device, mode))
                else:
                    ours_ips.append(ours(args, ds, mode, Path(tmp) / f"run{r}"))
    ratios = [o / b for o, b in zip(ours_ips, bare_ips)]
    return {"mode": mode, "bare_img_per_s": bare_ips, "ours_img_per_s": ours_ips,
            "bare_median": statistics.median(bare_ips), "ours_median": statistics.median(ours_ips),
            "ratio_per_repeat": ratios, "ratio_median": statistics.median(ratios)}


def bench_components(args) -> dict:
    """Milliseconds per call of the two hand-rolled choices in the trainer, next to the stock alternative:
    EMA update (cached foreach lerp vs torch's AveragedModel) and Adam step (fused vs torch's default)."""
    from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

    from diffprune.diffusion.ema import EMA

    device = torch.device(args.device)
    model = create_model(args.preset, sample_size=args.resolution, in_channels=args.channels,
                         out_channels=args.channels).to(device)
    for p_ in model.parameters():
        p_.grad = torch.randn_like(p_) * 1e-3

    def per_call(fn, n=20) -> float:
        fn()
        _sync(device)
        t0 = time.perf_counter()
        for _ in range(n):
            fn()
        _sync(device)
        return (time.perf_counter() - t0) / n * 1e3

    ours_ema = EMA(model, 0.9999)
    stock_ema = AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(0.9999), use_buffers=True)
    opts = {k: torch.optim.Adam(model.parameters(), lr=1e-9, fused=k == "fused") for k in ("default", "fused")}
    rows = {"ema_ms": {"ours_cached_foreach": [], "torch_AveragedModel": []},
            "adam_ms": {"fused": [], "default": []}}
    for _ in range(args.repeats):  # interleaved
        rows["ema_ms"]["ours_cached_foreach"].append(per_call(ours_ema.update))
        rows["ema_ms"]["torch_AveragedModel"].append(per_call(lambda: stock_ema.update_parameters(model)))
        rows["adam_ms"]["fused"].append(per_call(opts["fused"].step))
        rows["adam_ms"]["default"].append(per_call(opts["default"].step))
    return {k: {name: statistics.median(v) for name, v in d.items()} | {"raw": d} for k, d in rows.items()}


@torch.no_grad()
def bench_sampling(args) -> dict:
    from diffusers import DDIMPipeline, DDIMScheduler

    device = torch.device(args.device)
    torch.manual_seed(0)
    model = create_model(args.preset, sample_size=args.resolution, in_channels=args.channels,
                         out_channels=args.channels).to(device).eval()
    scheduler = create_scheduler(args.preset)
    cfg = SampleConfig(num_samples=args.sample_n, batch_size=args.sample_n, steps=args.sample_steps, seed=0,
                       mixed_precision="bf16" if args.sample_bf16 else "no")
    pipe = DDIMPipeline(unet=model, scheduler=DDIMScheduler.from_config(scheduler.config))
    pipe.set_progress_bar_config(disable=True)
    ours_ips, pipe_ips = [], []
    warm = cfg.model_copy(update={"num_samples": min(4, args.sample_n), "steps": 2})
    sample_images(model, scheduler, warm, progress=False, device=device)
    for _ in range(args.repeats):
        _sync(device)
        t0 = time.perf_counter()
        sample_images(model, scheduler, cfg, progress=False, device=device)
        _sync(device)
        ours_ips.append(args.sample_n / (time.perf_counter() - t0))
        t0 = time.perf_counter()
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=args.sample_bf16):
            pipe(batch_size=args.sample_n, num_inference_steps=args.sample_steps,
                 generator=torch.Generator().manual_seed(0), output_type="np")
        _sync(device)
        pipe_ips.append(args.sample_n / (time.perf_counter() - t0))
    return {"sampler": f"ddim-{args.sample_steps}", "num_samples": args.sample_n,
            "dtype": "bf16" if args.sample_bf16 else "fp32",
            "ours_img_per_s": ours_ips, "diffusers_pipeline_img_per_s": pipe_ips,
            "ours_median": statistics.median(ours_ips), "pipeline_median": statistics.median(pipe_ips)}


def environment(args) -> dict:
    device = torch.device(args.device)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else (platform.processor() or "cpu")
    return {"device": str(device), "device_name": name, "cpu_count": os.cpu_count(),
            "torch_threads": torch.get_num_threads(), "torch": torch.__version__,
            "python": platform.python_version(), "load_average": list(os.getloadavg()),
            "note": "shared machine: absolute img/s vary with load; ratios are measured in the same process"}


def print_table(result: dict) -> None:
    env, cfg = result["environment"], result["config"]
    print(f"\ndevice: {env['device_name']} ({env['device']}), torch {env['torch']}, threads {env['torch_threads']}, "
          f"load {env['load_average'][0]:.1f}")
    print(f"preset {cfg['preset']} ({result['params'] / 1e6:.2f}M params), batch {cfg['batch']}, "
          f"{cfg['channels']}x{cfg['resolution']}px, {cfg['steps']} timed steps after {cfg['warmup']}, "
          f"{cfg['repeats']} repeat(s)")
    print(f"{'mode':<18}{'bare img/s':>12}{'ours img/s':>12}{'ours/bare':>11}")
    for r in result["training"]:
        print(f"{r['mode']:<18}{r['bare_median']:>12.1f}{r['ours_median']:>12.1f}{r['ratio_median']:>11.3f}")
    c = result.get("components")
    if c:
        e, a = c["ema_ms"], c["adam_ms"]
        print(f"{'EMA update ms':<18}{'AveragedModel':>14}{e['torch_AveragedModel']:>8.2f}"
              f"  ours {e['ours_cached_foreach']:.2f}")
        print(f"{'Adam step ms':<18}{'default':>14}{a['default']:>8.2f}  fused {a['fused']:.2f}")
    s = result.get("sampling")
    if s:
        print(f"{'sampling ' + s['sampler']:<18}{'pipeline':>12}{'ours':>12}{'ours/pipe':>11}")
        print(f"{s['dtype'] + ' img/s':<18}{s['pipeline_median']:>12.2f}{s['ours_median']:>12.2f}"
              f"{s['ours_median'] / s['pipeline_median']:>11.3f}")


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--preset", default="ddpm-small")
    p.add_argument("--resolution", type=int, default=32)
    p.add_argument("--channels", type=int, default=3)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--steps", type=int, default=20, help="timed optimizer steps per run")
    p.add_argument("--warmup", type=int, default=5, help="untimed steps first (also ours' log interval)")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--modes", default="fp32", help=f"comma-separated, of {sorted(MODES)}")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--threads", type=int, default=0, help="torch intra-op threads (0: torch's default)")
    p.add_argument("--sample-steps", type=int, default=50)
    p.add_argument("--sample-n", type=int, default=16)
    p.add_argument("--sample-bf16", action="store_true", help="sample under bf16 autocast")
    p.add_argument("--no-sampling", action="store_true")
    p.add_argument("--sampling-only", action="store_true")
    p.add_argument("--out", type=Path, default=RESULTS)
    p.add_argument("--part", type=Path, help=argparse.SUPPRESS)  # internal: one mode's result for the parent
    args = p.parse_args(argv)
    if args.steps % args.warmup:
        p.error("--steps must be a multiple of --warmup (ours logs every --warmup steps)")
    if args.threads:
        torch.set_num_threads(args.threads)
    modes = [m for m in args.modes.split(",") if m]
    unknown = sorted(set(modes) - set(MODES))
    if unknown:
        p.error(f"unknown mode(s) {unknown}; choose from {sorted(MODES)}")

    if args.part:  # child process: one training mode
        atomic_write_json(args.part, bench_training(args, modes[0]))
        return {}
    training = []
    if not args.sampling_only:
        if len(modes) == 1:
            training.append(bench_training(args, modes[0]))
        else:
            raw = [a for a in (argv if argv is not None else sys.argv[1:])]
            for mode in modes:
                with tempfile.TemporaryDirectory() as tmp:
                    part = Path(tmp) / "part.json"
                    cmd = [sys.executable, __file__, *raw, "--modes", mode, "--part", str(part)]
                    proc = subprocess.run(cmd, capture_output=True, text=True)
                    if proc.returncode != 0:
                        print(f"mode {mode} failed:\n{proc.stderr[-3000:]}", file=sys.stderr)
                        training.append({"mode": mode, "error": proc.stderr[-3000:], "bare_median": float("nan"),
                                         "ours_median": float("nan"), "ratio_median": float("nan")})
                        continue
                    training.append(json.loads(part.read_text()))
                r = training[-1]
                print(f"[{mode}] bare {r['bare_median']:.1f} img/s, ours {r['ours_median']:.1f} img/s, "
                      f"ratio {r['ratio_median']:.3f}", flush=True)
    result = {
        "benchmark": "bench_train",
        "environment": environment(args),
        "config": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items() if k != "part"},
        "params": count_parameters(create_model(args.preset, sample_size=args.resolution, in_channels=args.channels,
                                                 out_channels=args.channels)),
        "training": training,
        "components": None if args.sampling_only else bench_components(args),
        "sampling": None if args.no_sampling else bench_sampling(args),
    }
    atomic_write_json(args.out, result)
    print_table(result)
    print(f"\nwritten: {args.out}")
    return result


if __name__ == "__main__":
    main()
