"""The whole pipeline, CI-sized: every stage on real data (digits), through the CLI, then cache hits and resume."""
import json

import numpy as np
import pytest
import yaml
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
    for stage in ("features/efficientnet-lite0-size112", "selection/gaussian-r0.5", "selection/random-r0.5", "reference",
                  "reweight/gaussian-r0.5", "train/gaussian+dro", "train/random", "samples/random", "eval/random"):
        m = json.loads((root / stage / "manifest.json").read_text())
        assert m["seconds"] >= 0 and m["config_hash"] and (root / stage / "config.yaml").exists(), stage
    feats = np.load(root / "features/efficientnet-lite0-size112/features.npy", mmap_mode="r")  # demo: options {size: 112}
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
    # config.yaml shows the resolved config: the preset's recipe filled in, not null
    import yaml

    from diffprune.diffusion.models import get_preset

    recipe = get_preset("ddpm-tiny").recipe
    train_cfg = yaml.safe_load((root / "train/random/config.yaml").read_text())
    assert train_cfg["lr"] == recipe.lr and train_cfg["warmup_steps"] == recipe.warmup_steps
    assert train_cfg["ema_decay"] == 0.99 and train_cfg["hflip"] == recipe.hflip  # set by the demo config / recipe
    assert yaml.safe_load((root / "reweight/gaussian-r0.5/config.yaml").read_text())["lr"] is not None
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
    # in images too: the reference's and DRO's images are DRO's overheads; random's are none
    assert rand["overhead_images"] == 0 and dro["overhead_images"] > 0
    expect = full["images_seen"] / (dro["images_seen"] + dro["overhead_images"])
    assert dro["speedup_images"] == pytest.approx(expect, rel=1e-6)
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
    # the recorded null seed is the one the null reference was trained with
    assert band["null_seed"] == yaml.safe_load((demo_run / "reference-null/config.yaml").read_text())["seed"]
    assert json.loads((demo_run / "reference-null/manifest.json").read_text())["stage"] == "reference"
    # the band recomputed from the two weight files (the oracle)
    a0 = np.array(list(null.values()))
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


def _copy_run(demo_run, tmp_path):
    import shutil

    shutil.copytree(demo_run, tmp_path / "demo", symlinks=True)
    return tmp_path / "demo"


def _weights(path):
    from safetensors.torch import load_file

    return load_file(path)


