"""Selection cost: every method next to the code a user would otherwise write, measured in the same run.

Targets (issue #3, 2-core CPU):
  A. 50,000 x 2048 float32, 10 classes: gaussian <= 5 s and >= 3x faster than scikit-learn
     GaussianMixture(1, reg_covar=1e-5).fit(X_k).score_samples(X_k) per class; kcenter at 10% <= 60 s with
     O(N d) memory (baseline: DeepCore's k_center_greedy with its budget x N distance matrix).
  B. ImageNet-shaped 1,281,167 x 2048 memory-mapped float32 file, 1000 classes: gaussian <= 10 min, peak RAM
     <= 8 GB. The file (10.5 GB) is generated under --tmp in chunks and deleted afterwards; --imagenet-rows
     runs a proportional slice instead (same class size, fewer classes) and extrapolates linearly, labelled so.

Features are synthetic (class means + a rank-64 correlated part + isotropic noise): the cost of every method
depends on shapes, not values. Peak memory is the process's peak resident set (VmHWM, reset before each
measurement via /proc/self/clear_refs), reported as the increase over the resident set before it started.

    python benchmarks/bench_selection.py                         # everything at the issue's sizes
    python benchmarks/bench_selection.py --n 20000 --skip-imagenet
    python benchmarks/bench_selection.py --imagenet-rows 128117  # 100-class slice of the ImageNet shape
"""
from __future__ import annotations

import argparse
import gc
import os
import platform
import shutil
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402

from diffprune.io import atomic_write_json  # noqa: E402
from diffprune.selection import score, select  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results" / "bench_selection.json"
IMAGENET_ROWS, IMAGENET_CLASSES = 1_281_167, 1000


# ------------------------------------------------------------------------------------------ measuring
def _status_mb(key: str) -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key):
                return int(line.split()[1]) / 1024
    return float("nan")


def measure(fn):
    """(result, seconds, peak resident MB above the level before the call)."""
    gc.collect()
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # reset VmHWM to the current RSS
    except OSError:
        pass
    before = _status_mb("VmRSS")
    t0 = time.perf_counter()
    out = fn()
    seconds = time.perf_counter() - t0
    return out, seconds, max(0.0, _status_mb("VmHWM") - before)


# ------------------------------------------------------------------------------------------ data
def synth_block(rng, n, d, labels, means, basis):
    z = rng.standard_normal((n, basis.shape[0]), dtype=np.float32)
    x = z @ basis
    x += 0.3 * rng.standard_normal((n, d), dtype=np.float32)
    x += means[labels]
    return x


def synth(n, d, k, seed=0):
    rng = np.random.default_rng(seed)
    labels = rng.permutation(np.arange(n) % k)
    means = rng.standard_normal((k, d), dtype=np.float32)
    basis = rng.standard_normal((64, d), dtype=np.float32) / 4
    return synth_block(rng, n, d, labels, means, basis).astype(np.float32), labels.astype(np.int64)


def synth_file(path: Path, n, d, k, seed=0, chunk=32768):
    rng = np.random.default_rng(seed)
    labels = rng.permutation(np.arange(n) % k).astype(np.int64)  # classes scattered over the file
    means = rng.standard_normal((k, d), dtype=np.float32)
    basis = rng.standard_normal((64, d), dtype=np.float32) / 4
    out = np.lib.format.open_memmap(path, mode="w+", dtype=np.float32, shape=(n, d))
    for s in range(0, n, chunk):
        e = min(n, s + chunk)
        out[s:e] = synth_block(rng, e - s, d, labels[s:e], means, basis)
        out.flush()
    del out
    return labels


# ------------------------------------------------------------------------------------------ baselines
SKLEARN_NOTES: list[str] = []


def sklearn_gaussian(x, y):
    """What Instance Selection does, per class, on the features as loaded (float32). scikit-learn's float32
    Cholesky fails on some classes (n_k <= d); those are refitted on float64 input, as its message advises."""
    from sklearn.mixture import GaussianMixture

    s = np.empty(len(x))
    for k in np.unique(y):
        t0 = time.perf_counter()
        xk = x[y == k]
        try:
            s[y == k] = GaussianMixture(n_components=1, reg_covar=1e-5).fit(xk).score_samples(xk)
        except ValueError:
            SKLEARN_NOTES.append(f"class {k}: float32 fit failed (ill-defined covariance); refitted in float64")
            xk = xk.astype(np.float64)
            s[y == k] = GaussianMixture(n_components=1, reg_covar=1e-5).fit(xk).score_samples(xk)
        print(f"    sklearn class {k}: {time.perf_counter() - t0:.1f} s", flush=True)
    return s


