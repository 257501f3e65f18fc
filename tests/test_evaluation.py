"""evaluate(), feature extraction, caching, the classifier, class-wise FID and speed-up accounting.

Most tests use a tiny random conv net as the feature network (the plumbing is network-agnostic); one test runs
the real FID Inception on a handful of images (~1 s per image on the shared CPU).
"""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from diffprune.config import ConfigError, validate_config
from diffprune.data import ImageDataset, load_dataset
from diffprune.evaluation import (
    EvalConfig,
    EvaluationError,
    compute_speedup,
    evaluate,
    extract_features,
    fid_from_features,
    load_ref_stats,
    plateau_change,
    read_metrics_jsonl,
    summarise_cost,
    time_to_target,
)
from diffprune.evaluation.classifier import predict, stratified_holdout, train_classifier
from diffprune.evaluation.config import ClassifierConfig


class TinyNet(torch.nn.Module):
    """A fixed random feature network: float B x 3 x H x W in [0, 255] -> B x 12."""

    num_features = 12
    name = "tiny-test-net"

    def __init__(self) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.conv = torch.nn.Conv2d(3, 12, 3)
        with torch.no_grad():
            self.conv.weight.copy_(torch.randn(self.conv.weight.shape, generator=g))
            self.conv.bias.zero_()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        assert x.dtype == torch.float32 and x.shape[1] == 3
        return torch.tanh(self.conv(x / 255.0)).mean(dim=(2, 3))


def independent_features(images_nchw: np.ndarray) -> np.ndarray:
    """The same network applied to the whole set at once, without diffprune's extractor."""
    net = TinyNet().eval()
    with torch.no_grad():
        x = torch.from_numpy(images_nchw).float().expand(-1, 3, -1, -1)
        return net(x).double().numpy()



@pytest.fixture(scope="module")
def digits() -> ImageDataset:
    return load_dataset("digits", "train")


FAST = dict(classifier={"epochs": 3}, kid_subsets=5)


