"""Fault injection over every stage of a CPU-sized run: kill -9 at random points, concurrent writers, damaged
caches. Prints a table and writes ``results/fault_injection.json``.

1. A reference run (arm ``gaussian+dro``: embed, select, reference, reweight, train, sample, evaluate).
2. Per stage, ``--trials`` times: a copy of the reference run without that stage (and what follows it) is run
   in a forked child that is SIGKILLed after a random delay in [0, 1.3 x the stage's time + load time]; then the
   same stage is run again to completion; its files are compared byte for byte with the reference run's
   (``manifest.json`` and the ``.attempt.json``/``.lock`` bookkeeping excluded; in ``metrics.jsonl`` and JSON files
   the wall-clock fields are dropped first).
3. ``--concurrent`` trials: two processes run the whole arm at once (``wait=True``) in a fresh run directory; each
   stage must be computed by exactly one and reused by the other, with the reference's bytes.
4. Damaged caches: NaN in ``features.npy``, a truncated ``selection.npz`` and a truncated model safetensors are
   each detected (manifest checksum) and recomputed to the reference's bytes.

5. ``--aimed R``: the writes of each stage are numbered by the io layer's fault hook (``diffprune.io.faults``);
   for every write N of every stage, R times: a child is SIGKILLed right after write N (``DIFFPRUNE_FAULT=
   kill@N``), the stage is rerun, and its files must equal the reference's. Then every write N fails once with
   ENOSPC and once with EROFS: the error must be one line naming the write's path, the free space of that
   path's file system and what to do; the stage is rerun and must again equal the reference.

    python benchmarks/fault_injection.py                      # 20 trials per stage
    python benchmarks/fault_injection.py --trials 5 --concurrent 2
    python benchmarks/fault_injection.py --trials 0 --concurrent 0 --aimed 20   # the aimed suite only
"""
from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402

from diffprune.io import atomic_write_json  # noqa: E402
from diffprune.pipeline import Pipeline, load_run_config  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results" / "fault_injection.json"
ROOT = RESULTS.parents[2]
TINY = [
    "data.limit=120", "data.resolution=8", "data.resize=pad", "embed.batch_size=20", "embed.chunk_size=20",
    "select.ratio=0.5", "arms=[{method: gaussian, reweight: true}]",
    "reweight.steps=12", "reweight.batch_size=20", "reweight.reference_steps=12", "reweight.checkpoint_every=3",
    "train.preset=ddpm-tiny", "train.steps=24", "train.batch_size=16", "train.checkpoint_every=5",
    "train.log_every=2",
    "sample.num_samples=24", "sample.steps=4", "sample.batch_size=8",
    "evaluate.num_real=24", "evaluate.kid_subset_size=10", "evaluate.kid_subsets=5",
    "evaluate.metrics=[classifier_fd]", "evaluate.classwise=false", "evaluate.cross_check=false",
]
ARM = "gaussian+dro"
STAGES = {  # stage -> its folder in the run directory
    "embed": "features/efficientnet-lite0-size112", "select": "selection/gaussian-r0.5", "reference": "reference",
    "reweight": "reweight/gaussian-r0.5", "train": f"train/{ARM}", "sample": f"samples/{ARM}",
    "evaluate": f"eval/{ARM}",
}
SKIP = {"manifest.json", ".attempt.json", ".lock"}
CLOCK_KEYS = ("seconds", "img_per_s", "started", "finished", "time", "elapsed", "cache_hit")


def pipeline(runs: Path, wait: bool = False, log: Path | None = None) -> Pipeline:
    from rich.console import Console

    cfg = load_run_config(ROOT / "configs" / "demo.yaml", [*TINY, f"runs_dir={runs}"], name="fi")
    console = Console(file=open(log or os.devnull, "a"), width=200, no_color=True)
    return Pipeline(cfg, progress=False, wait=wait, console=console)


def run_stage(runs: Path, stage: str, wait: bool = False) -> None:
    pipe = pipeline(runs, wait)
    arm = pipe.arm(ARM)
    {"embed": lambda: pipe.embed(), "select": lambda: pipe.select(arm), "reference": lambda: pipe.reference(arm),
     "reweight": lambda: pipe.reweight(arm), "train": lambda: pipe.train(arm), "sample": lambda: pipe.sample(arm),
     "evaluate": lambda: pipe.evaluate(arm)}[stage]()


