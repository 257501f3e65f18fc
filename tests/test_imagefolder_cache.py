"""imagefolder: ADM centre crop and the resumable on-disk decoded-image cache (cache_dir=)."""
import os
import threading

import numpy as np
import pytest
from PIL import Image

from diffprune.config import ConfigError, validate_config
from diffprune.data import DataConfig, DatasetError, load_dataset
from diffprune.data import decode, imagefolder_cache

RES = 16
READ_IMAGE = decode._read_image  # the real reader, for wrappers installed by several monkeypatches


def adm_center_crop(pil: Image.Image, size: int) -> np.ndarray:
    """ADM's ``center_crop_arr`` (guided-diffusion image_datasets.py), verbatim apart from names."""
    while min(*pil.size) >= 2 * size:
        pil = pil.resize(tuple(x // 2 for x in pil.size), resample=Image.BOX)
    scale = size / min(*pil.size)
    pil = pil.resize(tuple(round(x * scale) for x in pil.size), resample=Image.BICUBIC)
    arr = np.array(pil)
    top, left = (arr.shape[0] - size) // 2, (arr.shape[1] - size) // 2
    return arr[top : top + size, left : left + size]


@pytest.fixture
def folder(tmp_path):
    """32 files in 3 classes: PNG and JPEG of 12..70 px a side, one grey, one 100 x 45, one corrupt."""
    rng = np.random.default_rng(0)
    root = tmp_path / "imgs"
    for k, cls in enumerate(("ant", "bee", "cow")):
        (root / cls).mkdir(parents=True)
        for i in range(10):
            h, w = rng.integers(12, 70, 2)
            arr = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
            ext = "png" if i % 2 else "jpg"
            Image.fromarray(arr).save(root / cls / f"{i:02d}.{ext}")
    Image.fromarray(rng.integers(0, 256, (45, 100, 3), dtype=np.uint8)).save(root / "ant" / "wide.png")
    Image.fromarray(rng.integers(0, 256, (30, 30), dtype=np.uint8)).save(root / "bee" / "grey.png")
    (root / "cow" / "05.png").write_bytes(b"not a png")  # replaces one image by a corrupt file
    return root


def load(folder, cache=None, **kw):
    kw = {"resolution": RES, "resize": "center-crop", "skip_bad": True, **kw}
    return load_dataset(f"imagefolder:{folder}", cache_dir=None if cache is None else str(cache), **kw)


def count_reads(monkeypatch, fail_after: int | None = None) -> list[int]:
    """Wrap the per-file reader: counts calls in ``calls[0]``, raises RuntimeError past ``fail_after``."""
    calls, lock = [0], threading.Lock()

    def reader(*args, **kwargs):
        with lock:
            calls[0] += 1
            if fail_after is not None and calls[0] > fail_after:
                raise RuntimeError("interrupted")
        return READ_IMAGE(*args, **kwargs)

    monkeypatch.setattr(decode, "_read_image", reader)
    return calls


def n_files(folder) -> int:
    return sum(1 for p in folder.rglob("*") if p.is_file())


def test_center_crop_matches_adm_reference(folder):
    ds = load(folder)
    wide_row = sorted(p.name for p in (folder / "ant").iterdir()).index("wide.png")  # ant is class 0: rows first
    expect = adm_center_crop(Image.open(folder / "ant" / "wide.png").convert("RGB"), RES)
    np.testing.assert_array_equal(ds.images[wide_row], expect.transpose(2, 0, 1))
    assert ds.images.shape == (31, 3, RES, RES)  # 32 files, one corrupt

    digits = load_dataset("digits", resolution=RES, resize="center-crop")  # square arrays: a plain resize
    raw = load_dataset("digits")
    np.testing.assert_array_equal(digits.images[3, 0], adm_center_crop(Image.fromarray(raw.images[3, 0]), RES))


@pytest.mark.parametrize("opts", [{}, {"resize": "pad", "channels": 1}, {"resize": "resize", "limit": 7}])
def test_cached_load_equals_uncached(folder, tmp_path, opts):
    plain, cached = load(folder, **opts), load(folder, tmp_path / "cache", **opts)
    if "limit" not in opts:
        assert isinstance(cached.images, np.memmap) and not cached.images.flags.writeable
    np.testing.assert_array_equal(np.asarray(cached.images), plain.images)
    np.testing.assert_array_equal(cached.labels, plain.labels)
    assert cached.class_names == plain.class_names == ["ant", "bee", "cow"]
    assert cached.skipped == plain.skipped and cached.skipped[0].endswith("05.png")
    again = load(folder, tmp_path / "cache", **opts)
    assert again.fingerprint == cached.fingerprint


def test_second_load_is_served_from_cache(folder, tmp_path, monkeypatch):
    first = load(folder, tmp_path / "cache")
    monkeypatch.setattr(decode, "_read_image", lambda *a, **k: pytest.fail("decoded despite the cache"))
    second = load(folder, tmp_path / "cache")
    assert isinstance(second.images, np.memmap)
    np.testing.assert_array_equal(np.asarray(second.images), np.asarray(first.images))
    assert second.fingerprint == first.fingerprint
    assert len(second.subset(np.array([2, 0])).images) == 2  # a subset copies only its rows


def test_interrupted_decode_resumes_where_it_stopped(folder, tmp_path, monkeypatch):
    monkeypatch.setattr(decode, "DECODE_THREADS", 1)
    monkeypatch.setattr(decode, "DECODE_BATCH", 4)
    count_reads(monkeypatch, fail_after=10)
    with pytest.raises(RuntimeError, match="interrupted"):
        load(folder, tmp_path / "cache")
    (cache,) = (tmp_path / "cache").iterdir()
    assert not (cache / "meta.json").exists()
    calls = count_reads(monkeypatch)
    resumed = load(folder, tmp_path / "cache")
    assert calls[0] == n_files(folder) - 10  # only the rest was decoded
    np.testing.assert_array_equal(np.asarray(resumed.images), load(folder).images)


def test_killed_decode_resumes_from_last_checkpoint(folder, tmp_path, monkeypatch):
    """A hard kill skips the final checkpoint: the decode resumes at the last periodic one."""
    monkeypatch.setattr(decode, "DECODE_THREADS", 1)
    monkeypatch.setattr(decode, "DECODE_BATCH", 1)  # no read-ahead: the kill lands right after read 12
    monkeypatch.setattr(imagefolder_cache, "CHECKPOINT_EVERY", 5)
    killed, real_checkpoint = [False], imagefolder_cache._checkpoint

    def checkpoint(mm, path, state):
        if not killed[0]:
            real_checkpoint(mm, path, state)

    def reader(*args, **kwargs):
        if reads[0] >= 12:
            killed[0] = True
            raise KeyboardInterrupt
        reads[0] += 1
        return READ_IMAGE(*args, **kwargs)

    reads = [0]
    monkeypatch.setattr(imagefolder_cache, "_checkpoint", checkpoint)
    monkeypatch.setattr(decode, "_read_image", reader)
    with pytest.raises(KeyboardInterrupt):
        load(folder, tmp_path / "cache")
    killed[0] = False
    calls = count_reads(monkeypatch)
    resumed = load(folder, tmp_path / "cache")
    assert calls[0] == n_files(folder) - 10  # rows 10 and 11 were written but not checkpointed: redone
    np.testing.assert_array_equal(np.asarray(resumed.images), load(folder).images)


def test_new_cache_when_resolution_or_a_file_changes(folder, tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    a = load(folder, cache)
    b = load(folder, cache, resolution=RES // 2)
    assert b.images.shape[-1] == RES // 2 and len(list(cache.iterdir())) == 2
    f = folder / "bee" / "03.png"
    os.utime(f, ns=(f.stat().st_atime_ns, f.stat().st_mtime_ns + 10**9))
    calls = count_reads(monkeypatch)
    c = load(folder, cache)
    assert calls[0] == n_files(folder) and len(list(cache.iterdir())) == 3
    assert c.fingerprint != a.fingerprint != b.fingerprint
    np.testing.assert_array_equal(np.asarray(c.images), np.asarray(a.images))  # same pixels, new key


def test_bad_files_without_skip_bad(folder, tmp_path):
    with pytest.raises(DatasetError, match="05.png"):
        load(folder, tmp_path / "cache", skip_bad=False)
    with pytest.raises(DatasetError, match="05.png"):
        load(folder, skip_bad=False)
    done = load(folder, tmp_path / "cache")  # resumes the failed decode, skipping the file
    assert len(done) == 31
    with pytest.raises(DatasetError, match="05.png"):  # the finished cache remembers the bad file
        load(folder, tmp_path / "cache", skip_bad=False)


def test_cache_needs_resolution(folder, tmp_path):
    with pytest.raises(DatasetError, match="cache_dir needs a fixed resolution"):
        load(folder, tmp_path / "cache", resolution=None)
    with pytest.raises(ConfigError, match="cache_dir needs a fixed resolution"):
        validate_config(DataConfig, {"spec": f"imagefolder:{folder}", "cache_dir": str(tmp_path)})
    cfg = validate_config(DataConfig, {"spec": f"imagefolder:{folder}", "cache_dir": str(tmp_path / "c"),
                                       "resolution": RES, "resize": "center-crop", "skip_bad": True})
    assert isinstance(cfg.load().images, np.memmap)


def test_resume_from_another_working_directory(folder, tmp_path, monkeypatch):
    """Skipped files are recorded by index, so a relative spec from another cwd resumes consistently."""
    monkeypatch.setattr(decode, "DECODE_THREADS", 1)
    monkeypatch.chdir(folder.parent)
    count_reads(monkeypatch, fail_after=29)  # the corrupt cow/05.png (file 27) is already skipped
    with pytest.raises(RuntimeError):
        load("imgs", tmp_path / "cache")
    monkeypatch.chdir(folder / "ant")
    count_reads(monkeypatch)
    resumed, plain = load("../../imgs", tmp_path / "cache"), load("../../imgs")
    np.testing.assert_array_equal(resumed.labels, plain.labels)
    assert resumed.skipped == plain.skipped == ["../../imgs/cow/05.png"]
