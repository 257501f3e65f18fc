"""csv:, hf-disk: and hf: dataset specs: pixels, labels and source ids against the files they were built from."""
from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from diffprune.data import DataConfig, DatasetError, load_dataset


def _images(n: int = 6, mode: str = "RGB") -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    shape = (8, 8, 3) if mode == "RGB" else (8, 8)
    return [rng.integers(0, 256, shape, dtype=np.uint8) for _ in range(n)]


def test_csv_paths_and_labels(tmp_path):
    images = _images()
    (tmp_path / "imgs").mkdir()
    lines = ["path,label"]
    for i, a in enumerate(images):
        Image.fromarray(a).save(tmp_path / "imgs" / f"{i}.png")
        lines.append(f"imgs/{i}.png,{'zebra' if i % 2 else 'ant'}")
    lines.append("imgs/missing.png,ant")
    (tmp_path / "list.csv").write_text("\n".join(lines) + "\n")
    with pytest.raises(DatasetError, match="missing.png"):
        load_dataset(f"csv:{tmp_path / 'list.csv'}")
    ds = load_dataset(f"csv:{tmp_path / 'list.csv'}", skip_bad=True)
    assert ds.class_names == ["ant", "zebra"] and ds.labels.tolist() == [0, 1, 0, 1, 0, 1]
    assert ds.source_ids == [f"imgs/{i}.png" for i in range(6)]  # CSV row order, the missing file skipped
    for i, a in enumerate(images):
        np.testing.assert_array_equal(ds.images[i], a.transpose(2, 0, 1))
    cached = load_dataset(f"csv:{tmp_path / 'list.csv'}", skip_bad=True, resolution=8, cache_dir=str(tmp_path / "c"))
    np.testing.assert_array_equal(np.asarray(cached.images), ds.images)
    assert cached.source_ids == ds.source_ids
    (tmp_path / "bad.csv").write_text("file,label\nx.png,a\n")
    with pytest.raises(DatasetError, match="'path' column"):
        load_dataset(f"csv:{tmp_path / 'bad.csv'}")
    assert DataConfig(spec=f"csv:{tmp_path / 'list.csv'}").spec.startswith("csv:")


def _hf_dataset(images, mode: str = "RGB"):
    datasets = pytest.importorskip("datasets")
    feats = datasets.Features({"img": datasets.Image(), "kind": datasets.ClassLabel(names=["cat", "dog", "owl"]),
                               "uid": datasets.Value("string")})
    return datasets.Dataset.from_dict(
        {"img": [Image.fromarray(a) for a in images], "kind": [i % 3 for i in range(len(images))],
         "uid": [f"ex-{i:03d}" for i in range(len(images))]}, features=feats)


def test_hf_disk_columns_labels_and_ids(tmp_path):
    datasets = pytest.importorskip("datasets")
    images = _images(6, "L")
    datasets.DatasetDict({"train": _hf_dataset(images), "test": _hf_dataset(images[:2])}).save_to_disk(tmp_path / "d")
    ds = load_dataset(f"hf-disk:{tmp_path / 'd'}", id_column="uid")  # image/label columns found by feature type
    assert ds.images.shape == (6, 1, 8, 8) and ds.class_names == ["cat", "dog", "owl"]
    assert ds.labels.tolist() == [0, 1, 2, 0, 1, 2] and ds.source_ids == [f"ex-{i:03d}" for i in range(6)]
    for i, a in enumerate(images):
        np.testing.assert_array_equal(ds.images[i, 0], a)
    assert len(load_dataset(f"hf-disk:{tmp_path / 'd'}", split="test")) == 2
    small = load_dataset(f"hf-disk:{tmp_path / 'd'}", resolution=4, resize="resize", channels=3)
    assert small.images.shape == (6, 3, 4, 4) and small.source_ids == [str(i) for i in range(6)]
    with pytest.raises(DatasetError, match="no image column 'photo'"):
        load_dataset(f"hf-disk:{tmp_path / 'd'}", image_column="photo")


def test_hf_load_dataset_from_a_local_data_folder(tmp_path):
    """hf:NAME goes through datasets.load_dataset (the hub path for users); a local parquet folder tests it offline."""
    pytest.importorskip("datasets")
    images = _images(4)
    (tmp_path / "repo" / "data").mkdir(parents=True)
    _hf_dataset(images).to_parquet(tmp_path / "repo" / "data" / "train-00000-of-00001.parquet")
    ds = load_dataset(f"hf:{tmp_path / 'repo'}:train")
    assert ds.class_names == ["cat", "dog", "owl"] and ds.labels.tolist() == [0, 1, 2, 0]
    for i, a in enumerate(images):
        np.testing.assert_array_equal(ds.images[i], a.transpose(2, 0, 1))
