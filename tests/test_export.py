"""Coreset export: file lists whose ids name the right files, the weights the trainer uses, the library face
(subset, samplers, a distributed sampler checked over 2 gloo processes) and the README's training loop.

This file is also the distributed worker: ``python tests/test_export.py WORKER RANK WORLD INIT_FILE OUT``.
"""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

WEIGHTS = {"cat": 0.2, "dog": 0.8}


def _folder(root: Path) -> dict[str, np.ndarray]:
    """cat/ and dog/ with PNGs, a GIF (torchvision's ImageFolder skips it), a nested PNG, an unreadable
    PNG, a text file and a hidden folder; returns {relative path: H x W x 3 pixels} of the readable images."""
    rng = np.random.default_rng(0)
    pixels = {}
    for cls in ("cat", "dog"):
        (root / cls / "sub").mkdir(parents=True)
        for name in ("0.png", "1.png", "b.gif", "sub/2.png"):
            a = rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)
            if name.endswith(".gif"):  # a GIF holds a palette: store what PIL reads back as RGB
                Image.fromarray(a).save(root / cls / name)
                a = np.asarray(Image.open(root / cls / name).convert("RGB"))
            else:
                Image.fromarray(a).save(root / cls / name)
            pixels[f"{cls}/{name}"] = a
        (root / cls / "a_broken.png").write_bytes(b"not a png")
        (root / cls / "notes.txt").write_text("not an image")
    (root / ".hidden").mkdir()
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(root / ".hidden" / "x.png")
    return pixels


@pytest.mark.parametrize("cached", [False, True])
def test_imagefolder_indices_map_to_the_right_files(tmp_path, cached):
    from diffprune.data import load_dataset

    pixels = _folder(tmp_path / "data")
    kw = {"cache_dir": str(tmp_path / "cache"), "resolution": 8} if cached else {}
    ds = load_dataset(f"imagefolder:{tmp_path / 'data'}", skip_bad=True, **kw)
    assert sorted(ds.source_ids) == sorted(pixels)  # every readable image once; no broken, text or hidden file
    assert len(ds) == len(pixels) and len(ds.skipped) == 2
    for i, rel in enumerate(ds.source_ids):  # the oracle: the file named by an index holds that row's pixels
        np.testing.assert_array_equal(ds.images[i], pixels[rel].transpose(2, 0, 1))
        assert ds.class_names[ds.labels[i]] == rel.split("/")[0]
    # the documented order: per class, sorted by path components (a_broken is skipped, not an index)
    assert ds.source_ids[:4] == ["cat/0.png", "cat/1.png", "cat/b.gif", "cat/sub/2.png"]
    limited = load_dataset(f"imagefolder:{tmp_path / 'data'}", skip_bad=True, limit=3, **kw)
    for i, rel in enumerate(limited.source_ids):
        np.testing.assert_array_equal(limited.images[i], pixels[rel].transpose(2, 0, 1))


def _selection(labels: np.ndarray, names: list[str], ratio: float = 0.5):
    from diffprune.selection import select

    feats = np.random.default_rng(1).normal(size=(len(labels), 4)).astype(np.float32)
    return select(feats, labels, "random", ratio, class_names=names)