def deepcore_kcenter(matrix: torch.Tensor, budget: int, seed: int) -> np.ndarray:
    """DeepCore's k_center_greedy (methods_utils), euclidean_dist metric, with its budget x N matrix."""

    def euclidean_dist(a, b):
        xx = (a * a).sum(1, keepdim=True).expand(a.shape[0], b.shape[0])
        yy = (b * b).sum(1, keepdim=True).expand(b.shape[0], a.shape[0]).t()
        return (xx + yy - 2 * a @ b.t()).clamp(min=1e-12).sqrt()

    n = matrix.shape[0]
    np.random.seed(seed)
    select_result = np.zeros(n, dtype=bool)
    first = [np.random.randint(0, n)]
    budget -= 1
    select_result[first] = True
    with torch.no_grad():
        dis_matrix = -1 * torch.ones([1 + budget - 1, n])
        dis_matrix[:1, ~select_result] = euclidean_dist(matrix[select_result], matrix[~select_result])
        mins = torch.min(dis_matrix[:1, :], dim=0).values
        for i in range(budget):
            p = torch.argmax(mins).item()
            select_result[p] = True
            if i == budget - 1:
                break
            mins[p] = -1
            dis_matrix[1 + i, ~select_result] = euclidean_dist(matrix[[p]], matrix[~select_result])
            mins = torch.min(mins, dis_matrix[1 + i])
    return np.flatnonzero(select_result)


def deepcore_kcenter_per_class(x, y, ratio, seed=0):
    kept = []
    for k in np.unique(y):
        rows = np.flatnonzero(y == k)
        budget = int(np.floor(ratio * len(rows) + 0.5))
        kept.append(rows[deepcore_kcenter(torch.from_numpy(x[rows]), budget, seed)])
    return np.sort(np.concatenate(kept))


def covering_radius(x, kept, y):
    """max over classes of the largest distance from a class member to its nearest kept member."""
    worst = 0.0
    for k in np.unique(y):
        rows, centres = np.flatnonzero(y == k), kept[y[kept] == k]
        xs, cs = torch.from_numpy(x[rows]), torch.from_numpy(x[centres])
        worst = max(worst, float(torch.cdist(xs, cs).min(1).values.max()))
    return worst


# ------------------------------------------------------------------------------------------ sections
class Rows(list):
    """Table rows, printed as they are measured (a long run shows progress and loses nothing if stopped)."""

    def append(self, row):
        super().append(row)
        what, size, value, mb, target, ok = row
        unit = "x" if "speed-up" in what else "s"
        mb_s = "" if mb is None else f"{mb:.0f} MB"
        print(f"  {what}: {value:.2f}{unit} {mb_s} {target} {'' if ok is None else ('met' if ok else 'MISS')}",
              flush=True)