def test_extract_features_layouts_batches_and_grey(digits):
    imgs = digits.images[:23]
    want = independent_features(imgs)
    a = extract_features(imgs, TinyNet(), batch_size=5, progress=False, device="cpu")
    b = extract_features(imgs.transpose(0, 2, 3, 1), TinyNet(), batch_size=64, progress=False, device="cpu")
    assert a.dtype == np.float64 and a.shape == (23, 12)
    np.testing.assert_allclose(a, want, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(b, a, rtol=1e-6, atol=1e-7)
    rgb = np.repeat(imgs, 3, axis=1)  # grey repeated to RGB gives the same features
    np.testing.assert_allclose(extract_features(rgb, TinyNet(), 8, False, device="cpu"), a, rtol=1e-6, atol=1e-7)


def test_extract_features_rejects_float_images():
    with pytest.raises(EvaluationError, match="uint8"):
        extract_features(np.zeros((2, 8, 8, 3), np.float32), TinyNet(), progress=False)


def test_evaluate_writes_metrics_with_protocol_and_caches_reference(digits, tmp_path):
    rng = np.random.default_rng(0)
    fake_idx = rng.choice(len(digits), 150, replace=False)
    samples = digits.images[fake_idx].transpose(0, 2, 3, 1).copy()
    samples[:50] = 255 - samples[:50]  # a visibly worse generator
    cfg = EvalConfig(num_real=600, **FAST)
    caller = {"sampler": "ddim", "sampler_steps": 10, "sample_seed": 3, "reference_split": "train"}
    res = evaluate(samples, digits, cfg, tmp_path / "eval", cache_dir=tmp_path / "cache", protocol=caller,
                   progress=False, network=TinyNet())

    on_disk = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert on_disk["fid"] == pytest.approx(res["fid"])
    # Oracle: the same network applied independently, the same reference subset.
    ref_idx = np.sort(np.random.default_rng(cfg.seed).choice(len(digits), 600, replace=False))
    real_f = independent_features(digits.images[ref_idx])
    fake_f = independent_features(samples.transpose(0, 3, 1, 2))
    assert res["fid"] == pytest.approx(fid_from_features(real_f, fake_f), rel=1e-4)
    assert res["details"]["fid"]["check"]["abs_diff"] < 1e-6 * max(1.0, res["fid"])
    for name in ("kid", "precision", "recall", "density", "coverage", "classifier_fd"):
        assert res[name] is not None, name
    assert "inception_score" not in res  # not in the default metrics: the FID Inception has no logits

    p = res["protocol"]
    assert p["feature_network"]["name"] == "tiny-test-net" and p["feature_network"]["weights_hash"]
    assert p["num_real"] == 600 and p["num_generated"] == 150
    assert p["reference"]["split"] == "train" and p["reference"]["fingerprint"] == digits.fingerprint
    assert p["caller"] == caller and p["seed"] == 0
    mu, sigma, count, proto = load_ref_stats(tmp_path / "eval" / "ref_stats.npz")
    np.testing.assert_allclose(mu, real_f.mean(0), rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(sigma, np.cov(real_f, rowvar=False), rtol=1e-3, atol=1e-6)
    assert count == 600 and proto["fingerprint"] == digits.fingerprint
    with np.load(tmp_path / "eval" / "ref_stats.npz") as z:  # pytorch-fid reads exactly these two keys
        assert z["mu"].shape == (12,) and z["sigma"].shape == (12, 12)

    again = evaluate(samples, digits, cfg, tmp_path / "eval2", cache_dir=tmp_path / "cache", protocol=caller,
                     progress=False, network=TinyNet())
    assert again["protocol"]["reference"]["statistics_cache_hit"] is True
    assert res["protocol"]["reference"]["statistics_cache_hit"] is False
    for k in ("fid", "kid", "precision", "recall", "classifier_fd", "classifier_test_accuracy"):
        assert again[k] == pytest.approx(res[k], rel=1e-9), k


def test_better_samples_get_better_scores(digits, tmp_path):
    rng = np.random.default_rng(1)
    good = digits.images[rng.choice(len(digits), 120, replace=False)].transpose(0, 2, 3, 1)
    bad = np.clip(good.astype(int) + rng.integers(-60, 60, good.shape), 0, 255).astype(np.uint8)
    cfg = EvalConfig(metrics=["fid", "prdc", "classifier_fd"], classwise=False, **FAST)
    g = evaluate(good, digits, cfg, tmp_path / "g", cache_dir=tmp_path / "c", progress=False, network=TinyNet())
    b = evaluate(bad, digits, cfg, tmp_path / "b", cache_dir=tmp_path / "c", progress=False, network=TinyNet())
    assert g["fid"] < b["fid"] and g["classifier_fd"] < b["classifier_fd"]
    assert g["precision"] > b["precision"]


def test_conditional_classwise_fid_uses_the_given_labels(digits, tmp_path):
    rng = np.random.default_rng(2)
    idx = rng.choice(len(digits), 300, replace=False)
    samples, labels = digits.images[idx], digits.labels[idx]
    cfg = EvalConfig(metrics=["fid", "classifier_fd"], **FAST)
    res = evaluate(samples, digits, cfg, tmp_path / "e", sample_labels=labels, progress=False, network=TinyNet())
    cw = res["classwise"]
    assert cw["available"] and cw["label_source"].startswith("conditioning labels")
    assert cw["generated_class_counts"] == np.bincount(labels, minlength=10).tolist()
    real_f = independent_features(digits.images)
    fake_f = independent_features(samples)
    for row in cw["fid"]:
        k = row["index"]
        want = fid_from_features(real_f[digits.labels == k], fake_f[labels == k])
        assert row["value"] == pytest.approx(want, rel=1e-4, abs=1e-7)
        assert row["num_fake"] == int((labels == k).sum())
    assert 0.5 < res["classifier_label_agreement"] <= 1.0  # real images labelled with their true class


def test_unconditional_classwise_fid_uses_the_classifier(digits, tmp_path):
    samples = digits.images[:200]
    cfg = EvalConfig(metrics=["fid"], **FAST)
    res = evaluate(samples, digits, cfg, tmp_path / "e", cache_dir=tmp_path / "c", progress=False, network=TinyNet())
    cw = res["classwise"]
    assert "classifier" in cw["label_source"] and sum(cw["generated_class_counts"]) == 200
    assert len(cw["fid"]) == 10 and len(cw["classifier_fd"]) == 10
    assert res["classifier_test_accuracy"] > 0.8


def test_classwise_without_a_feature_metric_never_loads_the_feature_network(digits, tmp_path, monkeypatch):
    """metrics [classifier_fd] with class-wise on: class-wise classifier FD, computed here from the classifier's
    own features per predicted class; the FID network (0.5 img/s on a CPU) is never loaded."""
    import importlib

    from diffprune.evaluation.classifier import classifier_outputs, load_or_train_classifier

    evaluate_module = importlib.import_module("diffprune.evaluation.evaluate")  # the package exports the function

    def no_network(*args, **kwargs):
        raise AssertionError("the feature network was loaded")

    monkeypatch.setattr(evaluate_module, "load_feature_network", no_network)
    samples = digits.images[:200]
    cfg = EvalConfig(metrics=["classifier_fd"], **FAST)
    res = evaluate(samples, digits, cfg, tmp_path / "e", cache_dir=tmp_path / "c", progress=False)
    cw = res["classwise"]
    assert cw["available"] and "fid" not in cw and len(cw["classifier_fd"]) == 10
    trained = load_or_train_classifier(digits, cfg.classifier, seed=cfg.seed, cache_dir=tmp_path / "c")
    assert trained.cache_hit
    real_f, _ = classifier_outputs(trained.model, digits.images)
    fake_f, logits = classifier_outputs(trained.model, samples)
    pred = logits.argmax(axis=1)
    for row in cw["classifier_fd"]:
        k = row["index"]
        if row["value"] is not None:
            want = fid_from_features(real_f[digits.labels == k], fake_f[pred == k])
            assert row["value"] == pytest.approx(want, rel=1e-4, abs=1e-6)


def test_two_processes_needing_one_classifier_train_it_once(digits, tmp_path, monkeypatch):
    """Two workers of a sweep evaluate at once: the second waits on the cache folder's lock and loads the first's
    weights (threads here: each takes its own OS lock on the folder, as processes do)."""
    import threading
    import time as time_module

    import diffprune.evaluation.classifier as classifier_module

    real_train, calls = classifier_module.train_classifier, []

    def slow_train(*args, **kwargs):
        calls.append(threading.get_ident())
        time_module.sleep(0.5)  # long enough for the other thread to find the lock held
        return real_train(*args, **kwargs)

    monkeypatch.setattr(classifier_module, "train_classifier", slow_train)
    cfg = ClassifierConfig(epochs=1)
    results = []

    def worker():
        results.append(classifier_module.load_or_train_classifier(digits, cfg, seed=0, cache_dir=tmp_path,
                                                                  progress=False))

    threads = [threading.Thread(target=worker) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(calls) == 1 and sorted(r.cache_hit for r in results) == [False, True]
    a, b = (r.model.state_dict() for r in results)
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_classifier_reports_held_out_accuracy(digits):
    cfg = ClassifierConfig(epochs=3)
    trained = train_classifier(digits, cfg, seed=0, progress=False)
    tr, te = stratified_holdout(digits.labels, cfg.holdout, 0)
    assert trained.info["num_test"] == len(te) and trained.info["num_train"] == len(tr)
    assert not set(tr) & set(te)
    acc = float((predict(trained.model, digits.images[te]) == digits.labels[te]).mean())
    assert trained.info["test_accuracy"] == pytest.approx(acc)
    assert acc > 0.8  # digits are easy: a broken trainer cannot reach this
    assert (np.bincount(digits.labels[te]) >= 17).all()  # stratified: every class held out


def test_unlabelled_reference_says_why_classwise_is_missing(digits, tmp_path):
    unlabelled = ImageDataset(digits.images[:300], None, [], name="unlabelled")
    res = evaluate(digits.images[300:400], unlabelled, EvalConfig(metrics=["fid", "classifier_fd"], **FAST),
                   tmp_path / "e", progress=False, network=TinyNet())
    assert res["classifier_fd"] is None and "unlabelled" in res["details"]["classifier_fd"]["reason"]
    assert res["classwise"]["available"] is False


def test_eval_config_rejects_unknown_metric_with_the_allowed_list():
    with pytest.raises(ConfigError, match="allowed: fid, kid, is, prdc, classifier_fd"):
        validate_config(EvalConfig, {"metrics": ["fid", "lpips"]})
    with pytest.raises(ConfigError, match="num_real"):
        validate_config(EvalConfig, {"num_real": 1})


def test_real_fid_inception_end_to_end(digits, tmp_path):
    from diffprune.encoders import load_fid_inception

    net = load_fid_inception(device="cpu")
    real = digits.subset(np.arange(4))
    res = evaluate(real.images.transpose(0, 2, 3, 1), real, EvalConfig(metrics=["prdc", "is"], classwise=False,
                   prdc_k=1, batch_size=4), tmp_path / "e", progress=False, network=net)
    feats = extract_features(real.images, net, 4, False, device="cpu")
    assert feats.shape == (4, 2048) and np.isfinite(feats).all() and feats.std(0).max() > 0
    assert res["precision"] == 1.0 and res["recall"] == 1.0  # the same images: identical features
    assert res["protocol"]["feature_network"]["name"] == "fid-inception"
    assert res["protocol"]["feature_network"]["num_features"] == 2048
    assert "299" in res["protocol"]["resize"]
    assert res["inception_score"] is None  # the TorchScript network has no logits, and the record says so
    with np.load(tmp_path / "e" / "ref_stats.npz") as z:
        assert z["mu"].shape == (2048,) and z["sigma"].shape == (2048, 2048)


# ------------------------------------------------------------------ speed-up accounting
def manifest(seconds, images=None, device="cpu", stage="train"):
    m = {"stage": stage, "seconds": seconds, "device": device}
    if images is not None:
        m["images_processed"] = images
    return m


def test_speedup_counts_every_overhead():
    full = manifest(1000.0, 640_000)
    pruned = {"embed": manifest(20.0, 60_000, stage="embed"), "select": manifest(5.0, 0, stage="select"),
              "reference": manifest(50.0, 12_800, stage="reference"), "reweight": manifest(25.0, 6_400),
              "train": manifest(200.0, 128_000)}
    s = compute_speedup(full, pruned)
    assert s["by_wall_clock"] == pytest.approx(1000 / 300)
    assert s["by_images"] == pytest.approx(640_000 / (60_000 + 12_800 + 6_400 + 128_000))
    assert s["pruned"]["overhead_seconds"] == pytest.approx(100.0)
    assert s["pruned"]["overhead_fraction"] == pytest.approx(1 / 3)
    assert s["notes"] == []


def test_speedup_without_image_counts_or_on_mixed_devices_says_so():
    s = compute_speedup({"train": manifest(100.0, 1000)},
                        {"select": manifest(1.0, device="cpu"), "train": manifest(24.0, 250, device="cuda")})
    assert s["by_wall_clock"] == pytest.approx(4.0) and s["by_images"] is None
    assert any("pruned:select" in n for n in s["notes"]) and any("different devices" in n for n in s["notes"])
    with pytest.raises(EvaluationError, match="seconds"):
        compute_speedup({"train": {"seconds": "soon"}}, {"train": manifest(1.0)})


def test_time_to_target_interpolates_between_evaluations(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text("\n".join(json.dumps(e) for e in [
        {"step": 100, "loss": 0.1}, {"step": 100, "fid": 80.0, "train_seconds": 100.0, "images_seen": 1000},
        {"step": 200, "fid": 40.0, "train_seconds": 200.0, "images_seen": 2000},
        {"step": 300, "fid": 30.0, "train_seconds": 300.0, "images_seen": 3000}]) + "\n{\"step\": 4")  # torn line
    full = read_metrics_jsonl(path)
    assert len(full) == 4
    pruned = [{"step": 50, "fid": 45.0, "train_seconds": 40.0, "images_seen": 400},
              {"step": 100, "fid": 29.0, "train_seconds": 80.0, "images_seen": 800}]
    # tol 0: target 30. Full reaches it at its last point (300 s). Pruned crosses 30 between 45 (40 s) and 29
    # (80 s) at (45 - 30) / (45 - 29) = 15/16 of the interval: 77.5 s, 775 images, step 96.875.
    t = time_to_target(full, pruned, tolerance=0.0, overheads={"seconds": 20.0, "images": 200})
    assert t["target_fid"] == 30.0 and t["reached"]
    assert t["pruned"]["seconds"] == pytest.approx(77.5) and t["pruned"]["step"] == pytest.approx(96.875)
    assert t["by_wall_clock"] == pytest.approx(300 / (77.5 + 20))
    assert t["by_images"] == pytest.approx(3000 / (775 + 200))
    # tol 0.5: target 45. Full crosses 45 between 80 (100 s) and 40 (200 s) at 35/40: 187.5 s. Pruned is at
    # 45 on its first evaluation: reached there (40 s), nothing assumed before it.
    t = time_to_target(full, pruned, tolerance=0.5)
    assert t["target_fid"] == 45.0 and t["full"]["seconds"] == pytest.approx(187.5)
    assert t["pruned"]["seconds"] == 40.0 and t["speedup"]["seconds"] == pytest.approx(187.5 / 40)
    # FLOPs derived from images: the same ratio as images when the overheads' FLOPs are proportional
    t = time_to_target(full, pruned, tolerance=0.0, per_image={"flops": 1e9}, overheads={"flops": 2e11})
    assert t["speedup"]["flops"] == pytest.approx(3000e9 / (775e9 + 2e11))


def test_time_to_target_never_reached_says_where_it_got(tmp_path):
    full = [{"step": 10, "fid": 50.0, "train_seconds": 10.0, "images_seen": 100},
            {"step": 20, "fid": 20.0, "train_seconds": 20.0, "images_seen": 200}]
    pruned = [{"step": 5, "fid": 40.0, "train_seconds": 5.0, "images_seen": 50},
              {"step": 10, "fid": 25.0, "train_seconds": 9.0, "images_seen": 100},
              {"step": 15, "fid": 26.0, "train_seconds": 14.0, "images_seen": 150}]
    never = time_to_target(full, pruned, tolerance=0.05)  # target 21
    assert not never["reached"] and never["pruned"] is None and never["by_wall_clock"] is None
    assert never["best"] == {"fid": 25.0, "step": 10, "seconds": 9.0, "images": 100.0}
    assert time_to_target(full, pruned, tolerance=0.25)["reached"]  # target 25: reached at its second point
    with pytest.raises(EvaluationError, match="eval-every"):
        time_to_target([{"step": 1, "loss": 0.3}], pruned)
    with pytest.raises(EvaluationError, match="tolerance"):
        time_to_target(full, pruned, tolerance=-0.1)


def test_plateau_change_interpolates_the_start_of_the_last_quarter():
    curve = [{"step": 100, "fid": 80.0}, {"step": 200, "fid": 40.0}, {"step": 400, "fid": 28.0}]
    # the last quarter starts at step 300, between 40 (200) and 28 (400): 34; 34 -> 28 is -6/34
    p = plateau_change(curve)
    assert p["from_step"] == 300.0 and p["fid_from"] == pytest.approx(34.0)
    assert p["change"] == pytest.approx(-6.0 / 34.0)
    assert plateau_change(curve, fraction=0.5)["change"] == pytest.approx((28.0 - 40.0) / 40.0)  # from step 200
    assert plateau_change(curve, fraction=0.8) is None  # step 80 precedes the first evaluation
    assert plateau_change(curve[:1]) is None
    with pytest.raises(EvaluationError, match="fraction"):
        plateau_change(curve, fraction=1.0)


def test_evaluation_time_is_not_a_training_cost():
    s = summarise_cost({"train": {"seconds": 100.0, "eval_seconds": 30.0, "images_processed": 10}})
    assert s["seconds"] == pytest.approx(70.0)


def test_flops_add_up_and_a_stage_without_network_work_counts_zero():
    train = {"seconds": 10.0, "images_processed": 10, "flops": 3e9}
    select = {"seconds": 1.0, "images_processed": 0}  # scores features: no image through a network
    assert summarise_cost({"select": select, "train": train})["flops"] == 3e9
    failed = {"seconds": 1.0, "images_processed": 0, "flops": None, "flops_error": "RuntimeError: x"}
    assert summarise_cost({"select": failed, "train": train})["flops"] is None  # unmeasured is not zero
    embed = {"seconds": 2.0, "images_processed": 5}  # images went through an encoder, FLOPs not recorded
    assert summarise_cost({"embed": embed, "train": train})["flops"] is None


def test_classifier_training_is_deterministic(digits):
    cfg = ClassifierConfig(epochs=1, width=8)
    a = train_classifier(digits, cfg, seed=3, progress=False)
    b = train_classifier(digits, cfg, seed=3, progress=False)
    for k, v in a.model.state_dict().items():
        assert torch.equal(v, b.model.state_dict()[k]), k


SHARD_SCRIPT = '''
import json, sys
import numpy as np, torch
sys.path.insert(0, {tests!r})
from test_evaluation import TinyNet
from diffprune.data import load_dataset
from diffprune.evaluation import EvalConfig, evaluate
torch.set_num_threads(1)
ds = load_dataset("digits", "train")
cfg = EvalConfig(classifier={{"epochs": 1, "width": 8}}, kid_subsets=5)
evaluate(ds.images[:101].transpose(0, 2, 3, 1), ds, cfg, __import__("pathlib").Path(sys.argv[1]), progress=False,
         network=TinyNet())
'''


@pytest.mark.slow
def test_sharded_evaluation_equals_single_process(tmp_path):
    """Two CPU processes under torchrun (what ``accelerate launch`` runs on GPUs): each embeds half the images,
    the halves are gathered in order, and metrics.json equals a single-process run."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    script = tmp_path / "shard.py"
    script.write_text(SHARD_SCRIPT.format(tests=str(Path(__file__).parent)))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    torchrun = Path(sys.executable).with_name("torchrun")
    subprocess.run([sys.executable, str(script), str(tmp_path / "one")], check=True, env=env, timeout=300)
    subprocess.run([str(torchrun), "--nproc_per_node", "2", str(script), str(tmp_path / "two")], check=True,
                   env=env, timeout=300, capture_output=True)
    one = json.loads((tmp_path / "one" / "metrics.json").read_text())
    two = json.loads((tmp_path / "two" / "metrics.json").read_text())
    for k in ("fid", "kid", "precision", "recall", "density", "coverage", "classifier_fd", "classwise_fid_mean"):
        assert two[k] == pytest.approx(one[k], rel=1e-9, abs=1e-12), k
    assert two["protocol"]["num_generated"] == 101


def test_fid_floor_is_the_fid_of_held_out_real_images(digits, tmp_path):
    samples = digits.images[:100]
    cfg = EvalConfig(metrics=["fid"], classwise=False, num_real=1000, fid_floor=True)
    res = evaluate(samples, digits, cfg, tmp_path / "e", cache_dir=tmp_path / "c", progress=False, network=TinyNet())
    floor = res["details"]["fid_floor"]
    assert floor["num_images"] == 100 and "outside the reference subset" in floor["source"]
    ref_idx = np.sort(np.random.default_rng(0).choice(len(digits), 1000, replace=False))
    outside = np.setdiff1d(np.arange(len(digits)), ref_idx)
    pick = np.sort(np.random.default_rng(1).choice(len(outside), 100, replace=False))
    want = fid_from_features(independent_features(digits.images[ref_idx]), independent_features(digits.images[outside[pick]]))
    assert res["fid_floor"] == pytest.approx(want, rel=1e-4)
    noisy = np.clip(samples.astype(int) + 80, 0, 255).astype(np.uint8)
    worse = evaluate(noisy, digits, cfg, tmp_path / "w", cache_dir=tmp_path / "c", progress=False, network=TinyNet())
    assert worse["fid_floor"] == pytest.approx(res["fid_floor"]) and worse["fid"] > 5 * worse["fid_floor"]


def test_flop_counts_of_a_conv_and_a_linear_layer_match_the_formula():
    from diffprune.evaluation.flops import count_flops, forward_flops_per_image

    linear = torch.nn.Linear(16, 8)
    x = torch.randn(4, 16)
    assert forward_flops_per_image(linear, x) == 2 * 16 * 8  # 2 FLOPs per multiply-add, per image
    conv = torch.nn.Conv2d(3, 5, kernel_size=3)  # 10x10 in, 8x8 out
    images = torch.randn(2, 3, 10, 10)
    assert count_flops(conv, images) == 2 * 2 * 5 * 8 * 8 * 3 * 3 * 3  # 2 x B x C_out x H_out x W_out x C_in x k^2
    xg = x.clone().requires_grad_(True)
    # backward: the input gradient and the weight gradient are each one more product of the forward's size
    assert count_flops(lambda: linear(xg).sum().backward()) == 3 * 2 * 4 * 16 * 8


def test_default_metrics_are_what_the_network_can_compute():
    from diffprune.evaluation.config import KNOWN_METRICS, NETWORK_METRICS

    cfg = EvalConfig()
    assert cfg.metrics == ["fid", "kid", "prdc", "classifier_fd"] == list(NETWORK_METRICS[cfg.feature])
    assert "is" not in cfg.metrics  # the FID Inception has no logits (see test_real_fid_inception_end_to_end)
    assert set(cfg.metrics) <= set(KNOWN_METRICS) and set(NETWORK_METRICS) == {"fid-inception"}
    assert validate_config(EvalConfig, {"metrics": ["is", "fid"]}).metrics == ["is", "fid"]  # asked for: kept