@pytest.mark.parametrize("weighting", ["loss", "resample"])
def test_coreset_rows_carry_the_trainers_weights(tmp_path, weighting):
    from diffprune.data import ImageDataset
    from diffprune.export import COLUMNS, coreset_rows, read_coreset, write_coreset

    labels = np.array([0] * 6 + [1] * 10)
    rows_data = np.arange(16, dtype=np.uint8)[:, None, None, None].repeat(4, 2).repeat(4, 3)
    ds = ImageDataset(rows_data, labels, ["cat", "dog"])
    sel = _selection(labels, ["cat", "dog"])
    rows = coreset_rows(ds, sel, WEIGHTS, weighting)
    assert [r["index"] for r in rows] == sel.indices.tolist()
    assert [r["source"] for r in rows] == [str(i) for i in sel.indices]  # arrays: the row index
    kept = {"cat": 3, "dog": 5}  # round-half-up of 0.5 * (6, 10)
    for r in rows:
        assert r["label"] == r["group"] == ("cat" if r["index"] < 6 else "dog")
        if weighting == "loss":  # uniform draws, loss x a_k / p_k (p_k: the class's share of the 8 kept)
            assert r["sampling_probability"] == pytest.approx(1 / 8)
            assert r["loss_weight"] == pytest.approx(WEIGHTS[r["group"]] / (kept[r["group"]] / 8))
        else:  # class k drawn with probability a_k, uniformly inside it
            assert r["sampling_probability"] == pytest.approx(WEIGHTS[r["group"]] / kept[r["group"]])
            assert r["loss_weight"] == 1.0
    csv_path, jsonl_path = write_coreset(tmp_path, rows)
    assert csv_path.read_text().splitlines()[0] == ",".join(COLUMNS)
    assert read_coreset(csv_path) == read_coreset(jsonl_path) == rows
    unweighted = coreset_rows(ds, sel)
    assert {r["sampling_probability"] for r in unweighted} == {1 / 8} and {r["loss_weight"] for r in unweighted} == {1.0}


