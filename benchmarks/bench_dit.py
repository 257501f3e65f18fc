"""Training-step speed of diffprune's DiT next to diffusers' DiTTransformer2DModel, and the cost of MDT masking.

"ours" is ``create_model(preset, ...)`` (``diffprune.diffusion.dit.DiT``); "diffusers" is the
``DiTTransformer2DModel`` a user would otherwise pick, with the equivalent config (same heads, width, depth,
patch, channels, 1000 classes + null). diffusers keeps a timestep/label embedder in every block, so it has more
parameters (both counts are reported) but does the same block computation. Each timed call is forward + epsilon
MSE + backward on the same input, timesteps and labels, in train mode. The two models alternate call by call
(order flipped every call) so a shared machine's load hits both alike; the ratio is ours / diffusers img/s per
repeat (``--iters`` calls each), median over repeats (target >= 0.95).

MDT: the same DiT built with a side-interpolater, forward + backward with ``mask_ratio`` next to the unmasked
forward + backward of that model (interleaved the same way). MDT's training step runs both passes.

    python benchmarks/bench_dit.py                                   # CPU: DiT-S/2 shape at 16x16 latents
    python benchmarks/bench_dit.py --preset dit-xl-2 --sample-size 32 --batch-size 32 --device cuda --bf16
"""
from __future__ import annotations

import argparse
import os
import statistics
import time
from collections.abc import Callable
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402
from diffusers import DiTTransformer2DModel  # noqa: E402

from bench_train import environment  # noqa: E402  (benchmarks/ is on sys.path when run as a script)

from diffprune.diffusion import count_parameters, create_model  # noqa: E402
from diffprune.io import atomic_write_json  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results" / "bench_dit.json"
ROOT = RESULTS.parents[2]


def build_models(args, device: torch.device) -> dict[str, torch.nn.Module]:
    """ours, the equivalent diffusers DiT, and ours with MDT's side-interpolater, all in train mode."""
    torch.manual_seed(0)
    common = dict(sample_size=args.sample_size, out_channels=args.out_channels, num_class_embeds=1001)
    ours = create_model(args.preset, **common)
    cfg = ours.config
    theirs = DiTTransformer2DModel(
        num_attention_heads=cfg.num_heads, attention_head_dim=cfg.hidden_size // cfg.num_heads,
        in_channels=cfg.in_channels, out_channels=ours.out_channels, num_layers=cfg.depth,
        sample_size=cfg.sample_size, patch_size=cfg.patch_size, num_embeds_ada_norm=cfg.num_class_embeds - 1,
    )
    mdt = create_model(args.preset, side_interpolater_depth=args.side_depth, **common)
    return {k: m.to(device).train() for k, m in {"ours": ours, "diffusers": theirs, "mdt": mdt}.items()}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def make_step(model: torch.nn.Module, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor, args,
              **kwargs) -> Callable[[], None]:
    """One forward + epsilon MSE + backward of ``model`` on the fixed batch."""
    c = x.shape[1]
    params = list(model.parameters())

    def step() -> None:
        for p in params:
            p.grad = None
        with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=args.bf16):
            pred = model(x, t, class_labels=y, **kwargs).sample
        torch.nn.functional.mse_loss(pred[:, :c].float(), x).backward()

    return step


def _timed(step: Callable[[], None], device: torch.device) -> float:
    t0 = time.perf_counter()
    step()
    _sync(device)
    return time.perf_counter() - t0


def interleaved(steps: dict[str, Callable[[], None]], args, device: torch.device) -> dict[str, list[float]]:
    """img/s of each step per repeat. The steps alternate call by call (order flipped every call), so load on a
    shared machine hits them alike; a repeat's img/s is its ``iters`` calls' images over their summed time."""
    for step in steps.values():
        for _ in range(args.warmup):
            step()
    _sync(device)
    names = list(steps)
    out: dict[str, list[float]] = {k: [] for k in steps}
    for _ in range(args.repeats):
        spent = dict.fromkeys(names, 0.0)
        for i in range(args.iters):
            for name in names if i % 2 == 0 else names[::-1]:
                spent[name] += _timed(steps[name], device)
        for name in names:
            out[name].append(args.batch_size * args.iters / spent[name])
    return out