def in_child(fn, *args) -> int:
    """Run ``fn(*args)`` in a forked child; its pid (exit status 0 on success, 1 on an exception)."""
    pid = os.fork()
    if pid == 0:
        code = 0
        try:
            torch.set_num_threads(1)
            fn(*args)
        except BaseException:  # noqa: BLE001
            import traceback

            traceback.print_exc()
            code = 1
        os._exit(code)
    return pid


def with_env(env: dict[str, str], fn, *args) -> None:
    """``fn(*args)`` with ``env`` set (in a forked child: the fault hook reads it at every write)."""
    os.environ.update(env)
    fn(*args)


def stage_error_line(runs: Path, stage: str, out: Path) -> None:
    """Run ``stage``; write the CLI's one-line message of its failure to ``out`` (the child exits 3)."""
    from diffprune.errors import user_message

    try:
        run_stage(runs, stage)
    except Exception as e:  # noqa: BLE001 - the message is what is measured
        out.write_text(str(user_message(e) or f"unexpected {type(e).__name__}: {e}"))
        os._exit(3)


def wait_child(pid: int) -> int:
    return os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])


def _normalise(path: Path) -> bytes:
    """The bytes compared: JSON and JSON lines without wall-clock fields, everything else as is."""
    data = path.read_bytes()
    if path.suffix not in (".json", ".jsonl"):
        return data

    def scrub(obj):
        if isinstance(obj, dict):
            return {k: scrub(v) for k, v in obj.items() if not any(c in k for c in CLOCK_KEYS)}
        if isinstance(obj, list):
            return [scrub(v) for v in obj]
        return obj

    try:
        if path.suffix == ".jsonl":
            return "\n".join(json.dumps(scrub(json.loads(ln))) for ln in data.decode().splitlines()).encode()
        return json.dumps(scrub(json.loads(data))).encode()
    except ValueError:
        return data


def snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): _normalise(p) for p in sorted(folder.rglob("*"))
            if p.is_file() and p.name not in SKIP and not any(part.startswith(".") and part.endswith(".tmp")
                                                              for part in p.parts)}


def differences(a: dict[str, bytes], b: dict[str, bytes]) -> list[str]:
    names = sorted(set(a) | set(b))
    return [n for n in names if a.get(n) != b.get(n)]


def without(ref_root: Path, runs: Path, stage: str) -> None:
    """``runs`` = a copy of the reference run minus ``stage`` and every stage after it."""
    shutil.copytree(ref_root.parent, runs)
    root = runs / ref_root.name
    names = list(STAGES)
    for s in names[names.index(stage):]:
        shutil.rmtree(root / STAGES[s], ignore_errors=True)
    for extra in ("report",):
        shutil.rmtree(root / extra, ignore_errors=True)


def kill_trials(ref_root: Path, stage: str, trials: int, budget: float, rng: random.Random, work: Path) -> dict:
    expected = snapshot(ref_root / STAGES[stage])
    identical, killed, leftovers, bad = 0, 0, 0, []
    for t in range(trials):
        runs = work / f"{stage}-{t}"
        without(ref_root, runs, stage)
        pid = in_child(run_stage, runs, stage)
        time.sleep(rng.uniform(0.0, budget))
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        killed += wait_child(pid) == -signal.SIGKILL
        code = wait_child(in_child(run_stage, runs, stage))
        root = runs / ref_root.name
        got = snapshot(root / STAGES[stage]) if code == 0 else {}
        diff = differences(expected, got)
        identical += not diff and code == 0
        leftovers += bool(list(root.rglob(".*.tmp")) + list(root.rglob(".*.old")))
        if diff or code:
            bad.append({"trial": t, "exit": code, "differs": diff[:5]})
        shutil.rmtree(runs, ignore_errors=True)
    return {"stage": stage, "trials": trials, "killed_mid_run": killed, "identical": identical,
            "runs_with_leftover_temporaries": leftovers, "failures": bad}


def count_writes(ref_root: Path, stage: str, work: Path) -> list[str]:
    """The paths (relative to the runs folder) of the stage's numbered writes, in order (a fresh run of the
    stage with the hook's log on)."""
    runs, log = work / f"{stage}-count", work / f"{stage}-writes.log"
    without(ref_root, runs, stage)
    code = wait_child(in_child(with_env, {"DIFFPRUNE_FAULT_LOG": str(log)}, run_stage, runs, stage))
    assert code == 0, f"counting the writes of {stage} failed"
    shutil.rmtree(runs, ignore_errors=True)
    return [str(Path(line.split("\t", 1)[1]).relative_to(runs)) for line in log.read_text().splitlines()]


