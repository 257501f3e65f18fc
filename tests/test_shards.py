"""webdataset:PATTERN: tar shards written here (tarfile) against the same images read as an image folder."""
from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from diffprune.data import DataConfig, DatasetError, load_dataset

pytest.importorskip("webdataset")


def _folder(root: Path, classes=("ant", "bee", "cat"), per_class: int = 4) -> Path:
    """An ImageFolder of 8 x 8 RGB PNGs, ``per_class`` per class folder."""
    rng = np.random.default_rng(1)
    for c in classes:
        (root / c).mkdir(parents=True)
        for i in range(per_class):
            Image.fromarray(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)).save(root / c / f"{c}{i}.png")
    return root


def _member(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


def _write_shards(samples: list[dict[str, bytes]], pattern: str, per_shard: int) -> list[Path]:
    """Samples ({"__key__": ..., ext: bytes}) into shards named ``pattern % k``, ``per_shard`` each."""
    paths = []
    for k in range(0, len(samples), per_shard):
        path = Path(pattern % (k // per_shard))
        with tarfile.open(path, "w") as tar:
            for s in samples[k:k + per_shard]:
                for ext, data in s.items():
                    if ext != "__key__":
                        _member(tar, f"{s['__key__']}.{ext}", data)
        paths.append(path)
    return paths


def _folder_samples(root: Path, label: str = "cls") -> list[dict[str, bytes]]:
    """One sample per file of ``root``, in torchvision ImageFolder's order, with its class as ``label``."""
    from torchvision.datasets import ImageFolder

    tv = ImageFolder(str(root))
    out = []
    for path, k in tv.samples:
        s = {"__key__": Path(path).stem, "png": Path(path).read_bytes()}
        if label == "cls":
            s["cls"] = tv.classes[k].encode()
        elif label == "json":
            s["json"] = json.dumps({"label": k, "caption": "x"}).encode()
        out.append(s)
    return out


def test_shards_match_the_image_folder(tmp_path):
    from torchvision.datasets import ImageFolder

    root = _folder(tmp_path / "folder")
    (tmp_path / "shards").mkdir()
    _write_shards(_folder_samples(root), str(tmp_path / "shards" / "train-%03d.tar"), per_shard=5)  # 12 -> 3 shards
    ds = load_dataset(f"webdataset:{tmp_path}/shards/train-{{000..002}}.tar")
    tv = ImageFolder(str(root))  # the oracle: torchvision's decoding, classes and order
    assert ds.class_names == tv.classes and ds.labels.tolist() == [k for _, k in tv.samples]
    assert len(ds) == 12 and ds.images.shape == (12, 3, 8, 8)
    for i, (img, _) in enumerate(tv):
        np.testing.assert_array_equal(ds.images[i], np.asarray(img).transpose(2, 0, 1))
    expected = [f"train-{i // 5:03d}.tar/{Path(p).stem}" for i, (p, _) in enumerate(tv.samples)]
    assert ds.source_ids == expected
    # resizing and channel conversion follow the image folder's decoding exactly
    opts = dict(resolution=4, resize="resize", channels=1)
    small = load_dataset(f"webdataset:{tmp_path}/shards/train-{{000..002}}.tar", **opts)
    np.testing.assert_array_equal(small.images, load_dataset(f"imagefolder:{root}", **opts).images)
    via_config = DataConfig(spec=f"webdataset:{tmp_path}/shards/train-{{000..002}}.tar", **opts).load()
    np.testing.assert_array_equal(via_config.images, small.images)


def test_integer_and_json_classes_and_the_label_option(tmp_path):
    root = _folder(tmp_path / "folder", per_class=2)
    samples = _folder_samples(root, label="json")
    for s in samples:  # a second class key, the reverse of the json label
        s["grp"] = str(2 - json.loads(s["json"])["label"]).encode()
    _write_shards(samples, str(tmp_path / "s%d.tar"), per_shard=6)
    ds = load_dataset(f"webdataset:{tmp_path}/s0.tar")  # json:label found on its own; ids 0..2
    assert ds.class_names == ["0", "1", "2"] and ds.labels.tolist() == [0, 0, 1, 1, 2, 2]
    grp = load_dataset(f"webdataset:{tmp_path}/s0.tar", label_column="grp")
    assert grp.labels.tolist() == [2, 2, 1, 1, 0, 0]
    bare = [{k: v for k, v in s.items() if k in ("__key__", "png")} for s in samples]
    _write_shards(bare, str(tmp_path / "bare%d.tar"), per_shard=6)
    assert load_dataset(f"webdataset:{tmp_path}/bare0.tar").labels is None  # no class member: unlabelled
    with pytest.raises(DatasetError, match=r"sample 'bare0.tar/ant0' has no 'cls' member"):
        load_dataset(f"webdataset:{tmp_path}/bare0.tar", label_column="cls")
    gap = [{**s, "cls": b"2" if i % 2 else b"0"} for i, s in enumerate(bare)]  # ids 0 and 2: class 1 empty
    _write_shards(gap, str(tmp_path / "gap%d.tar"), per_shard=6)
    with pytest.raises(DatasetError, match=r"class ids \[1\] have no sample"):
        load_dataset(f"webdataset:{tmp_path}/gap0.tar")


def test_clear_errors_and_skip_bad(tmp_path):
    root = _folder(tmp_path / "folder", per_class=2)
    samples = _folder_samples(root)
    _write_shards(samples, str(tmp_path / "ok%d.tar"), per_shard=6)
    with pytest.raises(DatasetError, match="no shard matches"):
        load_dataset(f"webdataset:{tmp_path}/nope-{{0..3}}.tar")
    with pytest.raises(DatasetError, match=r"3 of 4 shards .* do not exist"):
        load_dataset(f"webdataset:{tmp_path}/ok{{0..3}}.tar")
    with pytest.raises(DatasetError, match="only local shards"):
        load_dataset("webdataset:https://example.com/s-{0..1}.tar")
    _write_shards([{"__key__": "a", "txt": b"caption"}], str(tmp_path / "text%d.tar"), per_shard=1)
    with pytest.raises(DatasetError, match=r"shard '.*text0.tar' holds no 'png' members"):
        load_dataset(f"webdataset:{tmp_path}/{{ok0,text0}}.tar")
    # one sample missing its image, one with broken bytes: refused, or skipped and listed with data.skip_bad
    samples[1] = {"__key__": "noimg", "cls": b"ant"}
    samples[2] = {"__key__": "broken", "png": b"not a png", "cls": b"ant"}
    _write_shards(samples, str(tmp_path / "bad%d.tar"), per_shard=6)
    with pytest.raises(DatasetError, match=r"sample 'bad0.tar/noimg' has no 'png' member"):
        load_dataset(f"webdataset:{tmp_path}/bad0.tar")
    ds = load_dataset(f"webdataset:{tmp_path}/bad0.tar", skip_bad=True)
    assert len(ds) == 4 and [s.split(" ")[0] for s in ds.skipped] == ["bad0.tar/noimg", "bad0.tar/broken"]
    assert "bad0.tar/broken" not in ds.source_ids and ds.source_ids[0] == "bad0.tar/ant0"
    (tmp_path / "junk.tar").write_bytes(b"\0junk" * 50)
    with pytest.raises(DatasetError, match="cannot read shard"):
        load_dataset(f"webdataset:{tmp_path}/junk.tar")
