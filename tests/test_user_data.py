"""A user's own dataset as diffprune reads it (``export.user_data``): declared value ranges, HF datasets read from
their table (labels survive ``set_transform``), images streamed into a memory map."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from diffprune.export.user_data import CoresetError, read_dataset


class Tensors(torch.utils.data.Dataset):
    def __init__(self, images, labels=None):
        self.images, self.labels = images, labels

    def __len__(self):
        return len(self.images)

    def __getitem__(self, i):
        return (self.images[i], self.labels[i]) if self.labels is not None else self.images[i]


def test_minus_one_to_one_tensors_map_to_the_right_pixels():
    # values that all lie in [0, 1]: a per-image guess would read them as a [0, 1] image
    rng = np.random.default_rng(0)
    pixels = rng.integers(128, 256, (5, 1, 4, 4)).astype(np.uint8)
    floats = torch.from_numpy(pixels.astype(np.float32) / 127.5 - 1.0)  # Normalize([0.5], [0.5]) of ToTensor
    assert floats.min() >= 0
    data = read_dataset(Tensors(floats, [0, 1, 0, 1, 2]), value_range=(-1, 1))
    np.testing.assert_array_equal(data.images, pixels)
    assert data.labels.tolist() == [0, 1, 0, 1, 2] and data.class_names == ["0", "1", "2"]
    zero_one = read_dataset(Tensors(torch.from_numpy(pixels / 255.0)), value_range=(0, 1))
    np.testing.assert_array_equal(zero_one.images, pixels)


def test_float_pixels_without_a_range_are_refused():
    with pytest.raises(CoresetError, match=r"value_range=\(-1, 1\)"):
        read_dataset(Tensors(torch.zeros(2, 1, 4, 4)))
    with pytest.raises(CoresetError, match="outside value_range"):
        read_dataset(Tensors(torch.full((2, 1, 4, 4), -0.5)), value_range=(0, 1))
    uint8 = read_dataset(Tensors(torch.full((2, 4, 4, 3), 7, dtype=torch.uint8)))  # H x W x C, 0..255 by its type
    assert uint8.images.shape == (2, 3, 4, 4) and (uint8.images == 7).all()


def _hf(tmp_path):
    import datasets

    rng = np.random.default_rng(1)
    pixels = rng.integers(0, 256, (6, 5, 5, 3), dtype=np.uint8)
    features = datasets.Features({"img": datasets.Image(), "kind": datasets.ClassLabel(names=["cat", "dog", "owl"]),
                                  "note": datasets.Value("string")})
    ds = datasets.Dataset.from_dict({"img": [Image.fromarray(p) for p in pixels], "kind": [2, 0, 1, 2, 0, 1],
                                     "note": list("abcdef")}, features=features)
    return ds, pixels


def test_hf_dataset_labels_survive_set_transform_and_images_stream_to_a_memmap(tmp_path):
    ds, pixels = _hf(tmp_path)
    ds.set_transform(lambda ex: {"pixel_values": [torch.zeros(3, 2, 2) for _ in ex["img"]]})  # drops the label
    data = read_dataset(ds, cache_dir=tmp_path / "cache")
    np.testing.assert_array_equal(data.images, pixels.transpose(0, 3, 1, 2))
    assert data.labels.tolist() == [2, 0, 1, 2, 0, 1] and data.class_names == ["cat", "dog", "owl"]
    assert isinstance(data.images, np.memmap) and (tmp_path / "cache" / "images.npy").is_file()
    before = (tmp_path / "cache" / "images.npy").stat().st_mtime_ns
    again = read_dataset(ds, cache_dir=tmp_path / "cache")  # same fingerprint and options: not decoded again
    assert (tmp_path / "cache" / "images.npy").stat().st_mtime_ns == before
    np.testing.assert_array_equal(again.images, data.images)
    small = read_dataset(ds, cache_dir=tmp_path / "cache", resolution=4)  # other options: decoded again
    assert small.images.shape == (6, 3, 4, 4)
    # a text label column: the distinct values, sorted, are the classes
    by_note = read_dataset(ds, label_column="note")
    assert by_note.class_names == list("abcdef") and by_note.labels.tolist() == [0, 1, 2, 3, 4, 5]
    with pytest.raises(CoresetError, match="no label column 'species'"):
        read_dataset(ds, label_column="species")


def test_coreset_of_an_hf_dataset_has_its_classes(tmp_path):
    import diffprune

    ds, _ = _hf(tmp_path)
    ds.set_transform(lambda ex: {"input": [torch.zeros(3, 5, 5) for _ in ex["img"]]})
    core = diffprune.coreset(ds, method="random", ratio=0.5, encoder="pixels")
    assert core.group_names == ["cat", "dog", "owl"] and sorted(core.groups.tolist()) == [0, 1, 2]
    assert set(core.subset()[0]) == {"input"}  # the subset goes through the user's transform


def test_prune_and_reweight_under_a_two_process_launch(tmp_path, monkeypatch):
    """Rank 0 computes the stages in a single-process child while the others wait; every rank then reads the
    same cached coreset (rank 1 computes nothing)."""
    import json
    import subprocess

    import diffprune.api as api
    from diffprune.data import ImageDataset, load_dataset

    digits = load_dataset("digits")
    rows = np.concatenate([np.flatnonzero(digits.labels == k)[:8] for k in range(3)])
    data = ImageDataset(digits.images[rows], digits.labels[rows], ["0", "1", "2"])
    waits = []
    state = type("State", (), {"wait_for_everyone": lambda self: waits.append(1)})()
    monkeypatch.setattr(api, "process_state", lambda: state)
    options = dict(ratio=0.5, encoder="pixels", reweight={"steps": 2, "batch_size": 6}, progress=False)
    monkeypatch.setattr(api, "launch_world", lambda: (0, 2))
    main = api.prune_and_reweight(data, tmp_path / "cache", **options)
    written = json.loads(next((tmp_path / "cache" / "reweight").glob("*/class_weights.json")).read_text())
    assert main.class_weights == pytest.approx(written) and set(written) == {"0", "1", "2"} and waits == [1]
    monkeypatch.setattr(api, "launch_world", lambda: (1, 2))
    monkeypatch.setattr(subprocess, "run", lambda *a, **k: pytest.fail("rank 1 must not compute"))
    other = api.prune_and_reweight(data, tmp_path / "cache", **options)
    assert other.class_weights == main.class_weights and other.indices.tolist() == main.indices.tolist()
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("ACCELERATE_MIXED_PRECISION", "bf16")
    env = api._single_process_env()  # the child is no rank of the launch, but keeps its precision
    assert "WORLD_SIZE" not in env and env["ACCELERATE_MIXED_PRECISION"] == "bf16"
