"""What a user sees of where and how a command ran (``diffprune.provenance``), precision words and launches,
and the small command-line promises: ``python -m diffprune``, escaped markup, ``fid`` and ``data.skip_bad``,
dry runs that need no data and write nothing."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from diffprune.pipeline import Pipeline, load_run_config
from diffprune.provenance import provenance, provenance_line

ROOT = Path(__file__).resolve().parent.parent


def _cli(*args: str, cwd: Path, env: dict | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1",
           "COLUMNS": "250", **(env or {})}
    return subprocess.run([sys.executable, "-m", "diffprune", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=600)


def test_mixed_precision_no_means_no(tmp_path):
    # YAML 1.1 reads a bare `no` as false; accelerate spells the mode "no"
    cfg = load_run_config(None, ["train.mixed_precision=no", "sample.mixed_precision=no",
                                 "reweight.mixed_precision=no"])
    assert (cfg.train.mixed_precision, cfg.sample.mixed_precision, cfg.reweight.mixed_precision) == ("no",) * 3
    (tmp_path / "run.yaml").write_text("train:\n  mixed_precision: no\n")
    assert load_run_config(tmp_path / "run.yaml").train.mixed_precision == "no"
    assert load_run_config(None, ["train.mixed_precision=bf16"]).train.mixed_precision == "bf16"
    assert load_run_config(None).train.mixed_precision is None  # unset: the launch decides
    with pytest.raises(ValueError, match="mixed_precision"):
        load_run_config(None, ["train.mixed_precision=yes"])  # true is not a mode


def test_provenance_under_a_bf16_launch(monkeypatch):
    monkeypatch.setenv("ACCELERATE_MIXED_PRECISION", "bf16")  # what `accelerate launch --mixed_precision bf16` sets
    record = provenance(None, None)
    assert record["training_precision"] == "bf16" and record["training_precision_from"] == "launch"
    assert record["sampling_precision"] == "bf16" and record["sampling_precision_from"] == "launch"
    assert record["launcher"] == "accelerate launch --mixed_precision bf16"  # the parent (pytest) is no launcher
    assert record["threads"] == torch.get_num_threads() and record["processes"] == 1
    line = provenance_line(record)
    assert "training bf16 (launch)" in line and "sampling bf16 (launch)" in line
    assert f"{torch.get_num_threads()} thread" in line and "1 process" in line
    assert "\n" not in line
    mine = provenance("no", "fp16")  # the config wins over the launch
    assert (mine["training_precision"], mine["training_precision_from"]) == ("no", "config")
    assert (mine["sampling_precision"], mine["sampling_precision_from"]) == ("fp16", "config")
    monkeypatch.delenv("ACCELERATE_MIXED_PRECISION")
    plain = provenance(None, None)
    assert plain["launcher"] is None and plain["training_precision"] == "no"
    assert plain["training_precision_from"] == "default"


def test_sampling_follows_the_launch_precision_unless_set(monkeypatch, tmp_path):
    from diffprune.diffusion.sampling import sampling_autocast

    cfg = load_run_config(None, [f"runs_dir={tmp_path}"])
    assert Pipeline(cfg).sample_config().mixed_precision == "no"  # no launch: full precision, as before
    monkeypatch.setenv("ACCELERATE_MIXED_PRECISION", "bf16")
    assert Pipeline(cfg).sample_config().mixed_precision == "bf16"
    with sampling_autocast(torch.device("cpu"), None):  # the oracle: what a matmul actually computes in
        assert (torch.ones(4, 4) @ torch.ones(4, 4)).dtype == torch.bfloat16
    with sampling_autocast(torch.device("cpu"), "no"):
        assert (torch.ones(4, 4) @ torch.ones(4, 4)).dtype == torch.float32
    pinned = load_run_config(None, [f"runs_dir={tmp_path}", "sample.mixed_precision=no"])
    assert Pipeline(pinned).sample_config().mixed_precision == "no"


def test_command_json_and_manifests_record_the_launch(monkeypatch, tmp_path):
    monkeypatch.setenv("ACCELERATE_MIXED_PRECISION", "bf16")
    cfg = load_run_config(None, [f"runs_dir={tmp_path}", "data.limit=40", "embed.encoder=pixels"], name="p")
    pipe = Pipeline(cfg, progress=False)
    pipe.command = ["run", "x.yaml"]
    pipe.write_run_files()
    recorded = json.loads((tmp_path / "p" / "command.json").read_text())
    assert recorded["command"] == "accelerate launch --mixed_precision bf16 ... diffprune run x.yaml"
    assert recorded["provenance"]["training_precision"] == "bf16" and recorded["argv"] == ["diffprune", "run", "x.yaml"]
    pipe.embed()
    manifest = json.loads(next((tmp_path / "p" / "features").glob("*/manifest.json")).read_text())
    assert manifest["provenance"]["training_precision"] == "bf16"
    assert manifest["provenance"]["threads"] == torch.get_num_threads()


def test_python_m_diffprune_datasets_prints_the_extras_and_the_start_line(tmp_path):
    listed = _cli("datasets", cwd=tmp_path)
    assert listed.returncode == 0, listed.stderr
    text = " ".join(listed.stdout.split())  # the table wraps long descriptions
    assert "diffprune[hf]" in text and "diffprune[webdataset]" in text  # not swallowed as rich markup
    dry = _cli("run", "demo", "--dry-run", "--no-progress", "--set", f"runs_dir={tmp_path / 'runs'}", cwd=tmp_path,
               env={"ACCELERATE_MIXED_PRECISION": "bf16"})
    assert dry.returncode == 0, dry.stderr
    start = " ".join(dry.stderr.split("\n─")[0].split())  # the first line(s), before the first arm's rule
    assert start.startswith("ran on devices") and "training bf16 (launch)" in start
    assert "sampling bf16 (launch)" in start
    assert "launched by: accelerate launch --mixed_precision bf16" in start


def test_dry_run_needs_no_data_and_writes_nothing(tmp_path):
    work = tmp_path / "work"
    work.mkdir()
    # CIFAR-10 is not on disk here (an empty root): the plan still prints, nothing is downloaded or written
    result = _cli("run", "cifar10-ddpm", "--dry-run", "--no-progress", "--set", f"data.root={tmp_path / 'none'}",
                  "--set", f"runs_dir={work / 'runs'}", cwd=work)
    assert result.returncode == 0, result.stderr
    assert "unknown until loaded" in result.stderr and "embed" in result.stderr
    assert list(work.iterdir()) == [] and not (tmp_path / "none").exists()


def test_fid_honours_skip_bad_for_a_dataset_spec(tmp_path, monkeypatch):
    from typer.testing import CliRunner

    import diffprune.evaluation.compare as compare_module
    from diffprune.cli import app
    from diffprune.data import DatasetError

    folder = tmp_path / "imgs"
    folder.mkdir()
    for i in range(3):
        Image.fromarray(np.full((8, 8, 3), 40 * i, np.uint8)).save(folder / f"{i}.png")
    (folder / "bad.png").write_bytes(b"not a png")
    spec = f"imagefolder:{folder}"
    with pytest.raises(DatasetError, match="skip_bad"):
        compare_module.load_side(spec)
    assert len(compare_module.load_side(spec, skip_bad=True)) == 3
    seen = {}
    monkeypatch.setattr(compare_module, "compare", lambda a, b, ec, **kw: seen.update(kw) or {"fid": 0.0})
    result = CliRunner().invoke(app, ["fid", spec, spec, "-s", "data.skip_bad=true"], catch_exceptions=False)
    assert result.exit_code == 0 and seen["skip_bad"] is True


def test_dry_run_does_not_build_an_image_cache(tmp_path):
    from diffprune.data import DatasetError, load_dataset

    folder = tmp_path / "imgs" / "cat"
    folder.mkdir(parents=True)
    for i in range(3):
        Image.fromarray(np.full((8, 8, 3), 40 * i, np.uint8)).save(folder / f"{i}.png")
    spec, cache = f"imagefolder:{tmp_path / 'imgs'}", tmp_path / "cache"
    with pytest.raises(DatasetError, match="not built yet"):
        load_dataset(spec, resolution=8, cache_dir=str(cache), download=False)
    assert not cache.exists()
    built = load_dataset(spec, resolution=8, cache_dir=str(cache))  # a real read builds it
    again = load_dataset(spec, resolution=8, cache_dir=str(cache), download=False)  # then a dry run reads it
    np.testing.assert_array_equal(again.images, built.images)
