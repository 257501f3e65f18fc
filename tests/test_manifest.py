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


def test_begin_invalidates_until_finish(tmp_path):
    """A stage that crashes between begin() and finish() must not look complete on the next run."""
    s = StageDir(tmp_path / "t", "train", {"a": 1})
    s.begin()
    s.finish()
    assert s.is_complete()
    s.begin()  # a re-run starts ...
    assert not s.is_complete()  # ... and until it finishes, the old manifest no longer counts


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
