import json

from diffprune.pipeline.manifest import StageDir


def test_stage_cache_hit_requires_same_config_and_inputs(tmp_path):
    s = StageDir(tmp_path / "select", "select", {"ratio": 0.3}, {"features": "abc"})
    assert not s.is_complete()
    s.begin()
    assert (tmp_path / "select" / "config.yaml").read_text().strip() == "ratio: 0.3"
    m = s.finish("fp1", images_processed=5)
    assert m["fingerprint"] == "fp1" and m["images_processed"] == 5 and m["seconds"] >= 0
    assert "torch" in m["versions"] and m["device"]
    assert StageDir(tmp_path / "select", "select", {"ratio": 0.3}, {"features": "abc"}).is_complete()
    assert not StageDir(tmp_path / "select", "select", {"ratio": 0.4}, {"features": "abc"}).is_complete()
    assert not StageDir(tmp_path / "select", "select", {"ratio": 0.3}, {"features": "xyz"}).is_complete()


def test_a_recompute_keeps_the_old_result_only_while_its_outputs_are_intact(tmp_path):
    """A forced recompute that fails before touching the outputs keeps the good cache (the manifest is replaced
    only by ``finish``); one that rewrote an output leaves a stage that is not complete."""
    s = StageDir(tmp_path / "t", "train", {"a": 1})
    s.begin()
    (tmp_path / "t" / "out.npy").write_bytes(b"result one")
    s.finish(outputs=("out.npy",))
    assert s.is_complete()
    s.begin()  # a forced re-run starts and fails before writing anything
    assert s.is_complete() and not s.was_interrupted()
    (tmp_path / "t" / "out.npy").write_bytes(b"half of result two")  # a re-run that died mid-write
    assert not s.is_complete() and s.damaged_outputs() == ["out.npy"]
    (tmp_path / "t" / "out.npy").unlink()
    assert s.damaged_outputs() == ["out.npy"]


def test_cached_array_is_checked_against_its_checksum(tmp_path):
    import numpy as np

    s = StageDir(tmp_path / "e", "embed", {"a": 1})
    s.begin()
    np.save(tmp_path / "e" / "features.npy", np.ones((50, 8), np.float32))
    s.finish(outputs=("features.npy",))
    assert s.is_complete()
    m = np.load(tmp_path / "e" / "features.npy", mmap_mode="r+")
    m[17, 3] = np.nan  # same size, same shape: only the content changed
    m.flush()
    del m
    assert not s.is_complete() and s.damaged_outputs() == ["features.npy"]


def test_checkpoint_every_does_not_change_the_config_hash(tmp_path):
    a = StageDir(tmp_path / "r", "reference", {"steps": 10, "checkpoint_every": 5})
    b = StageDir(tmp_path / "r", "reference", {"steps": 10, "checkpoint_every": 7})
    c = StageDir(tmp_path / "r", "reference", {"steps": 11, "checkpoint_every": 5})
    assert a.config_hash == b.config_hash != c.config_hash


def test_corrupt_manifest_is_not_complete(tmp_path):
    s = StageDir(tmp_path / "e", "embed", {"a": 1})
    s.begin()
    (tmp_path / "e" / "manifest.json").write_text("{not json")
    assert not s.is_complete()
    s.finish()
    assert json.loads((tmp_path / "e" / "manifest.json").read_text())["stage"] == "embed"


def test_interrupted_attempt_is_resumable_only_with_same_config(tmp_path):
    s = StageDir(tmp_path / "t", "train", {"steps": 10}, {"data": "a"})
    assert not s.was_interrupted()
    s.begin()  # ... and the process dies before finish()
    assert StageDir(tmp_path / "t", "train", {"steps": 10}, {"data": "a"}).was_interrupted()
    assert not StageDir(tmp_path / "t", "train", {"steps": 20}, {"data": "a"}).was_interrupted()
    assert not StageDir(tmp_path / "t", "train", {"steps": 10}, {"data": "b"}).was_interrupted()
    s.finish()
    assert not s.was_interrupted()  # finished: a cache hit, not a resume