def test_more_train_steps_extend_the_finished_run_to_the_weights_of_one_long_run(demo_run, tmp_path):
    import torch

    root = _copy_run(demo_run, tmp_path)
    before = json.loads((root / "train/random/manifest.json").read_text())
    result = CliRunner().invoke(app, ["train", "--arm", "random", "--no-progress", *_args(tmp_path, "train.steps=9")],
                                catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert "extend  train" in result.output and "cached  select" in result.output
    m = json.loads((root / "train/random/manifest.json").read_text())
    assert m["summary"]["resumed_from"] == 6 and m["summary"]["steps"] == 9
    assert [a["steps"] for a in m["attempts"]] == [6, 9] and m["attempts"][1]["resumed_from"] == 6
    assert m["seconds"] == pytest.approx(before["seconds"] + m["attempts"][1]["seconds"], abs=2e-3)
    extended = {n: _weights(root / "train/random" / n) for n in ("model/diffusion_pytorch_model.safetensors",
                                                                   "state/model.safetensors", "state/ema.safetensors")}
    # the oracle: the same 9 steps from step 0 in the same folder (forced, so no checkpoint is resumed)
    result = CliRunner().invoke(app, ["train", "--arm", "random", "--force", "--no-progress",
                                      *_args(tmp_path, "train.steps=9")], catch_exceptions=False)
    assert result.exit_code == 0 and "run     train" in result.output
    straight = json.loads((root / "train/random/manifest.json").read_text())
    assert straight["summary"]["resumed_from"] is None and len(straight["attempts"]) == 1
    for name, weights in extended.items():
        again = _weights(root / "train/random" / name)
        assert weights.keys() == again.keys()
        for k in weights:
            assert torch.equal(weights[k], again[k]), f"{name}:{k}"
    # a shorter budget cannot rewind the 9-step checkpoint: it retrains from step 0
    result = CliRunner().invoke(app, ["train", "--arm", "random", "--no-progress", *_args(tmp_path)],
                                catch_exceptions=False)
    assert result.exit_code == 0 and "run     train" in result.output
    assert json.loads((root / "train/random/manifest.json").read_text())["summary"]["resumed_from"] is None


@pytest.mark.parametrize("bad,match", [
    ("select.device=cuda", "select.device"),  # on a machine without CUDA
    ("data.resolution=17", "multiple of"),  # the presets down-sample by 2: refused before embedding
    ("train.log_with=[wandb]", "wandb"),  # a tracker whose package is missing
])
def test_a_failed_start_computes_nothing_and_leaves_every_stage_cached(demo_run, tmp_path, bad, match):
    import importlib.util

    import torch

    if bad.startswith("select.device") and torch.cuda.is_available():
        pytest.skip("CUDA is available here")
    if "wandb" in bad and importlib.util.find_spec("wandb") is not None:
        pytest.skip("wandb is installed here")
    root = _copy_run(demo_run, tmp_path)
    stamps = {p: p.stat().st_mtime_ns for p in root.rglob("*") if p.is_file()}
    result = CliRunner().invoke(app, ["run", "configs/demo.yaml", "--no-progress", *_args(tmp_path, bad, "train.steps=9")])
    assert result.exit_code != 0 and match in str(result.exception), (result.output, result.exception)
    assert "run     " not in result.output and "extend  " not in result.output
    assert {p: p.stat().st_mtime_ns for p in root.rglob("*") if p.is_file()} == stamps  # nothing written
    result = CliRunner().invoke(app, ["run", "configs/demo.yaml", "--no-progress", *_args(tmp_path)],
                                catch_exceptions=False)
    assert result.exit_code == 0
    assert "run     " not in result.output and "extend  " not in result.output
    assert result.output.count("cached  train") == 2


def test_dry_run_prints_resolved_configs_and_statuses_and_writes_nothing(demo_run, tmp_path):
    root = _copy_run(demo_run, tmp_path)
    stamps = {p: p.stat().st_mtime_ns for p in root.rglob("*") if p.is_file()}
    result = CliRunner().invoke(app, ["run", "configs/demo.yaml", "--dry-run", *_args(tmp_path, "train.steps=9",
                                                                                    "evaluate.num_real=20")],
                                catch_exceptions=False)
    assert result.exit_code == 0, result.output
    out = result.output
    assert "cached  embed" in out and "cached  reweight" in out and "extend  train     train/random" in out
    from diffprune.diffusion.models import get_preset

    assert f"lr: {get_preset('ddpm-tiny').recipe.lr}" in out and "steps: 9" in out  # resolved recipe, new budget
    assert "run     evaluate  (after train" in out  # downstream of a stage that would compute
    result = CliRunner().invoke(app, ["train", "--arm", "random", "--dry-run", *_args(tmp_path, "train.steps=9")],
                                catch_exceptions=False)
    assert "extend  train     train/random" in result.output and " sample " not in result.output  # up to the verb
    assert {p: p.stat().st_mtime_ns for p in root.rglob("*") if p.is_file()} == stamps
    fresh = tmp_path / "fresh"
    result = CliRunner().invoke(app, ["run", "configs/demo.yaml", "--dry-run", *_args(fresh, "embed.options.size=64")],
                                catch_exceptions=False)
    assert result.exit_code == 0, result.output
    # the features folder is keyed by the encoder's options: another size never overwrites the cached one
    assert "run     embed     features/efficientnet-lite0-size64" in result.output
    assert "run     reference (after embed" in result.output and "run     evaluate  (after embed" in result.output
    assert not fresh.exists()


def test_a_verb_on_other_data_names_its_run_after_the_data(tmp_path):
    from diffprune.cli import _pipeline, run_name_for

    assert run_name_for("imagefolder:/data/pets/") == "pets" and run_name_for("cifar10") == "cifar10"
    pipe = _pipeline(None, ["data.spec=digits", f"runs_dir={tmp_path}"], None, (), True, dry_run=True, data="digits")
    assert pipe.root == tmp_path / "digits"
    pipe = _pipeline(None, ["data.spec=digits", f"runs_dir={tmp_path}"], "mine", (), True, dry_run=True, data="digits")
    assert pipe.root == tmp_path / "mine"
