"""The whole pipeline, CI-sized: every stage on real data (digits), through the CLI, then cache hits and resume."""
import json

import numpy as np
import pytest
from typer.testing import CliRunner

from diffprune.cli import app

TINY = [
    "data.limit=120", "data.resolution=8", "data.resize=pad",
    "embed.batch_size=60",
    "select.ratio=0.5",
    "reweight.steps=6", "reweight.batch_size=20", "reweight.reference_steps=6", "reweight.checkpoint_every=3",
    "train.preset=ddpm-tiny", "train.steps=6", "train.batch_size=16", "train.checkpoint_every=3",
    "sample.num_samples=12", "sample.steps=3", "sample.batch_size=12",
    "evaluate.num_real=24", "evaluate.kid_subset_size=10", "evaluate.kid_subsets=5",
    "evaluate.metrics=[fid, kid, prdc]", "evaluate.prdc_k=3", "evaluate.classwise=false", "evaluate.cross_check=false",
]


def _args(tmp_path, *extra):
    out = []
    for item in [*TINY, f"runs_dir={tmp_path}", *extra]:
        out += ["--set", item]
    return out


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("runs")
    result = CliRunner().invoke(app, ["run", "configs/demo.yaml", "--no-progress", *_args(tmp)], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return tmp / "demo"


def test_run_writes_every_stage_with_manifests(demo_run):
    root = demo_run
    for stage in ("features/efficientnet-lite0", "selection/gaussian-r0.5", "selection/random-r0.5", "reference",
                  "reweight/gaussian-r0.5", "train/gaussian+dro", "train/random", "samples/random", "eval/random"):
        m = json.loads((root / stage / "manifest.json").read_text())
        assert m["seconds"] >= 0 and m["config_hash"] and (root / stage / "config.yaml").exists(), stage
    feats = np.load(root / "features/efficientnet-lite0/features.npy", mmap_mode="r")
    assert feats.shape == (120, 1280) and np.isfinite(feats).all()
    with np.load(root / "selection/gaussian-r0.5/selection.npz") as z:
        idx = z["indices"]
    assert len(idx) == 60 and np.all(np.diff(idx) > 0)
    weights = json.loads((root / "reweight/gaussian-r0.5/class_weights.json").read_text())
    assert len(weights) == 10 and abs(sum(weights.values()) - 1) < 1e-6
    with np.load(root / "samples/gaussian+dro/samples.npz") as z:
        assert z["arr_0"].shape == (12, 8, 8, 1) and z["arr_0"].dtype == np.uint8
    metrics = json.loads((root / "eval/gaussian+dro/metrics.json").read_text())
    assert np.isfinite(metrics["fid"]) and metrics["protocol"]["num_generated"] == 12
    report = (root / "report/report.md").read_text()
    assert "gaussian+dro" in report and "random" in report
    assert (root / "report/report.html").exists()


def test_second_run_is_all_cache_hits(demo_run):
    result = CliRunner().invoke(app, ["run", "configs/demo.yaml", "--no-progress", *_args(demo_run.parent)],
                                catch_exceptions=False)
    assert result.exit_code == 0
    assert "run     train" not in result.output and "cached  train" in result.output


def test_changed_ratio_reruns_only_downstream(demo_run, tmp_path):
    result = CliRunner().invoke(app, ["select", "--no-progress", "--arm", "random", *_args(demo_run.parent, "select.ratio=0.25")],
                                catch_exceptions=False)
    assert result.exit_code == 0
    assert "cached  embed" in result.output and "run     select" in result.output
    with np.load(demo_run / "selection/random-r0.25/selection.npz") as z:
        assert len(z["indices"]) == 30


def test_bad_config_value_is_one_line_not_a_traceback(tmp_path, capsys):
    from diffprune.cli import main
    import sys

    argv = sys.argv
    sys.argv = ["diffprune", "select", "--set", "select.ratio=2", "--set", f"runs_dir={tmp_path}"]
    try:
        with pytest.raises(SystemExit) as e:
            main()
    finally:
        sys.argv = argv
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert "select.ratio: got 2" in err and "Traceback" not in err


def test_sweep_shares_cached_stages_and_writes_results(demo_run):
    args = ["sweep", "configs/demo.yaml", "--methods", "random,gaussian+dro", "--ratios", "0.5", "--seeds", "0",
            "--no-progress", *_args(demo_run.parent)]
    result = CliRunner().invoke(app, args, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert "cached  embed" in result.output and "cached  reference" in result.output
    rows = json.loads((demo_run / "results.json").read_text())
    assert [r["arm"] for r in rows] == ["full-s0", "random-r0.5-s0", "gaussian+dro-r0.5-s0"]
    full, rand, dro = rows
    assert full["ratio"] == 1.0 and full["speedup"] == pytest.approx(1.0, rel=1e-6)
    # the speed-up is recomputed here from the manifests (the oracle): full-data training time / (arm training + overheads)
    expect = full["train_seconds"] / (rand["train_seconds"] + rand["overhead_seconds"])
    assert rand["speedup"] == pytest.approx(expect, rel=1e-2)
    # DRO's arm is charged embedding, selection, reference and DRO; random reads no features
    assert dro["overhead_seconds"] > rand["overhead_seconds"] >= 0 and all(r["fid"] is not None for r in rows)
    table = (demo_run / "results.md").read_text()
    assert "| random | 0.5 | 1 |" in table and (demo_run / "results.csv").exists()


def test_changing_dro_steps_keeps_the_reference_cached(demo_run):
    result = CliRunner().invoke(app, ["reweight", "--no-progress", *_args(demo_run.parent, "reweight.steps=4")],
                                catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert "cached  reference" in result.output and "run     reweight" in result.output


def test_null_control_from_the_cli_writes_null_weights_and_the_report_shows_the_band(demo_run):
    from diffprune.reweighting import load_class_weights

    result = CliRunner().invoke(app, ["reweight", "--null-control", "--no-progress", *_args(demo_run.parent)],
                                catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert "cached  reference" in result.output and "null band" in result.output
    out = demo_run / "reweight/gaussian-r0.5"
    real = load_class_weights(out / "class_weights.json")  # the plain {class: weight} contract is unchanged
    null = load_class_weights(out / "null_weights.json", list(real))
    band = json.loads((out / "null_control.json").read_text())
    assert json.loads((demo_run / "reference-null/manifest.json").read_text())["stage"] == "reference"
    # the band recomputed from the two weight files (the oracle)
    a, a0 = np.array(list(real.values())), np.array(list(null.values()))
    d = np.abs(a0 - 0.1).max()
    assert band["band_halfwidth"] == pytest.approx(d, rel=1e-9)
    assert band["distinguishable"] == [n for n, w in real.items() if abs(w - 0.1) > d]
    assert set(band["distinguishable"]) | set(band["indistinguishable"]) == set(real)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["null"]["band_halfwidth"] == band["band_halfwidth"]
    assert summary["proxy_reference"]["setting"] == "doremi"  # same preset, same 6 steps
    result = CliRunner().invoke(app, ["report", str(demo_run)], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    report = (demo_run / "report/report.md").read_text()
    from diffprune.report.document import fmt

    assert f"moved weights up to {fmt(band['band_halfwidth'])} from uniform" in report
    inside = ", ".join(band["indistinguishable"]) or "none"
    assert (f"inside (indistinguishable from noise): {inside}" in report if band["distinguishable"]
            else "the weights are indistinguishable from noise" in report)


def test_reweight_on_kmeans_clusters_from_the_cli(tmp_path):
    # random selection: k-means of 120 tiny digits may leave a cluster too small for a per-group Gaussian
    result = CliRunner().invoke(app, ["reweight", "--clusters", "3", "--no-progress",
                                      *_args(tmp_path, "arms=[{method: random, reweight: true}]")],
                                catch_exceptions=False)
    assert result.exit_code == 0, result.output
    weights = json.loads((tmp_path / "demo/reweight/random-r0.5/class_weights.json").read_text())
    assert sorted(weights) == ["cluster0", "cluster1", "cluster2"] and abs(sum(weights.values()) - 1) < 1e-6


def test_export_writes_the_dro_weighted_coreset_and_a_pipeline(demo_run):
    from diffusers import DDIMPipeline

    from diffprune.export import read_coreset

    result = CliRunner().invoke(app, ["export", str(demo_run), "--arm", "gaussian+dro", "--no-progress"],
                                catch_exceptions=False)
    assert result.exit_code == 0, result.output
    weights = json.loads((demo_run / "reweight/gaussian-r0.5/class_weights.json").read_text())
    rows = read_coreset(demo_run / "export/gaussian+dro/coreset.csv")
    plain = read_coreset(demo_run / "selection/gaussian-r0.5/coreset.jsonl")
    with np.load(demo_run / "selection/gaussian-r0.5/selection.npz") as z:
        assert [r["index"] for r in rows] == [r["index"] for r in plain] == z["indices"].tolist()
    for r in rows:  # train.weighting "loss" (the default): uniform draws, loss x a_k / p_k = 10 a_k (6 of each class)
        assert r["loss_weight"] == pytest.approx(10 * weights[r["group"]]) and r["sampling_probability"] == pytest.approx(1 / 60)
    assert {r["loss_weight"] for r in plain} == {1.0}
    pipe = DDIMPipeline.from_pretrained(demo_run / "train/gaussian+dro/pipeline")
    assert pipe.unet.config.sample_size == 8
    assert (demo_run / "export/gaussian+dro/pipeline/model_index.json").is_file()


def test_library_coreset_of_a_run_arm(demo_run):
    import diffprune

    core = diffprune.coreset(demo_run, arm="gaussian+dro")
    weights = json.loads((demo_run / "reweight/gaussian-r0.5/class_weights.json").read_text())
    with np.load(demo_run / "selection/gaussian-r0.5/selection.npz") as z:
        np.testing.assert_array_equal(core.indices, z["indices"])
    a = np.array([weights[core.group_names[g]] for g in core.groups])
    np.testing.assert_allclose(core.loss_weights, 10 * a)
    per_group = np.bincount(core.groups, minlength=10)
    np.testing.assert_allclose(core.probabilities, a / per_group[core.groups])  # class k drawn with probability a_k
    assert len(core.subset(np.zeros((120, 1)))) == 60  # any indexable dataset of the run's 120 rows
