"""The four extension points of docs/architecture.md, used from outside the package: an encoder, a data kind, a
model preset and a metric, each registered with one call and then listed, validated by the run config and
built / loaded / computed by the stage that uses it. Nothing inside diffprune is edited or patched."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from diffprune.data import (DATA_KINDS, DataConfig, DataKind, ImageDataset, LoadOptions, available_datasets,
                            load_dataset, register_data_kind)
from diffprune.diffusion import PRESETS, TrainConfig, create_model, create_scheduler, diffusion_loss, register_preset
from diffprune.diffusion.models import Preset, Recipe
from diffprune.encoders import (ENCODERS, EmbedConfig, Encoder, EncoderEntry, available_encoders, embed_dataset,
                                register_encoder)
from diffprune.evaluation import EvalConfig, evaluate
from diffprune.evaluation.scores import METRICS, Metric, register_metric
from diffprune.reweighting import ReweightConfig


@pytest.fixture
def restore_tables():
    """Each table as it was before the test, so a registration does not leak into other tests."""
    saved = [(table, dict(table)) for table in (DATA_KINDS, ENCODERS, PRESETS, METRICS)]
    yield
    for table, before in saved:
        table.clear()
        table.update(before)


# ---- a data kind: stripes:N -> N images of horizontal stripes, two classes (thin, thick) ------------------------

def load_stripes(arg: str, options) -> ImageDataset:
    n = int(arg)
    rows = np.arange(8)[None, :, None]
    period = np.where(np.arange(n) % 2 == 0, 2, 4)[:, None, None]
    images = ((rows // period) % 2 * 255).astype(np.uint8).repeat(8, axis=2)[:, None]  # N x 1 x 8 x 8
    return ImageDataset(images, (np.arange(n) % 2).astype(np.int64), ["thin", "thick"], name=options.spec)


def test_a_data_kind_is_one_registration(restore_tables):
    register_data_kind(DataKind("stripes", "horizontal stripes of two widths (test)", load_stripes, arg="N"))
    assert available_datasets()["stripes:N"] == "horizontal stripes of two widths (test)"
    cfg = DataConfig(spec="stripes:6", resolution=16, channels=3)  # the run config accepts it
    ds = cfg.load()
    assert ds.images.shape == (6, 3, 16, 16) and ds.class_names == ["thin", "thick"]
    # load_dataset resized the loader's native 8 px arrays as it does any array kind: pad 4 px each side
    native = load_stripes("6", LoadOptions("stripes:6")).images
    np.testing.assert_array_equal(ds.images[:, 0, 4:12, 4:12], native[:, 0])
    assert ds.images[:, :, :4].max() == 0
    with pytest.raises(ValueError, match="stripes:N"):
        DataConfig(spec="stripes")  # the kind needs its argument, as the listing says
    assert sorted(load_dataset("stripes:4", limit=2).labels.tolist()) == [0, 1]  # limit keeps one of each class


# ---- an encoder: the mean brightness of each row of the image ----------------------------------------------------

class RowMeans(Encoder):
    name, dim = "row-means", 8

    def __init__(self) -> None:
        super().__init__()
        self.preprocessing = {"resize": "none", "features": "mean of each pixel row / 255"}
        self.register_buffer("scale", torch.tensor(1 / 255.0))

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        return x.mean(dim=(1, 3)) * self.scale


def test_an_encoder_is_one_registration(restore_tables, tmp_path):
    register_encoder(EncoderEntry("row-means", "mean of each pixel row (test)",
                                  lambda weights=None, pretrained=True: RowMeans(), random_init=False))
    assert available_encoders()["row-means"] == "mean of each pixel row (test)"
    data = ImageDataset(np.random.default_rng(0).integers(0, 256, (5, 1, 8, 8), dtype=np.uint8),
                        np.zeros(5, np.int64), ["a"])
    features = np.asarray(embed_dataset(data, EmbedConfig(encoder="row-means", device="cpu"), tmp_path, progress=False))
    np.testing.assert_allclose(features, data.images[:, 0].mean(axis=2) / 255.0, rtol=1e-6)


# ---- a model preset: a smaller UNet than ddpm-tiny ---------------------------------------------------------------

def test_a_model_preset_is_one_registration(restore_tables):
    tiny = PRESETS["ddpm-tiny"]
    register_preset(Preset(
        name="ddpm-micro", description="a one-level UNet (test)",
        model={**tiny.model, "block_out_channels": (8,), "down_block_types": ("DownBlock2D",),
               "up_block_types": ("UpBlock2D",), "norm_num_groups": 4, "sample_size": 8},
        recipe=Recipe(lr=3e-3, warmup_steps=1, batch_size=4, ema_decay=0.9, hflip=False, steps=7)))
    assert TrainConfig(preset="ddpm-micro").resolved().lr == 3e-3  # the recipe is the trainer's default
    ReweightConfig(proxy_preset="ddpm-micro")  # and a DRO proxy may use it
    torch.manual_seed(0)
    model = create_model("ddpm-micro", in_channels=1, out_channels=1)
    assert model.config.block_out_channels == (8,)
    x0 = torch.zeros(2, 1, 8, 8)
    loss = diffusion_loss(model, create_scheduler("ddpm-micro"), x0, torch.tensor([3, 500]), torch.randn(2, 1, 8, 8))
    assert loss.shape == (2, 1, 8, 8) and torch.isfinite(loss).all()


# ---- a metric: the gap between the mean feature vectors of samples and reference --------------------------------

class GreyMean(torch.nn.Module):
    """A feature network: the per-channel mean in [0, 1] (B x 3 x H x W in [0, 255] -> B x 3)."""

    num_features, name = 3, "grey-mean-test"

    def __init__(self) -> None:
        super().__init__()
        self.scale = torch.nn.Parameter(torch.tensor(1 / 255.0), requires_grad=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.mean(dim=(2, 3)) * self.scale


def mean_gap(s) -> None:
    gap = float(np.linalg.norm(s.ref.features.mean(axis=0) - s.fake_feats.mean(axis=0)))
    s.details["mean_gap"] = {"value": gap, "num_real": int(len(s.ref.features))}
    s.result["mean_gap"] = gap


def test_a_metric_is_one_registration(restore_tables):
    register_metric(Metric("mean_gap", mean_gap))
    cfg = EvalConfig(metrics=["mean_gap"], classwise=False, device="cpu", batch_size=8)
    real = ImageDataset(np.full((6, 1, 8, 8), 100, np.uint8), np.zeros(6, np.int64), ["a"])
    samples = np.full((4, 8, 8, 1), 151, np.uint8)
    record = evaluate(samples, real, cfg, None, progress=False, network=GreyMean())
    # oracle: every channel of the samples is 51/255 = 0.2 brighter, so the gap is 0.2 * sqrt(3)
    assert record["mean_gap"] == pytest.approx(0.2 * np.sqrt(3), rel=1e-5)
    assert "fid" not in record and record["details"]["mean_gap"]["num_real"] == 6
    with pytest.raises(ValueError, match="unknown metric"):
        EvalConfig(metrics=["median_gap"])
