import numpy as np
import pytest
from PIL import Image

from diffprune.data import DataConfig, DatasetError, ImageDataset, load_dataset
from diffprune.data.transforms import pad_to, resize_to, to_channels
from diffprune.config import ConfigError, validate_config


def test_digits_matches_sklearn():
    from sklearn.datasets import load_digits

    ds = load_dataset("digits")
    ref = load_digits()
    assert ds.images.shape == (1797, 1, 8, 8) and ds.images.dtype == np.uint8
    np.testing.assert_array_equal(ds.labels, ref.target)
    np.testing.assert_array_equal(ds.images[:, 0].astype(int), np.rint(ref.images * 255 / 16).astype(int))
    assert ds.fingerprint == load_dataset("digits").fingerprint  # stable across loads


def test_resolution_pad_and_resize():
    ds = load_dataset("digits", resolution=12)
    raw = load_dataset("digits")
    np.testing.assert_array_equal(ds.images[:, :, 2:10, 2:10], raw.images)
    assert ds.images[:, :, :2].max() == 0
    big = load_dataset("digits", resolution=16, resize="resize", channels=3)
    assert big.images.shape == (1797, 3, 16, 16)
    assert ds.fingerprint != raw.fingerprint != big.fingerprint


def test_limit_is_class_balanced():
    ds = load_dataset("digits", limit=100)
    assert len(ds) == 100
    assert ds.class_counts().tolist() == [10] * 10


def test_transforms_against_formulas():
    x = np.random.default_rng(0).integers(0, 256, (2, 3, 6, 6), dtype=np.uint8)
    np.testing.assert_array_equal(pad_to(pad_to(x, 10), 6), x)  # pad then crop is the identity
    const = np.full((1, 1, 4, 4), 77, np.uint8)
    assert (resize_to(const, 9) == 77).all()  # resizing a constant image keeps it constant
    grey = to_channels(x, 1)
    expect = np.rint(0.299 * x[:, 0] + 0.587 * x[:, 1] + 0.114 * x[:, 2])
    np.testing.assert_allclose(grey[:, 0], expect, atol=1)
    assert to_channels(grey, 3).shape == (2, 3, 6, 6)


def test_fashion_mnist_from_debian_package():
    import os

    if not os.path.exists("/usr/share/datasets/fashion-mnist/t10k-images-idx3-ubyte.gz"):
        pytest.skip("Debian package dataset-fashion-mnist not installed")
    ds = load_dataset("fashion-mnist", split="test")
    assert ds.images.shape == (10000, 1, 28, 28)
    assert ds.class_counts().tolist() == [1000] * 10
    assert ds.class_names[9] == "Ankle boot"


def test_imagefolder_labelled_unlabelled_and_bad_files(tmp_path):
    rng = np.random.default_rng(0)
    for cls in ("cat", "dog"):
        (tmp_path / "lab" / cls).mkdir(parents=True)
        for i in range(3):
            Image.fromarray(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)).save(tmp_path / "lab" / cls / f"{i}.png")
    ds = load_dataset(f"imagefolder:{tmp_path / 'lab'}")
    assert ds.images.shape == (6, 3, 8, 8) and ds.class_names == ["cat", "dog"]
    assert ds.labels.tolist() == [0, 0, 0, 1, 1, 1]
    first = np.asarray(Image.open(tmp_path / "lab" / "cat" / "0.png")).transpose(2, 0, 1)
    np.testing.assert_array_equal(ds.images[0], first)

    (tmp_path / "lab" / "dog" / "broken.png").write_bytes(b"not a png")
    with pytest.raises(DatasetError, match="broken.png"):
        load_dataset(f"imagefolder:{tmp_path / 'lab'}")
    ds = load_dataset(f"imagefolder:{tmp_path / 'lab'}", skip_bad=True)
    assert len(ds) == 6 and ds.skipped and ds.skipped[0].endswith("broken.png")

    flat = tmp_path / "flat"
    flat.mkdir()
    for i in range(4):
        Image.fromarray(rng.integers(0, 256, (5, 5), dtype=np.uint8)).save(flat / f"{i}.png")
    ds = load_dataset(f"imagefolder:{flat}", resolution=8, resize="resize")
    assert ds.labels is None and ds.images.shape == (4, 1, 8, 8)


def test_npz_source_and_errors(tmp_path):
    imgs = np.random.default_rng(1).integers(0, 256, (5, 7, 7, 3), dtype=np.uint8)  # N x H x W x C
    np.savez(tmp_path / "d.npz", images=imgs, labels=np.array([0, 1, 1, 0, 2]))
    ds = load_dataset(f"npz:{tmp_path / 'd.npz'}")
    np.testing.assert_array_equal(ds.images, imgs.transpose(0, 3, 1, 2))
    assert ds.num_classes == 3
    np.savez(tmp_path / "bad.npz", x=imgs)
    with pytest.raises(DatasetError, match="no 'images'"):
        load_dataset(f"npz:{tmp_path / 'bad.npz'}")
    with pytest.raises(DatasetError, match="unknown dataset"):
        load_dataset("cifar11")
    with pytest.raises(DatasetError, match="no test split"):
        load_dataset("digits", split="test")


def test_dataset_validation():
    with pytest.raises(ValueError, match="uint8"):
        ImageDataset(np.zeros((2, 1, 4, 4), np.float32), None, [])
    with pytest.raises(ValueError, match="labels must lie"):
        ImageDataset(np.zeros((2, 1, 4, 4), np.uint8), np.array([0, 3]), ["a", "b"])
    ds = ImageDataset(np.arange(32, dtype=np.uint8).reshape(2, 1, 4, 4), np.array([1, 0]), ["a", "b"])
    sub = ds.subset(np.array([1]))
    assert sub.labels.tolist() == [0] and sub.fingerprint != ds.fingerprint


def test_data_config_messages_name_the_field():
    with pytest.raises(ConfigError) as e:
        validate_config(DataConfig, {"spec": "cifar11", "resolution": 2, "colour": 1})
    msg = str(e.value)
    assert "spec: got 'cifar11'" in msg and "digits" in msg
    assert "resolution: got 2" in msg
    assert "colour: unknown field" in msg
