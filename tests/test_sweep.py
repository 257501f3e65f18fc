import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from diffprune.config import ConfigError
from diffprune.pipeline.config import load_run_config
from diffprune.pipeline.sweep import _mean_std, parse_method, sweep_config
from diffprune.pipeline.workers import WorkersError, worker_env, worker_order
from diffprune.runtime import available_cpus
from test_pipeline_e2e import TINY


def test_grid_has_one_arm_per_cell_plus_full_per_seed():
    base = load_run_config(None)
    cfg = sweep_config(base, ["random", "gaussian+dro"], [0.1, 0.3], [0, 1])
    labels = [a.label() for a in cfg.arms]
    assert len(labels) == 2 * (1 + 2 * 2)
    assert "full-s1" in labels and "gaussian+dro-r0.3-s0" in labels
    assert {a.reweight for a in cfg.arms if a.method == "gaussian"} == {True}


def test_method_tokens_validated():
    assert parse_method("gaussian+dro") == ("gaussian", True)
    with pytest.raises(ConfigError, match="only suffix"):
        parse_method("gaussian+foo")
    with pytest.raises(ConfigError, match="arms.1.method"):
        sweep_config(load_run_config(None), ["nosuchmethod"], [0.1], [0])


def test_mean_std_uses_sample_std():
    vals = [1.0, 2.0, 4.0]
    mean = sum(vals) / 3
    std = math.sqrt(sum((v - mean) ** 2 for v in vals) / 2)
    assert _mean_std(vals) == f"{mean:.3g} ± {std:.2g}"
    assert _mean_std([None, 3.0]) == "3"
    assert _mean_std([]) == "-"


def test_worker_order_starts_with_its_own_share_then_the_rest():
    labels = ["a", "b", "c", "d", "e"]
    assert worker_order(labels, 0, 2) == ["a", "c", "e", "b", "d"]
    assert worker_order(labels, 1, 2) == ["b", "d", "a", "c", "e"]
    for i in range(3):  # every worker visits every arm once
        assert sorted(worker_order(labels, i, 3)) == labels


def test_worker_env_gives_each_worker_one_gpu_or_a_share_of_the_cpus(monkeypatch):
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 0)
    env = worker_env(1, 2, {})
    assert env["DIFFPRUNE_WAIT"] == "1" and env["OMP_NUM_THREADS"] == str(max(1, available_cpus() // 2))
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 4)
    assert worker_env(2, 4, {})["CUDA_VISIBLE_DEVICES"] == "2"
    assert worker_env(1, 2, {"CUDA_VISIBLE_DEVICES": "5,7"})["CUDA_VISIBLE_DEVICES"] == "7"
    with pytest.raises(WorkersError, match="--devices 8 but 4 GPU"):
        worker_env(0, 8, {})


def test_sweep_on_two_devices_trains_every_arm_once_then_reports(tmp_path):
    """Two CPU worker processes share the run directory: each arm is trained by one of them, the other reuses it."""
    sets = [x for item in [*TINY, f"runs_dir={tmp_path}"] for x in ("--set", item)]
    cmd = [sys.executable, "-c", "from diffprune.cli import main; main()", "sweep", "configs/demo.yaml",
           "--methods", "random", "--ratios", "0.5", "--seeds", "0", "--devices", "2", "--no-progress",
           "--name", "grid", *sets]
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=Path(__file__).parent.parent)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    logs = sorted((tmp_path / "grid" / "workers").glob("worker-*.log"))
    assert len(logs) == 2
    trained = [line.split()[-3] for log in logs for line in log.read_text().splitlines()
               if line.startswith("done") and line.split()[1] == "train"]
    assert sorted(trained) == ["train/full-s0", "train/random-r0.5-s0"], trained  # once each, none twice
    results = json.loads((tmp_path / "grid" / "results.json").read_text())
    assert {r["arm"] for r in results} == {"full-s0", "random-r0.5-s0"}
    assert (tmp_path / "grid" / "report" / "report.md").exists()


def test_minsnr_arms_of_a_sweep():
    from diffprune.pipeline.sweep import parse_arm_token

    assert parse_arm_token("gaussian+minsnr") == {"method": "gaussian", "reweight": False, "snr_gamma": 5.0}
    assert parse_arm_token("gaussian+dro+minsnr")["reweight"] is True
    with pytest.raises(ConfigError, match="only suffixes"):
        parse_arm_token("gaussian+dro+dro")
    cfg = sweep_config(load_run_config(None), ["gaussian", "gaussian+minsnr"], [0.3], [0])
    arms = {a.label(): a for a in cfg.arms}
    assert set(arms) == {"full-s0", "gaussian-r0.3-s0", "gaussian+minsnr-r0.3-s0"}
    assert cfg.arm_train_config(arms["gaussian+minsnr-r0.3-s0"]).snr_gamma == 5.0
    assert cfg.arm_train_config(arms["gaussian-r0.3-s0"]).snr_gamma is None
    assert cfg.arm_train_config(arms["full-s0"]).snr_gamma is None  # the target stays the plain full arm's
    # with early stop, every seed's full arm comes first (pruned arms wait for theirs)
    stopping = load_run_config(None, ["train.eval_every=5", "train.stop_at_target={metric: fid}"])
    labels = [a.label() for a in sweep_config(stopping, ["random"], [0.3], [0, 1]).arms]
    assert labels == ["full-s0", "full-s1", "random-r0.3-s0", "random-r0.3-s1"]


def test_collect_results_counts_evaluation_neither_as_training_nor_as_overhead(tmp_path, monkeypatch):
    """The plateau study's results.json had overhead_seconds -421 s for the full arm: the train manifest's seconds
    include the evaluations during training, which the cost leaves out."""
    import json
    from types import SimpleNamespace

    import diffprune.report as report
    from diffprune.pipeline.sweep import collect_results

    (tmp_path / "arms.json").write_text(json.dumps([{"arm": "full-s0", "seed": 0, "snr_gamma": None}]))
    arm = SimpleNamespace(arm="full-s0", method="full", reweighted=False, variant="", ratio=None, train_images=10,
                          manifests={"train": {"seconds": 1247.556, "eval_seconds": 421.6}},
                          cost={"seconds": 825.973}, speedup={"by_wall_clock": 1.0, "by_images": 1.0},
                          reference={"trained": {"overheads": {"images": 0, "seconds": 0.0}}},
                          metric=lambda name: None)
    monkeypatch.setattr(report, "collect_run", lambda root: SimpleNamespace(arms=[arm]))
    row = collect_results(tmp_path)[0]
    assert row["train_seconds"] == pytest.approx(1247.556 - 421.6)
    assert row["overhead_seconds"] == pytest.approx(825.973 - (1247.556 - 421.6)) and row["overhead_seconds"] >= 0
    assert row["eval_seconds"] == 421.6 and row["method"] == "full" and row["overhead_images"] == 0
