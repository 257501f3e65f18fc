"""The parts of the bare-GPU check (scripts/gpu_check.sh --offline) that bench_train.py and bench_dit.py lack.

    python benchmarks/gpu_offline.py syncs --out OUT/syncs.json            # host syncs in the trainer's step
    python benchmarks/gpu_offline.py breakdown --out OUT/breakdown.json    # where a training step's time goes
    python benchmarks/gpu_offline.py short-run --data fm.npz --out OUT     # train, then 1,000 samples (npz)

``syncs`` runs diffprune's own step functions (``trainer._global_batch`` and ``trainer._micro_step``) under
``torch.cuda.set_sync_debug_mode("warn")`` and counts the synchronising calls per step (0 is the goal); on a CPU
(``--dry-run``) it counts the Python-level ones instead (``.item()``, ``.tolist()``, ``bool(tensor)``, ...).
``breakdown`` times the phases of one step of the same model with CUDA events: batch draw, forward, backward,
optimizer (clip + fused Adam), EMA. ``short-run`` trains the preset on the given npz images (uint8 N x H x W
or N x C x H x W) in bf16 for a fixed number of steps in a temporary folder, then draws DDIM samples in bf16
and writes ``OUT/samples.npz`` (``arr_0``, N x H x W x C uint8) so that their FID is computed back on a CPU machine:
``diffprune fid OUT/samples.npz npz:REAL.npz``.
"""
from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
import warnings
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402

from diffprune.data import ImageDataset  # noqa: E402
from diffprune.diffusion import SampleConfig, TrainConfig, sample_images, train  # noqa: E402
from diffprune.diffusion import setup, trainer  # noqa: E402
from diffprune.diffusion.ema import EMA  # noqa: E402
from diffprune.diffusion.loading import load_model  # noqa: E402
from diffprune.diffusion.objective import diffusion_loss  # noqa: E402
from diffprune.io import atomic_write_json  # noqa: E402
from diffprune.testing import count_host_syncs  # noqa: E402


def _random_dataset(resolution: int, channels: int, n: int = 1024) -> ImageDataset:
    images = np.random.default_rng(0).integers(0, 256, size=(n, channels, resolution, resolution), dtype=np.uint8)
    return ImageDataset(images, np.arange(n) % 10, [f"c{i}" for i in range(10)], name="random")


def _config(args, **extra) -> TrainConfig:
    return TrainConfig(preset=args.preset, batch_size=args.batch, mixed_precision=args.precision,
                       channels_last=args.channels_last, compile=args.compile, checkpoint_every=0,
                       log_every=10**6, ema_decay=0.9999, hflip=True, seed=0, **extra)


def syncs(args) -> dict:
    """Synchronising calls per training step of diffprune's trainer (loss-weighted, the sweep's path)."""
    ds = _random_dataset(args.resolution, args.channels)
    cfg = _config(args, steps=args.steps).resolved()
    weights = {c: 0.1 for c in ds.class_names}
    with tempfile.TemporaryDirectory() as tmp:
        run = setup.set_up(cfg, ds, Path(tmp), weights, None, cfg.steps)
        for step in range(3):  # warm-up: compilation, allocator, cuDNN autotuning may synchronise
            _one_step(run, cfg, step)
        counts = []
        for step in range(3, 3 + args.steps):
            with count_host_syncs(run.accelerator.device) as seen:
                _one_step(run, cfg, step)
            counts.append(len(seen))
    return {"check": "host syncs per training step", "device": str(run.accelerator.device),
            "mixed_precision": run.accelerator.mixed_precision, "per_step": counts, "max": max(counts),
            "calls_seen": sorted(set(seen))}


def _one_step(run, cfg: TrainConfig, step: int) -> None:
    batch = trainer._global_batch(run, cfg, step, None)
    trainer._micro_step(run, cfg, batch, step, 0, None)
    run.lr_schedule.step()
    run.ema.update()


def breakdown(args) -> dict:
    """Milliseconds per phase of one training step, CUDA events around each (CPU: wall clock)."""
    ds = _random_dataset(args.resolution, args.channels)
    cfg = _config(args, steps=args.steps).resolved()
    with tempfile.TemporaryDirectory() as tmp:
        run = setup.set_up(cfg, ds, Path(tmp), None, None, cfg.steps)
    device = run.accelerator.device
    ema = EMA(run.model, 0.9999)
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(run.accelerator.mixed_precision)
    phases = ("draw", "forward", "backward", "optimizer", "ema")
    times: dict[str, list[float]] = {p: [] for p in phases}
    for step in range(3 + args.steps):
        marks = [_mark(device)]
        batch = trainer._global_batch(run, cfg, step, None)
        x0 = trainer.to_model_input(run.images[batch.indices])
        if cfg.channels_last:
            x0 = x0.contiguous(memory_format=torch.channels_last)
        marks.append(_mark(device))
        with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
            loss = diffusion_loss(run.forward_model, run.scheduler, x0, batch.timesteps, batch.noise, None).mean()
        marks.append(_mark(device))
        loss.backward()
        marks.append(_mark(device))
        torch.nn.utils.clip_grad_norm_(run.params, 1.0)
        run.optimizer.step()
        run.optimizer.zero_grad(set_to_none=True)
        marks.append(_mark(device))
        ema.update()
        marks.append(_mark(device))
        if step >= 3:
            for name, a, b in zip(phases, marks, marks[1:]):
                times[name].append(_elapsed_ms(a, b, device))
    median = {p: float(np.median(v)) for p, v in times.items()}
    total = sum(median.values())
    return {"check": "step-time breakdown", "device": str(device), "preset": cfg.preset, "batch": cfg.batch_size,
            "mixed_precision": run.accelerator.mixed_precision, "channels_last": cfg.channels_last,
            "compile": cfg.compile, "median_ms": median, "step_ms": total,
            "img_per_s": cfg.batch_size / total * 1e3, "raw_ms": times,
            "peak_memory_gb": torch.cuda.max_memory_allocated() / 1e9 if device.type == "cuda" else None}


