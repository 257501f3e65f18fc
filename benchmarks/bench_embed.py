"""Embedding throughput (images/s) of the bundled encoders on 32x32 inputs, through ``embed_dataset``.

Each encoder embeds the same N random 32x32 RGB uint8 images (the encoder resizes them itself: 299 for
fid-inception, 224 for efficientnet-lite0), after one warm-up batch, with the chunked memory-mapped writer,
DataLoader and progress bookkeeping included. On CUDA the run uses autocast where the encoder allows it.

    python benchmarks/bench_embed.py                   # prints a table, writes benchmarks/results/bench_embed.json
    python benchmarks/bench_embed.py --n 64 --batch-size 16
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

from diffprune.data import ImageDataset  # noqa: E402
from diffprune.encoders import EmbedConfig, embed_dataset, get_encoder  # noqa: E402
from diffprune.io import atomic_write_json  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results" / "bench_embed.json"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n", type=int, default=256)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--encoders", nargs="*", default=["fid-inception", "efficientnet-lite0"])
    p.add_argument("--device", default="auto")
    p.add_argument("--out", default=str(RESULTS))
    args = p.parse_args()

    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (args.n, 3, 32, 32), dtype=np.uint8)
    ds = ImageDataset(images, None, [], name="random32")
    results, started = {}, time.time()
    for name in args.encoders:
        cfg = EmbedConfig(encoder=name, batch_size=args.batch_size, device=args.device, chunk_size=4096)
        enc = get_encoder(name, device=None if args.device == "auto" else args.device)
        with torch.inference_mode():  # warm-up: weights into cache, TorchScript profiling passes
            enc(torch.from_numpy(images[: args.batch_size]))
        del enc
        with tempfile.TemporaryDirectory() as tmp:
            t0 = time.perf_counter()
            feats = embed_dataset(ds, cfg, Path(tmp) / name, progress=False)
            seconds = time.perf_counter() - t0
            dim = feats.shape[1]
        results[name] = {"images": args.n, "seconds": seconds, "img_per_s": args.n / seconds, "dim": dim,
                         "batch_size": args.batch_size}
        print(f"{name:20s} {args.n / seconds:8.1f} img/s  ({args.n} images in {seconds:.1f} s, dim {dim})", flush=True)
    device = "cuda" if (args.device == "auto" and torch.cuda.is_available()) else args.device
    load = os.getloadavg()
    meta = {"machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, shared with other jobs",
            "device": device, "load_average_at_end": load, "torch": torch.__version__,
            "threads": torch.get_num_threads(), "seconds_total": time.time() - started, "args": vars(args)}
    atomic_write_json(args.out, {"meta": meta, "results": results})
    print(f"wrote {args.out}; load average {load[0]:.1f}")


if __name__ == "__main__":
    main()