def aimed_trials(ref_root: Path, stage: str, repeats: int, work: Path, rerun_errors: bool) -> dict:
    """Kill at every write (``repeats`` times each) then rerun: the files must be the reference's. Then ENOSPC
    and EROFS at every write: one clear line each (and with ``rerun_errors`` a rerun equal to the reference)."""
    expected = snapshot(ref_root / STAGES[stage])
    paths = count_writes(ref_root, stage, work)
    kills = {"trials": 0, "killed": 0, "identical": 0}
    errors = {kind: {"trials": 0, "one_clear_line": 0, "identical_after": 0 if rerun_errors else None}
              for kind in ("enospc", "erofs")}
    bad = []
    trials = [("kill", n) for n in range(1, len(paths) + 1) for _ in range(repeats)]
    trials += [(kind, n) for kind in errors for n in range(1, len(paths) + 1)]
    for t, (kind, n) in enumerate(trials):
        runs, msg = work / f"{stage}-aimed-{t}", work / f"{stage}-aimed-{t}.msg"
        without(ref_root, runs, stage)
        env = {"DIFFPRUNE_FAULT": f"{kind}@{n}"}
        first = wait_child(in_child(with_env, env, stage_error_line, runs, stage, msg))
        code, same = None, None
        if kind == "kill" or rerun_errors:
            code = wait_child(in_child(run_stage, runs, stage))
            same = code == 0 and not differences(expected, snapshot(runs / ref_root.name / STAGES[stage]))
        path = str(runs / paths[n - 1])
        if kind == "kill":
            kills["trials"] += 1
            kills["killed"] += first == -signal.SIGKILL
            kills["identical"] += same
            ok = first == -signal.SIGKILL and same
        else:
            line = msg.read_text() if msg.exists() else ""
            clear = first == 3 and "\n" not in line and path in line and " free on the file system of " in line \
                and ("run the same command" in line or "runs_dir" in line)
            errors[kind]["trials"] += 1
            errors[kind]["one_clear_line"] += clear
            if rerun_errors:
                errors[kind]["identical_after"] += bool(same)
            ok = clear and same is not False
        if not ok:
            bad.append({"fault": f"{kind}@{n}", "path": path, "first_exit": first, "rerun_exit": code,
                        "identical": same, "message": msg.read_text() if msg.exists() else None})
        shutil.rmtree(runs, ignore_errors=True)
    return {"stage": stage, "writes": len(paths), "write_paths": paths,
            "kill": kills, **errors, "failures": bad}


def _all(runs: Path, log: Path) -> None:
    pipe = pipeline(runs, wait=True, log=log)
    pipe.evaluate(pipe.arm(ARM))


def concurrent_trials(ref_root: Path, trials: int, work: Path) -> dict:
    ok, bad = 0, []
    for t in range(trials):
        runs = work / f"concurrent-{t}"
        logs = [work / f"concurrent-{t}-{k}.log" for k in range(2)]
        pids = [in_child(_all, runs, log) for log in logs]
        codes = [wait_child(p) for p in pids]
        root = runs / ref_root.name
        text = [log.read_text() for log in logs]
        computed = {s: sum(f"run     {s:<9} {f}" in x for x in text) for s, f in STAGES.items()}
        diff = [s for s, f in STAGES.items() if differences(snapshot(ref_root / f), snapshot(root / f))]
        if codes == [0, 0] and not diff and all(n == 1 for n in computed.values()):
            ok += 1
        else:
            bad.append({"trial": t, "exits": codes, "differs": diff, "computed": computed})
        shutil.rmtree(runs, ignore_errors=True)
    return {"trials": trials, "both_finished_identical_each_stage_computed_once": ok, "failures": bad}


def corrupt_trials(ref_root: Path, work: Path) -> list[dict]:
    cases = {
        "NaN in features.npy": ("embed", "features.npy", lambda p: _nan(p)),
        "truncated selection.npz": ("select", "selection.npz", lambda p: p.write_bytes(p.read_bytes()[:200])),
        "truncated model safetensors": ("train", "model/diffusion_pytorch_model.safetensors",
                                        lambda p: p.write_bytes(p.read_bytes()[:1000])),
    }
    out = []
    for name, (stage, rel, damage) in cases.items():
        runs = work / "corrupt"
        shutil.copytree(ref_root.parent, runs)
        root = runs / ref_root.name
        damage(root / STAGES[stage] / rel)
        code = wait_child(in_child(run_stage, runs, "evaluate"))
        diff = [s for s, f in STAGES.items() if differences(snapshot(ref_root / f), snapshot(root / f))]
        out.append({"case": name, "exit": code, "recomputed_identical": code == 0 and not diff, "differs": diff})
        shutil.rmtree(runs, ignore_errors=True)
    return out