def bench(args) -> dict:
    device = torch.device(args.device)
    models = build_models(args, device)
    g = torch.Generator().manual_seed(0)
    b, c, s = args.batch_size, models["ours"].config.in_channels, args.sample_size
    x = torch.randn(b, c, s, s, generator=g).to(device)
    t = torch.randint(0, 1000, (b,), generator=g).to(device)
    y = torch.randint(0, 1000, (b,), generator=g).to(device)
    mask_gen = torch.Generator(device=device).manual_seed(0)
    speed = interleaved({"ours": make_step(models["ours"], x, t, y, args),
                         "diffusers": make_step(models["diffusers"], x, t, y, args)}, args, device)
    ratios = [o / d for o, d in zip(speed["ours"], speed["diffusers"])]
    mdt = interleaved({"unmasked": make_step(models["mdt"], x, t, y, args),
                       "masked": make_step(models["mdt"], x, t, y, args, mask_ratio=args.mask_ratio,
                                           generator=mask_gen)}, args, device)
    time_ratios = [u / m for u, m in zip(mdt["unmasked"], mdt["masked"])]  # masked time / unmasked time
    return {
        "params": {k: count_parameters(m) for k, m in models.items()},
        "tokens": models["ours"].num_tokens,
        "encoder_tokens_masked": models["mdt"].kept_tokens(args.mask_ratio),
        "dit": {"ours_img_per_s": speed["ours"], "diffusers_img_per_s": speed["diffusers"],
                "ours_median": statistics.median(speed["ours"]),
                "diffusers_median": statistics.median(speed["diffusers"]),
                "ratio_per_repeat": ratios, "ratio_median": statistics.median(ratios)},
        "mdt": {"side_interpolater_depth": args.side_depth, "mask_ratio": args.mask_ratio,
                "unmasked_img_per_s": mdt["unmasked"], "masked_img_per_s": mdt["masked"],
                "unmasked_median": statistics.median(mdt["unmasked"]),
                "masked_median": statistics.median(mdt["masked"]),
                "masked_time_over_unmasked_per_repeat": time_ratios,
                "masked_time_over_unmasked_median": statistics.median(time_ratios)},
    }


def print_table(result: dict) -> None:
    env, cfg, p, d, m = (result[k] for k in ("environment", "config", "params", "dit", "mdt"))
    print(f"\ndevice: {env['device_name']} ({env['device']}), torch {env['torch']}, threads {env['torch_threads']}, "
          f"load {env['load_average'][0]:.1f}")
    print(f"{cfg['preset']} shape at {cfg['sample_size']}x{cfg['sample_size']} latents ({result['tokens']} tokens), "
          f"batch {cfg['batch_size']}, {'bf16' if cfg['bf16'] else 'fp32'}, forward+backward, "
          f"{cfg['iters']} timed iters x {cfg['repeats']} repeats")
    print(f"{'model':<34}{'params':>10}{'img/s':>10}{'ratio':>13}")
    print(f"{'diffusers DiTTransformer2DModel':<34}{p['diffusers'] / 1e6:>9.2f}M{d['diffusers_median']:>10.1f}"
          f"{1.0:>13.3f}")
    print(f"{'diffprune DiT':<34}{p['ours'] / 1e6:>9.2f}M{d['ours_median']:>10.1f}{d['ratio_median']:>13.3f}")
    print(f"{'MDT model, unmasked':<34}{p['mdt'] / 1e6:>9.2f}M{m['unmasked_median']:>10.1f}{1.0:>13.3f}")
    label = f"MDT model, mask {m['mask_ratio']} ({result['encoder_tokens_masked']} tok)"
    print(f"{label:<34}{p['mdt'] / 1e6:>9.2f}M{m['masked_median']:>10.1f}"
          f"{1 / m['masked_time_over_unmasked_median']:>13.3f}")
    print("ratio: img/s over the diffusers row (DiT) or over the unmasked row (MDT), median of per-repeat ratios")
    print(f"MDT masked pass time / unmasked pass time: {m['masked_time_over_unmasked_median']:.3f}")


def _relative(path: Path) -> str:
    """Repository-relative when inside the repository (the JSON is committed)."""
    try:
        return str(path.resolve().relative_to(ROOT))
    except ValueError:
        return str(path)


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--preset", default="dit-s-2")
    p.add_argument("--sample-size", type=int, default=16, help="latent height = width")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--out-channels", type=int, default=None, help="default: in_channels (8: learned sigma)")
    p.add_argument("--iters", type=int, default=4, help="timed forward+backward calls per repeat and model")
    p.add_argument("--warmup", type=int, default=2, help="untimed calls of each model first")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--mask-ratio", type=float, default=0.3)
    p.add_argument("--side-depth", type=int, default=2, help="side-interpolater blocks of the MDT model")
    p.add_argument("--bf16", action="store_true", help="bf16 autocast")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--threads", type=int, default=0, help="torch intra-op threads (0: torch's default)")
    p.add_argument("--out", type=Path, default=RESULTS)
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    result = {"benchmark": "bench_dit", "environment": environment(args),
              "config": {k: (_relative(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}}
    result |= bench(args)
    atomic_write_json(args.out, result)
    print_table(result)
    print(f"\nwritten: {args.out}")
    return result


if __name__ == "__main__":
    main()
