"""No silent wrong numbers (issue 28): a non-finite metric is an error, never a result, and a group that
selection empties stops the arms that need it (DRO, conditional training) by the documented rule."""
from __future__ import annotations

import sys

import numpy as np
import pytest

from diffprune.cli import main
from diffprune.evaluation.errors import EvaluationError, non_finite, require_finite
from diffprune.pipeline import Pipeline, load_run_config
from diffprune.pipeline.config import ConfigError


def _stats(path, mu, sigma):
    np.savez(path, mu=mu, sigma=sigma, count=np.int64(10))
    return path


def test_fid_of_a_nan_statistics_file_is_a_one_line_error(tmp_path, monkeypatch, capsys):
    rng = np.random.default_rng(0)
    a = rng.normal(size=(50, 4))
    good = _stats(tmp_path / "good.npz", a.mean(0), np.cov(a, rowvar=False))
    mu = a.mean(0)
    mu[2] = np.nan
    bad = _stats(tmp_path / "bad.npz", mu, np.cov(a, rowvar=False))
    out = tmp_path / "fid.json"
    monkeypatch.setattr(sys, "argv", ["diffprune", "fid", str(good), str(bad), "--out", str(out), "--no-progress"])
    with pytest.raises(SystemExit) as e:
        main()
    err = capsys.readouterr().err
    lines = [ln for ln in err.splitlines() if ln.strip() and not ln.startswith(("ran on", "| "))]  # status line
    assert e.value.code == 2 and len(lines) == 1 and lines[0].startswith("error:"), err
    assert str(bad) in lines[0] and "'mu'" in lines[0] and "recompute" in lines[0]
    assert not out.exists()  # nothing written


def test_fid_of_two_finite_statistics_files_is_the_frechet_distance(tmp_path, monkeypatch, capsys):
    mu1, mu2, sigma = np.zeros(3), np.array([1.0, 2.0, 2.0]), np.eye(3)
    a, b = _stats(tmp_path / "a.npz", mu1, sigma), _stats(tmp_path / "b.npz", mu2, sigma)
    monkeypatch.setattr(sys, "argv", ["diffprune", "fid", str(a), str(b), "--out", str(tmp_path / "o.json")])
    with pytest.raises(SystemExit) as e:
        main()
    import json

    assert e.value.code in (0, None)
    assert json.loads((tmp_path / "o.json").read_text())["fid"] == pytest.approx(9.0)  # |mu1 - mu2|^2, same sigma


def test_non_finite_metrics_are_named():
    values = {"fid": 3.0, "kid": float("inf"), "classwise": {"a": np.float64("nan"), "b": 1.0}, "n": 4}
    assert non_finite(values) == ["kid", "classwise.a"]
    with pytest.raises(EvaluationError, match=r"kid=inf, classwise.a=nan"):
        require_finite(values, "the test", "fix it")
    require_finite({"fid": 1.0, "note": None}, "the test", "fix it")


TINY = ["data.limit=60", "data.resolution=8", "data.resize=pad", "embed.encoder=pixels", "select.ratio=0.05",
        "select.per_class=false"]


def _pipe(tmp_path, arms):
    cfg = load_run_config("configs/demo.yaml", [*TINY, f"arms={arms}", f"runs_dir={tmp_path}"])
    return Pipeline(cfg, progress=False)


def test_a_group_that_selection_empties_stops_a_dro_arm(tmp_path):
    pipe = _pipe(tmp_path, "[{method: random, reweight: true}]")
    arm = pipe.cfg.arms[0]
    sel, _ = pipe.select(arm)
    kept = set(np.unique(sel.groups[sel.indices]).tolist())
    emptied = [name for k, name in enumerate(sel.group_names) if k not in kept]
    assert emptied  # 3 of 60 images cannot cover 10 groups
    with pytest.raises(ConfigError) as e:
        pipe.training_set(arm)
    assert all(name in str(e.value) for name in emptied[:8]) and "DRO" in str(e.value)
    assert not (tmp_path / "demo" / "reference").exists()  # stopped before any DRO work


def test_an_unconditional_arm_without_dro_trains_on_the_groups_it_kept(tmp_path):
    pipe = _pipe(tmp_path, "[{method: random}]")
    if pipe.train_config(pipe.cfg.arms[0]).conditional:
        pytest.skip("the demo config trains a conditional model")
    data, _ = pipe.training_set(pipe.cfg.arms[0])
    assert len(data) == 3