def _nan(path: Path) -> None:
    m = np.load(path, mmap_mode="r+")
    m[len(m) // 2, 0] = np.nan
    m.flush()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--trials", type=int, default=20, help="kill -9 trials per stage")
    ap.add_argument("--concurrent", type=int, default=3, help="trials of two concurrent runs")
    ap.add_argument("--aimed", type=int, default=0, help="kill at every atomic write of every stage this many "
                    "times each, then ENOSPC and EROFS at every write once (0: off)")
    ap.add_argument("--rerun-after-errors", action="store_true", help="aimed: rerun each stage after its simulated "
                    "ENOSPC/EROFS too and compare with the reference")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--stages", default=",".join(STAGES), help="comma-separated subset of " + ",".join(STAGES))
    args = ap.parse_args()
    torch.set_num_threads(1)
    rng = random.Random(args.seed)
    work = Path(tempfile.mkdtemp(prefix="diffprune-fi-"))
    t0 = time.perf_counter()
    try:
        ref_runs = work / "reference"
        code = wait_child(in_child(run_stage, ref_runs, "evaluate"))
        assert code == 0, "the reference run failed"
        ref_root = ref_runs / "fi"
        seconds = {s: json.loads((ref_root / f / "manifest.json").read_text())["seconds"] for s, f in STAGES.items()}
        load = 0.5  # loading the dataset and the cached upstream stages (the child is forked: imports are done)
        rows = [kill_trials(ref_root, s, args.trials, 1.3 * (seconds[s] + load), rng, work)
                for s in args.stages.split(",")]
        concurrent = concurrent_trials(ref_root, args.concurrent, work) if args.concurrent else None
        aimed = [aimed_trials(ref_root, s, args.aimed, work, args.rerun_after_errors)
                 for s in args.stages.split(",")] if args.aimed else []
        corrupt = corrupt_trials(ref_root, work) if args.trials else []
    finally:
        shutil.rmtree(work, ignore_errors=True)
    result = {"config": TINY, "arm": ARM, "seed": args.seed, "stage_seconds": seconds, "kill_trials": rows,
              "concurrent": concurrent, "aimed": aimed, "corrupt_caches": corrupt,
              "total_seconds": round(time.perf_counter() - t0, 1),
              "environment": {"cpu_count": os.cpu_count(), "load_average": list(os.getloadavg()),
                              "torch": torch.__version__, "python": sys.version.split()[0]}}
    path = RESULTS if args.trials else RESULTS.with_name("fault_injection_aimed.json")  # aimed only: its own file
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_json(path, result)
    if args.trials:
        print(f"{'stage':<10}{'stage s':>8}{'trials':>8}{'killed':>8}{'identical':>11}{'leftovers':>11}")
    for r in rows if args.trials else []:
        print(f"{r['stage']:<10}{seconds[r['stage']]:>8.2f}{r['trials']:>8}{r['killed_mid_run']:>8}"
              f"{r['identical']:>11}{r['runs_with_leftover_temporaries']:>11}")
    if concurrent:
        print(f"concurrent runs: {concurrent['both_finished_identical_each_stage_computed_once']}/{concurrent['trials']} both finished, "
              f"each stage computed once, identical to the reference")
    if aimed:
        print(f"{'stage':<10}{'writes':>7}{'kill: killed':>13}{'identical':>10}{'ENOSPC: 1 line':>15}{'identical':>10}"
              f"{'EROFS: 1 line':>14}{'identical':>10}")
    for a in aimed:
        k, sp, ro = a["kill"], a["enospc"], a["erofs"]
        after = [f"{'-' if e['identical_after'] is None else e['identical_after']}/{e['trials']}" for e in (sp, ro)]
        print(f"{a['stage']:<10}{a['writes']:>7}{k['killed']:>8}/{k['trials']:<4}{k['identical']:>6}/{k['trials']:<4}"
              f"{sp['one_clear_line']:>10}/{sp['trials']:<4}{after[0]:>10}"
              f"{ro['one_clear_line']:>9}/{ro['trials']:<4}{after[1]:>10}")
    for c in corrupt:
        print(f"{c['case']}: {'recomputed, identical' if c['recomputed_identical'] else c}")
    print(f"total {result['total_seconds']:.0f} s; {path.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