def bench_50k(args, rows, results):
    x, y = synth(args.n, args.d, args.classes)
    tag = f"{args.n}x{args.d}, {args.classes} classes"
    print(f"\n## A. {tag} (in memory)")

    ours, t_ours, m_ours = measure(lambda: score(x, y, "gaussian"))
    ours32, t_32, m_32 = measure(lambda: score(x, y, "gaussian", precision="float32"))
    results["gaussian"] = {"seconds": t_ours, "peak_mb": m_ours, "seconds_float32": t_32, "peak_mb_float32": m_32}
    rows.append(("gaussian (float64, exact)", tag, t_ours, m_ours, "<= 5 s", t_ours <= 5))
    rows.append(("gaussian precision=float32", tag, t_32, m_32, "(option)", None))
    if not args.skip_sklearn:
        ref, t_ref, m_ref = measure(lambda: sklearn_gaussian(x, y))
        x64 = x.astype(np.float64)
        ref64 = sklearn_gaussian(x64[: args.n // 5], y[: args.n // 5]) if args.check_exact else None
        speedup = t_ref / t_ours
        results["gaussian"].update({
            "sklearn_seconds": t_ref, "sklearn_peak_mb": m_ref, "speedup_vs_sklearn": speedup,
            "speedup_float32_vs_sklearn": t_ref / t_32,
            "max_abs_diff_vs_sklearn_float32_input": float(np.abs(ours - ref).max()),
            "max_rel_diff_vs_sklearn_float32_input": float(np.abs(ours - ref).max() / np.abs(ref).max()),
            "max_abs_diff_float32_option": float(np.abs(ours32 - ours).max()),
            "spearman_float32_option": _spearman(ours32, ours),
        })
        if ref64 is not None:
            mine = score(x[: args.n // 5], y[: args.n // 5], "gaussian")
            results["gaussian"]["max_abs_diff_vs_sklearn_float64_subset"] = float(np.abs(mine - ref64).max())
        results["gaussian"]["sklearn_notes"] = sorted(set(SKLEARN_NOTES))
        rows.append(("sklearn GaussianMixture per class", tag, t_ref, m_ref, "baseline", None))
        rows.append(("gaussian speed-up vs sklearn", tag, speedup, None, ">= 3x", speedup >= 3))
    del ours32

    kc, t_kc, m_kc = measure(lambda: select(x, y, "kcenter", args.ratio))
    results["kcenter"] = {"seconds": t_kc, "peak_mb": m_kc, "ratio": args.ratio,
                          "covering_radius": covering_radius(x, kc.indices, y)}
    rows.append((f"kcenter {args.ratio:.0%} per class", tag, t_kc, m_kc, "<= 60 s", t_kc <= 60))
    if not args.skip_deepcore:
        dc, t_dc, m_dc = measure(lambda: deepcore_kcenter_per_class(x, y, args.ratio))
        results["kcenter"].update({"deepcore_seconds": t_dc, "deepcore_peak_mb": m_dc,
                                   "deepcore_covering_radius": covering_radius(x, dc, y),
                                   "speedup_vs_deepcore": t_dc / t_kc})
        rows.append(("DeepCore k_center_greedy per class", tag, t_dc, m_dc, "baseline", None))

    for method, opts in [("knn", {}), ("ppca", {}), ("moderate", {}), ("random", {}), ("herding", {}),
                         ("kmeans-balanced", {}), ("gmm", {})]:
        if method in args.skip_methods:
            continue
        _, t, m = measure(lambda: select(x, y, method, args.ratio, **opts))
        results[method] = {"seconds": t, "peak_mb": m}
        rows.append((f"{method} {args.ratio:.0%}", tag, t, m, "", None))
    del x


def bench_global_kcenter(args, rows, results):
    n = args.global_n
    x, y = synth(n, args.d, args.classes, seed=1)
    tag = f"{n}x{args.d}, global"
    budget = int(np.floor(args.ratio * n + 0.5))
    ours, t, m = measure(lambda: select(x, y, "kcenter", args.ratio, per_class=False))
    dc, t_dc, m_dc = measure(lambda: deepcore_kcenter(torch.from_numpy(x), budget, 0))
    results["kcenter_global"] = {"n": n, "budget": budget, "seconds": t, "peak_mb": m, "deepcore_seconds": t_dc,
                                 "deepcore_peak_mb": m_dc,
                                 "deepcore_matrix_mb": budget * n * 4 / 2**20}
    rows.append((f"kcenter {args.ratio:.0%} global", tag, t, m, "O(N d) memory", None))
    rows.append(("DeepCore k_center_greedy global", tag, t_dc, m_dc, "budget x N matrix", None))


def bench_imagenet(args, rows, results):
    n = args.imagenet_rows
    k = max(1, round(IMAGENET_CLASSES * n / IMAGENET_ROWS))
    tmp = Path(args.tmp)
    path = tmp / "diffprune_bench_imagenet_features.npy"
    need = n * args.d * 4
    free = shutil.disk_usage(tmp).free
    if free < need * 1.2:
        print(f"skip ImageNet-shaped run: needs {need / 2**30:.1f} GiB in {tmp}, {free / 2**30:.1f} GiB free")
        results["imagenet"] = {"skipped": f"not enough disk: {free / 2**30:.1f} GiB free"}
        return
    scale = IMAGENET_ROWS / n
    tag = f"{n}x{args.d} memmap, {k} classes" + ("" if n == IMAGENET_ROWS else " (slice)")
    print(f"\n## B. {tag}; writing {need / 2**30:.1f} GiB to {path}", flush=True)
    try:
        labels, t_gen, _ = measure(lambda: synth_file(path, n, args.d, k))
        print(f"  generated in {t_gen:.0f} s", flush=True)
        feats = np.load(path, mmap_mode="r")
        _, t, m = measure(lambda: score(feats, labels, "gaussian", progress=True))
        entry = {"rows": n, "classes": k, "seconds": t, "peak_mb": m, "generate_seconds": t_gen,
                 "file_gib": need / 2**30}
        rows.append(("gaussian, memmap", tag, t, m, "<= 600 s, <= 8 GB", (t * scale <= 600) and m <= 8192))
        if n != IMAGENET_ROWS:
            entry["extrapolated_full_seconds"] = t * scale
            rows.append(("gaussian, memmap (EXTRAPOLATED x%.1f)" % scale, "1281167x2048, 1000 classes",
                         t * scale, m, "<= 600 s, <= 8 GB", t * scale <= 600 and m <= 8192))
        results["imagenet"] = entry
    finally:
        if not args.keep_file:
            path.unlink(missing_ok=True)


def _spearman(a, b):
    ra, rb = np.argsort(np.argsort(a)), np.argsort(np.argsort(b))
    return float(np.corrcoef(ra, rb)[0, 1])


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n", type=int, default=50_000)
    p.add_argument("--d", type=int, default=2048)
    p.add_argument("--classes", type=int, default=10)
    p.add_argument("--ratio", type=float, default=0.1)
    p.add_argument("--global-n", type=int, default=10_000, help="size of the global k-center comparison")
    p.add_argument("--imagenet-rows", type=int, default=IMAGENET_ROWS)
    p.add_argument("--tmp", default="/tmp")
    p.add_argument("--keep-file", action="store_true")
    p.add_argument("--skip-sklearn", action="store_true")
    p.add_argument("--skip-deepcore", action="store_true")
    p.add_argument("--skip-global", action="store_true")
    p.add_argument("--skip-imagenet", action="store_true")
    p.add_argument("--skip-50k", action="store_true")
    p.add_argument("--check-exact", action="store_true", help="also compare with sklearn on float64 input")
    p.add_argument("--skip-methods", nargs="*", default=[])
    p.add_argument("--out", default=str(RESULTS))
    args = p.parse_args()

    rows, results = Rows(), {}
    started = time.time()
    sections = [(args.skip_50k, bench_50k), (args.skip_global, bench_global_kcenter),
                (args.skip_imagenet, bench_imagenet)]
    for skip, section in sections:
        if not skip:
            section(args, rows, results)
            save(args, rows, results, started)

    print(f"\n{'what':44s} {'size':34s} {'value':>10s} {'peak MB':>9s}  target          met")
    for what, size, value, mb, target, ok in rows:
        unit = "x" if "speed-up" in what else "s"
        mb_s = "" if mb is None else f"{mb:9.0f}"
        ok_s = "" if ok is None else ("yes" if ok else "MISS")
        print(f"{what:44s} {size:34s} {value:9.2f}{unit} {mb_s:>9s}  {target:15s} {ok_s}")
    load = save(args, rows, results, started)
    print(f"\nwrote {args.out}; load average {load[0]:.1f} ({os.cpu_count()} cores shared with other jobs)")


def save(args, rows, results, started):
    load = os.getloadavg()
    meta = {"machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, shared with other jobs",
            "load_average_at_save": load, "torch": torch.__version__, "threads": torch.get_num_threads(),
            "cuda": torch.cuda.is_available(), "seconds_total": time.time() - started, "args": vars(args)}
    atomic_write_json(args.out, {"meta": meta, "results": results,
                                 "table": [dict(zip(("what", "size", "value", "peak_mb", "target", "met"), r))
                                           for r in rows]})
    return load


if __name__ == "__main__":
    main()
