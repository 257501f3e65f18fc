import json
import os

import numpy as np
import pytest

from diffprune.io import (
    atomic_path,
    atomic_save_npz,
    atomic_write_json,
    config_hash,
    hash_arrays,
    hash_file,
    read_json,
)


def test_atomic_write_replaces_and_leaves_no_temporaries(tmp_path):
    p = tmp_path / "a" / "x.json"
    atomic_write_json(p, {"a": 1, "arr": np.arange(3), "f": np.float32(0.5)})
    atomic_write_json(p, {"a": 2})
    assert read_json(p) == {"a": 2}
    assert os.listdir(p.parent) == ["x.json"]


def test_atomic_write_keeps_old_file_when_writer_crashes(tmp_path):
    p = tmp_path / "x.txt"
    p.write_text("old")
    with pytest.raises(RuntimeError):
        with atomic_path(p) as tmp:
            tmp.write_text("half")
            raise RuntimeError("crash")
    assert p.read_text() == "old"
    assert os.listdir(tmp_path) == ["x.txt"]


def test_atomic_directory_swap(tmp_path):
    d = tmp_path / "model"
    for version in ("1", "2"):
        with atomic_path(d, is_dir=True) as tmp:
            (tmp / "w.txt").write_text(version)
    assert (d / "w.txt").read_text() == "2"
    assert sorted(os.listdir(tmp_path)) == ["model"]


def test_npz_roundtrip(tmp_path):
    a = np.arange(12, dtype=np.int64).reshape(3, 4)
    atomic_save_npz(tmp_path / "s.npz", indices=a)
    with np.load(tmp_path / "s.npz") as z:
        np.testing.assert_array_equal(z["indices"], a)


def test_hashes_are_content_based():
    a = np.arange(10, dtype=np.uint8)
    assert hash_arrays(a) == hash_arrays(a.copy())
    assert hash_arrays(a) != hash_arrays(a.astype(np.int64))  # dtype matters
    assert hash_arrays(a) != hash_arrays(a.reshape(2, 5))  # shape matters
    assert hash_arrays(a, None) != hash_arrays(a)
    assert config_hash({"b": 1, "a": [1, 2]}) == config_hash({"a": [1, 2], "b": 1})
    assert config_hash({"a": 1}) != config_hash({"a": 2})


def test_hash_file_matches_sha256(tmp_path):
    import hashlib

    p = tmp_path / "f.bin"
    data = os.urandom(3 << 20)
    p.write_bytes(data)
    assert hash_file(p, length=64) == hashlib.sha256(data).hexdigest()
    json.dumps(hash_file(p))