def _mark(device: torch.device):
    if device.type != "cuda":
        return time.perf_counter()
    event = torch.cuda.Event(enable_timing=True)
    event.record()
    return event


def _elapsed_ms(a, b, device: torch.device) -> float:
    if device.type != "cuda":
        return (b - a) * 1e3
    b.synchronize()
    return a.elapsed_time(b)


def short_run(args) -> dict:
    """Train on ``--data`` for ``--steps`` steps (bf16), then ``--samples`` DDIM samples written as npz."""
    if str(args.data) == "random":  # the dry run's stand-in
        images, labels = _random_dataset(args.resolution, 1, n=64).images, np.arange(64) % 10
    else:
        with np.load(args.data) as z:
            images, labels = z["images"], z["labels"]
    if images.ndim == 3:
        images = images[:, None]
    x = torch.from_numpy(images).float()
    if x.shape[-1] != args.resolution:
        x = torch.nn.functional.interpolate(x, size=args.resolution, mode="bilinear", antialias=True)
    images = x.round().clamp(0, 255).to(torch.uint8).numpy()
    ds = ImageDataset(images, labels.astype(np.int64), [str(i) for i in range(int(labels.max()) + 1)], name="short")
    out, work = Path(args.out), Path(tempfile.mkdtemp(prefix="diffprune-short-run-"))
    cfg = TrainConfig(preset=args.preset, steps=args.steps, batch_size=args.batch, lr=2e-4, warmup_steps=500,
                      ema_decay=0.9995, ema_warmup=True, mixed_precision=args.precision, hflip=False,
                      channels_last=args.channels_last, compile=args.compile, log_every=100,
                      checkpoint_every=0, seed=0)
    t0 = time.perf_counter()
    summary = train(cfg, ds, work, progress=False)
    train_s = time.perf_counter() - t0
    model, scheduler = load_model(work / "model")
    model = model.to("cuda" if torch.cuda.is_available() else "cpu")
    scfg = SampleConfig(num_samples=args.samples, sampler="ddim", steps=args.sample_steps, batch_size=500, seed=0,
                        mixed_precision="bf16" if args.precision == "bf16" else "no")
    t0 = time.perf_counter()
    samples = sample_images(model, scheduler, scfg, progress=False)
    sample_s = time.perf_counter() - t0
    np.savez_compressed(out / "samples.npz", arr_0=samples)
    loss = [json.loads(line) for line in (work / "metrics.jsonl").read_text().splitlines()]
    return {"check": "short run", "preset": args.preset, "steps": args.steps, "batch": args.batch,
            "images": len(ds), "resolution": args.resolution, "train_seconds": train_s,
            "train_img_per_s": summary["img_per_s"], "mixed_precision": summary["mixed_precision"],
            "samples": int(samples.shape[0]), "sampler": f"ddim-{args.sample_steps}", "sample_seconds": sample_s,
            "sample_img_per_s": args.samples / sample_s, "loss_curve": [(r["step"], r["loss"]) for r in loss],
            "peak_memory_gb": torch.cuda.max_memory_allocated() / 1e9 if torch.cuda.is_available() else None}


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("what", choices=["syncs", "breakdown", "short-run"])
    p.add_argument("--preset", default="ddpm-cifar10")
    p.add_argument("--resolution", type=int, default=32)
    p.add_argument("--channels", type=int, default=3)
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--precision", default="bf16", choices=["no", "bf16", "fp16"])
    p.add_argument("--channels-last", action="store_true")
    p.add_argument("--compile", action="store_true")
    p.add_argument("--data", type=Path, help="short-run: npz with uint8 images and labels ('random': a stand-in)")
    p.add_argument("--samples", type=int, default=1000)
    p.add_argument("--sample-steps", type=int, default=100)
    p.add_argument("--out", type=Path, required=True, help="a JSON file (short-run: a folder)")
    args = p.parse_args(argv)
    if args.what == "short-run":
        args.out.mkdir(parents=True, exist_ok=True)
        result = short_run(args)
        path = args.out / "short_run.json"
    else:
        result = syncs(args) if args.what == "syncs" else breakdown(args)
        path = args.out
    result["torch"] = torch.__version__
    result["device_name"] = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu"
    atomic_write_json(path, result)
    print(json.dumps({k: v for k, v in result.items() if k not in ("raw_ms", "loss_curve")}), flush=True)
    return result


if __name__ == "__main__":
    warnings.filterwarnings("ignore", message=".*TF32.*")
    main()
