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


def test_changing_only_resume_mutable_fields_extends_and_the_manifest_keeps_the_history(tmp_path):
    mutable = frozenset({"steps"})
    first = StageDir(tmp_path / "t", "train", {"lr": 1e-3, "steps": 4}, {"data": "d"}, mutable=mutable)
    assert first.status() == "run"
    first.begin()
    m1 = first.finish("fp")
    assert first.status() == "cached" and [a["steps"] for a in m1["attempts"]] == [4]
    longer = StageDir(tmp_path / "t", "train", {"lr": 1e-3, "steps": 8}, {"data": "d"}, mutable=mutable)
    assert longer.status() == "extend" and not longer.was_interrupted()  # the 4-step attempt finished
    # a checkpoint past the budget cannot be rewound, another lr is another trajectory, other data too
    assert StageDir(tmp_path / "t", "train", {"lr": 1e-3, "steps": 8}, {"data": "d"}, mutable=mutable,
                    resumable=False).status() == "run"
    assert StageDir(tmp_path / "t", "train", {"lr": 2e-3, "steps": 8}, {"data": "d"}, mutable=mutable).status() == "run"
    assert StageDir(tmp_path / "t", "train", {"lr": 1e-3, "steps": 8}, {"data": "e"}, mutable=mutable).status() == "run"
    assert longer.status(force=True) == "run"
    longer.begin(continues=True)
    assert longer.status() == "resume"  # an extension killed midway resumes
    m2 = longer.finish("fp2", attempt_extra={"resumed_from": 4, "eval_seconds": 1.5})
    assert [a["steps"] for a in m2["attempts"]] == [4, 8] and m2["attempts"][1]["resumed_from"] == 4
    assert m2["seconds"] == round(m1["seconds"] + m2["attempts"][1]["seconds"], 3)
    assert m2["eval_seconds"] == 1.5 and m2["started"] == m1["started"]
    # a fresh start (not continuing) drops the history
    again = StageDir(tmp_path / "t", "train", {"lr": 1e-3, "steps": 8}, {"data": "d"}, mutable=mutable)
    again.begin()
    assert len(again.finish("fp3")["attempts"]) == 1