def test_export_verb_writes_the_coreset_with_file_paths(tmp_path):
    from typer.testing import CliRunner

    from diffprune.cli import app
    from diffprune.export import read_coreset

    _folder(tmp_path / "data")
    args = ["--set", f"runs_dir={tmp_path / 'runs'}", "--set", f"data.spec=imagefolder:{tmp_path / 'data'}",
            "--set", "data.skip_bad=true", "--set", "data.resolution=8", "--set", "embed.encoder=pixels",
            "--set", "select.ratio=0.5", "--set", "arms=[{method: random}]", "--name", "x", "--no-progress"]
    result = CliRunner().invoke(app, ["select", *args], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    run = tmp_path / "runs" / "x"
    sel_rows = read_coreset(next(run.glob("selection/*/coreset.csv")))
    result = CliRunner().invoke(app, ["export", str(run), "--arm", "random", "--no-progress"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    rows = read_coreset(run / "export" / "random" / "coreset.jsonl")
    assert rows == sel_rows and len(rows) == 4  # 2 of each class's 4 readable images
    assert all((tmp_path / "data" / r["source"]).is_file() and r["source"].startswith(r["label"] + "/") for r in rows)
    assert sum(r["sampling_probability"] for r in rows) == pytest.approx(1.0)


def _dataset(n: int = 20):
    from diffprune.data import ImageDataset

    rng = np.random.default_rng(0)
    return ImageDataset(rng.integers(0, 256, (n, 1, 4, 4), dtype=np.uint8), np.arange(n) % 2, ["cat", "dog"])


def _core():
    import diffprune

    ds = _dataset()
    feats = np.random.default_rng(2).normal(size=(len(ds), 3))
    return diffprune.coreset(ds, method="random", ratio=0.5, features=feats, class_weights=WEIGHTS), ds


def test_library_coreset_subset_and_samplers():
    core, ds = _core()
    assert len(core) == 10 and core.probabilities.sum() == pytest.approx(1.0)
    sub = core.subset()
    np.testing.assert_array_equal(np.stack([sub[j][0].numpy() for j in range(len(sub))]), ds.images[core.indices])
    assert [sub[j][1] for j in range(len(sub))] == ds.labels[core.indices].tolist()
    sampler = core.sampler(num_samples=20000)
    draws = torch.tensor(list(sampler))
    share_dog = (core.groups[draws.numpy()] == 1).mean()
    assert abs(share_dog - WEIGHTS["dog"]) < 0.02  # the class mass the DRO weights ask for (20k draws: sd 0.003)
    single = core.distributed_sampler(num_samples=20000, num_replicas=1, rank=0)
    assert torch.equal(single.global_draw(0), draws)  # the 1-rank sampler's epoch 0 is the plain sampler
    assert not torch.equal(single.global_draw(1), draws)
    with pytest.raises(ValueError, match="rank"):
        core.distributed_sampler(num_replicas=2, rank=2)


def test_coreset_of_a_run_reads_its_files_without_a_pipeline(tmp_path):
    """A run folder written by hand (arms.json, selection/, class_weights.json, config.yaml): the coreset comes
    from those files alone (no stage is recomputed), with the class weights as the trainer uses them."""
    import diffprune
    from diffprune.data import load_dataset
    from diffprune.export import CoresetError
    from diffprune.selection import select

    run = tmp_path / "run"
    data = load_dataset("digits", limit=200)
    sel = select(np.random.default_rng(0).normal(size=(len(data), 4)).astype(np.float32), data.labels, "random",
                 0.5, class_names=data.class_names)
    sel.save(run / "selection" / "random-r0.5")
    weights = {name: (k + 1) / 55 for k, name in enumerate(data.class_names)}  # 1..10 / 55 sums to 1
    (run / "reweight" / "random-r0.5").mkdir(parents=True)
    (run / "reweight" / "random-r0.5" / "class_weights.json").write_text(json.dumps(weights))
    (run / "config.yaml").write_text("data:\n  spec: digits\n  limit: 200\n")
    (run / "arms.json").write_text(json.dumps([
        {"arm": "full", "method": "full", "selection": None, "reweight": None},
        {"arm": "random+dro", "method": "random", "selection": "selection/random-r0.5",
         "reweight": "reweight/random-r0.5"}]))
    core = diffprune.coreset(run)  # the first pruned arm
    np.testing.assert_array_equal(core.indices, sel.indices)
    a = np.array([weights[data.class_names[g]] for g in core.groups])
    per_group = np.bincount(core.groups, minlength=10)[core.groups]
    np.testing.assert_allclose(core.probabilities, a / per_group)
    np.testing.assert_allclose(core.loss_weights, a / (per_group / len(core)))
    assert core.source_ids == [data.source_ids[i] for i in sel.indices]  # the rows of the limited digits
    with pytest.raises(CoresetError, match="'full' trains on all data"):
        diffprune.coreset(run, arm="full")
    with pytest.raises(KeyError, match="no arm 'other'"):
        diffprune.coreset(run, arm="other")
    (run / "reweight" / "random-r0.5" / "class_weights.json").unlink()
    with pytest.raises(CoresetError, match="no class weights yet"):
        diffprune.coreset(run, arm="random+dro")


def test_coreset_of_a_plain_torch_dataset():
    import diffprune

    class Plain(torch.utils.data.Dataset):
        def __len__(self):
            return 12

        def __getitem__(self, i):  # diffusers-style: a dict, images in [-1, 1]
            return {"input": torch.full((1, 4, 4), i / 11 * 2 - 1), "label": i % 3}

    with pytest.raises(ValueError, match="value_range"):  # float pixels: the range is declared, never guessed
        diffprune.coreset(Plain(), method="random", ratio=0.5, encoder="pixels")
    core = diffprune.coreset(Plain(), method="random", ratio=0.5, encoder="pixels", value_range=(-1, 1))
    assert len(core) == 6 and sorted(set(core.groups.tolist())) == [0, 1, 2]
    item = core.subset()[0]
    assert torch.equal(item["input"], Plain()[int(core.indices[0])]["input"])  # the user's own items


def test_distributed_sampler_over_two_gloo_processes(tmp_path):
    core, _ = _core()
    init, probs = tmp_path / "init", tmp_path / "probs.json"
    probs.write_text(json.dumps(core.probabilities.tolist()))
    env = dict(os.environ, OMP_NUM_THREADS="1", CUDA_VISIBLE_DEVICES="")
    procs = [subprocess.Popen([sys.executable, __file__, "WORKER", str(r), "2", str(init), str(probs),
                               str(tmp_path / f"r{r}.json")], env=env) for r in range(2)]
    assert all(p.wait(timeout=120) == 0 for p in procs)
    ranks = [json.loads((tmp_path / f"r{r}.json").read_text()) for r in range(2)]
    one = core.distributed_sampler(num_samples=24, num_replicas=1, rank=0)
    for epoch in ("0", "1"):
        a, b = ranks[0][epoch], ranks[1][epoch]
        assert len(a) == len(b) == 12
        merged = [x for pair in zip(a, b) for x in pair]  # rank r holds draws r, r + 2, ...
        assert merged == one.global_draw(int(epoch)).tolist()  # == the single-process draw of that epoch
        assert ranks[0]["batches"][epoch] == [a[i:i + 4] for i in range(0, 12, 4)]  # through a DataLoader
    assert ranks[0]["0"] != ranks[0]["1"]  # a new draw every epoch


def _worker(rank: int, world: int, init: str, probs: str, out: str) -> None:
    from diffprune.export.samplers import WeightedDistributedSampler  # what core.distributed_sampler returns

    torch.distributed.init_process_group("gloo", init_method=f"file://{init}", rank=rank, world_size=world)
    weights = json.loads(Path(probs).read_text())
    sampler = WeightedDistributedSampler(weights, num_samples=24)  # rank and world from torch.distributed
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(torch.arange(len(weights))), batch_size=4,
                                         sampler=sampler)
    result: dict = {"batches": {}}
    for epoch in range(2):
        sampler.set_epoch(epoch)
        result[str(epoch)] = list(sampler)
        result["batches"][str(epoch)] = [b[0].tolist() for b in loader]
    Path(out).write_text(json.dumps(result))
    torch.distributed.barrier()
    torch.distributed.destroy_process_group()


def _digits_imagefolder(root: Path, classes: int = 3, per_class: int = 8) -> Path:
    """An imagefolder of scikit-learn digits (8x8 grey PNGs), ``per_class`` images of each of ``classes``."""
    from sklearn.datasets import load_digits

    d = load_digits()
    for k in range(classes):
        (root / f"digit{k}").mkdir(parents=True)
        for j, i in enumerate(np.flatnonzero(d.target == k)[:per_class]):
            Image.fromarray((d.images[i] * 16).clip(0, 255).astype(np.uint8)).save(root / f"digit{k}" / f"{j}.png")
    return root


def test_readme_training_loop(tmp_path):
    """The README's lines, run as written inside a diffusers train_unconditional.py-style setup: an HF imagefolder
    whose set_transform yields only normalised "input" tensors (no label), and a DRO of a few steps."""
    import datasets
    import torch.nn.functional as F
    from accelerate import Accelerator
    from diffusers import DDPMScheduler, UNet2DModel

    readme = (Path(__file__).parent.parent / "README.md").read_text()
    block = re.search(r"<!-- tested: tests/test_export.py::test_readme_training_loop -->\n```python\n(.*?)```",
                      readme, re.S).group(1)
    dataset = datasets.load_dataset("imagefolder", data_dir=str(_digits_imagefolder(tmp_path / "digits")),
                                    split="train", cache_dir=str(tmp_path / "hf"))
    seen = []

    def transform_images(examples):  # diffusers: Resize, ToTensor, Normalize([0.5], [0.5]); no label kept
        seen.append(len(examples["image"]))
        return {"input": [torch.from_numpy(np.asarray(im.convert("L").resize((8, 8)), np.float32) / 127.5 - 1)[None]
                          for im in examples["image"]]}

    dataset.set_transform(transform_images)
    model = UNet2DModel(sample_size=8, in_channels=1, out_channels=1, block_out_channels=(8, 8), layers_per_block=1,
                        down_block_types=("DownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "UpBlock2D"),
                        norm_num_groups=4)
    before = [p.detach().clone() for p in model.parameters()]
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    args = type("Args", (), {"train_batch_size": 4, "num_epochs": 2, "seed": 0, "output_dir": str(tmp_path / "out"),
                             "resolution": 8, "dro_steps": 3})
    ns = {"dataset": dataset, "model": model, "optimizer": optimizer, "F": F, "torch": torch, "args": args,
          "lr_scheduler": torch.optim.lr_scheduler.ConstantLR(optimizer, 1.0), "accelerator": Accelerator(cpu=True),
          "noise_scheduler": DDPMScheduler(num_train_timesteps=100)}
    exec(compile(block, "README.md", "exec"), ns)
    core = ns["core"]
    # per-class DRO weights, the very ones the DRO stage wrote, over the imagefolder's classes
    written = json.loads(next((tmp_path / "out" / "diffprune" / "reweight").glob("*/class_weights.json")).read_text())
    assert set(core.class_weights) == {"digit0", "digit1", "digit2"} and core.class_weights == pytest.approx(written)
    assert sum(core.class_weights.values()) == pytest.approx(1.0) and len(set(core.class_weights.values())) == 3
    trajectory = np.load(next((tmp_path / "out" / "diffprune" / "reweight").glob("*/trajectory.npz")))
    assert len(trajectory["loss"]) == 3  # args.dro_steps proxy steps
    # the sampler gives class k the share a_k (the oracle: summing the draw probabilities per class)
    for k, name in enumerate(core.group_names):
        assert core.probabilities[core.groups == k].sum() == pytest.approx(core.class_weights[name])
        # uniform draws with these loss weights give class k the same expected share: a_k * n / n_k each
        in_k = core.groups == k
        assert core.loss_weights[in_k] == pytest.approx(core.class_weights[name] * len(core) / in_k.sum())
    assert len(core) == 3 * round(0.3 * 8)  # ratio 0.3 of each class
    # the labels came from the table though the transform drops them; the loop saw only the transform's output
    assert core.groups.tolist() == [dataset.with_format(None)[int(i)]["label"] for i in core.indices]
    assert sum(seen) == 2 * len(core)  # two epochs of len(coreset) draws, and selection never went through it
    assert any(not torch.equal(a, b) for a, b in zip(before, model.parameters()))
    # a second call reuses every cached stage (same weights, nothing recomputed)
    again = ns["diffprune"].prune_and_reweight(dataset, f"{args.output_dir}/diffprune", ratio=0.3,
                                               resolution=8, reweight={"steps": 3}, progress=False)
    assert again.class_weights == core.class_weights and again.indices.tolist() == core.indices.tolist()


if __name__ == "__main__" and sys.argv[1] == "WORKER":
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "src"))
    _worker(int(sys.argv[2]), int(sys.argv[3]), *sys.argv[4:7])


def _trained(tmp_path, conditional: bool = False) -> Path:
    from diffprune.diffusion import TrainConfig, train

    cfg = TrainConfig(preset="ddpm-tiny", steps=2, batch_size=4, lr=1e-3, warmup_steps=0, ema_decay=0.5,
                      checkpoint_every=0, conditional=conditional)
    out = tmp_path / ("cond" if conditional else "uncond")
    ds = _dataset(8)
    train(cfg, type(ds)(np.repeat(ds.images, 2, 2).repeat(2, 3), ds.labels, ds.class_names), out, progress=False)
    return out / "model"


def test_trained_arm_loads_as_a_diffusers_pipeline(tmp_path):
    from diffusers import DDIMPipeline, DDIMScheduler, DDPMPipeline, UNet2DModel

    from diffprune.export.pipeline import PipelineExportError, write_pipeline

    model_dir = _trained(tmp_path)
    folder = write_pipeline(model_dir, tmp_path / "pipeline")
    ddpm = DDPMPipeline.from_pretrained(folder)
    ddim = DDIMPipeline.from_pretrained(folder)
    assert isinstance(ddim.scheduler, DDIMScheduler)
    ours = UNet2DModel.from_pretrained(model_dir)
    x, t = torch.randn(2, 1, 8, 8), torch.tensor([10, 500])
    with torch.no_grad():
        for pipe in (ddpm, ddim):
            torch.testing.assert_close(pipe.unet(x, t).sample, ours(x, t).sample, rtol=0, atol=0)
    images = ddim(batch_size=2, num_inference_steps=3, output_type="np", generator=torch.Generator().manual_seed(0)).images
    assert images.shape == (2, 8, 8, 1) and np.isfinite(images).all()
    with pytest.raises(PipelineExportError, match="load_model"):
        write_pipeline(_trained(tmp_path, conditional=True), tmp_path / "cond-pipeline")


def test_push_refuses_without_token_or_offline(tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from diffprune.cli import app
    from diffprune.export import pipeline as pl

    (tmp_path / "model_index.json").write_text("{}")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_TOKEN", "hf_not_a_real_token")
    assert pl.hub_token() == "hf_not_a_real_token"
    with pytest.raises(pl.PipelineExportError, match="HF_HUB_OFFLINE"):
        pl.push(tmp_path, "user/repo")
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    monkeypatch.setattr(pl, "hub_token", lambda: None)  # as for a user who never logged in
    with pytest.raises(pl.PipelineExportError, match="HF_TOKEN"):
        pl.push(tmp_path, "user/repo")
    result = CliRunner().invoke(app, ["push", str(tmp_path), "--arm", "x", "--repo-id", "user/repo"])
    assert isinstance(result.exception, pl.PipelineExportError) and "HF_TOKEN" in str(result.exception)


@pytest.mark.slow  # the real FID Inception on CPU: ~1 min on the shared 2-core VM
def test_fid_verb_on_two_folders_and_saved_statistics(tmp_path):
    from typer.testing import CliRunner

    from diffprune.cli import app
    from diffprune.evaluation import frechet_distance, gaussian_stats, load_ref_stats, save_ref_stats

    rng = np.random.default_rng(0)
    sets = {"a": rng.integers(0, 256, (4, 16, 16, 3), dtype=np.uint8),
            "b": np.clip(rng.normal(128, 30, (4, 16, 16, 3)), 0, 255).astype(np.uint8)}
    for name, images in sets.items():
        (tmp_path / name).mkdir()
        for i, im in enumerate(images):
            Image.fromarray(im).save(tmp_path / name / f"{i:02d}.png")

    args = ["--cache-dir", str(tmp_path / "cache"), "--no-progress", "--out"]
    result = CliRunner().invoke(app, ["fid", str(tmp_path / "a"), str(tmp_path / "b"), *args, str(tmp_path / "r.json")],
                                catch_exceptions=False)
    assert result.exit_code == 0, result.output
    got = json.loads((tmp_path / "r.json").read_text())
    # the oracle: the Frechet formula on the Inception features written to the cache, one folder per side
    feats = {load_ref_stats(d / "ref_stats.npz")[3]["dataset"][-1]: np.load(d / "features.npy").astype(np.float64)
             for d in (tmp_path / "cache").glob("ref-*")}  # {"a": ..., "b": ...} by the folder each came from
    assert sorted(feats) == ["a", "b"] and all(f.shape == (4, 2048) for f in feats.values())
    stats = {k: gaussian_stats(f) for k, f in feats.items()}
    assert got["fid"] == pytest.approx(frechet_distance(*stats["a"], *stats["b"]), rel=1e-4)
    assert 0 <= got["precision"] <= 1 and "kid" in got and not any(s["cache_hit"] for s in got["inputs"])
    first_fid = got["fid"]
    save_ref_stats(tmp_path / "a_stats.npz", *stats["a"], 4, {})
    result = CliRunner().invoke(app, ["fid", str(tmp_path / "a_stats.npz"), str(tmp_path / "b"), *args,
                                      str(tmp_path / "s.json")], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    got = json.loads((tmp_path / "s.json").read_text())
    assert got["fid"] == pytest.approx(first_fid, rel=1e-4) and "kid" not in got  # statistics only: no KID/PRDC
    assert got["inputs"][1]["cache_hit"]  # b's features came from the cache of the first call


def test_shipped_configs_by_name_and_dash_c_on_run(tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from diffprune.cli import app, bundled_configs, resolve_config
    from diffprune.config.base import ConfigError

    repo_configs = sorted(p.name[:-5] for p in (Path(__file__).parent.parent / "configs").glob("*.yaml"))
    assert bundled_configs() == repo_configs  # every config of the repository ships in the package
    monkeypatch.chdir(tmp_path)  # outside the repository
    assert resolve_config("cifar10-ddpm").read_text().startswith("#")
    assert resolve_config("configs/fashion-mnist.yaml").is_file()  # the README's spelling works anywhere
    result = CliRunner().invoke(app, ["run", "nope"])
    assert isinstance(result.exception, ConfigError) and "shipped config" in str(result.exception)
    result = CliRunner().invoke(app, ["run", "demo", "-c", "demo"])
    assert result.exit_code == 2 and "once" in result.output
    # -c on run reaches the pipeline: a bad override of the named config fails on that field
    result = CliRunner().invoke(app, ["run", "-c", "demo", "--set", "train.steps=-1"])
    assert result.exit_code != 0 and "steps" in str(result.exception or result.output)
