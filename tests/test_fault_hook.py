"""The io layer's aimed fault hook (``diffprune.io.faults``, issue 28) at a few write points of each kind: a kill
right after a write resumes to the same files, ENOSPC and EROFS end in one line naming the path, the free
space of its file system and what to do. The full sweep is ``benchmarks/fault_injection.py --aimed``."""
from __future__ import annotations

import shutil

import pytest

from diffprune.errors import user_message
from diffprune.io import DiskSpaceError, atomic_path, atomic_write_json, faults
from diffprune.pipeline import Pipeline, load_run_config


class Killed(BaseException):
    """Raised where the hook would SIGKILL: unwinds like a crash, in-process."""


def _aim(monkeypatch, spec):
    def kill(pid, sig):
        raise Killed(spec)

    monkeypatch.setattr(faults.os, "kill", kill)
    monkeypatch.setenv(faults.FAULT_ENV, spec)


def _clear_line(line, path):
    return line is not None and "\n" not in line and str(path) in line and " free on the file system of " in line \
        and "; " in line and "run the same command" in line


@pytest.mark.parametrize("kind", ["enospc", "erofs"])
def test_a_failed_write_is_one_line_and_leaves_the_old_file(tmp_path, monkeypatch, kind):
    target = atomic_write_json(tmp_path / "a.json", {"v": 1})
    _aim(monkeypatch, f"{kind}@1")
    with pytest.raises(OSError) as e:
        atomic_write_json(target, {"v": 2})
    assert _clear_line(user_message(e.value), target), user_message(e.value)
    assert target.read_text() == '{\n  "v": 1\n}\n' and [p.name for p in tmp_path.iterdir()] == ["a.json"]


def test_a_kill_after_write_n_keeps_writes_1_to_n(tmp_path, monkeypatch):
    _aim(monkeypatch, "kill@2")
    atomic_write_json(tmp_path / "1.json", 1)
    with pytest.raises(Killed):
        atomic_write_json(tmp_path / "2.json", 2)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["1.json", "2.json"]


def test_a_library_full_disk_message_becomes_one_line_naming_the_file(tmp_path):
    target = tmp_path / "x.npy"
    with pytest.raises(DiskSpaceError) as e:
        with atomic_path(target):
            raise OSError("256000 requested and 89984 written")  # numpy's words for a full disk
    assert _clear_line(user_message(e.value), target) and "delete" not in user_message(e.value)
    assert not target.exists()


TINY = ["data.limit=60", "data.resolution=8", "data.resize=pad", "embed.encoder=pixels", "select.ratio=0.5",
        "arms=[{method: random}]"]


def _select(runs):
    pipe = Pipeline(load_run_config("configs/demo.yaml", [*TINY, f"runs_dir={runs}"]), progress=False)
    pipe.select(pipe.cfg.arms[0])
    return runs / "demo" / "selection" / "random-r0.5"


@pytest.fixture(scope="module")
def straight(tmp_path_factory):
    runs = tmp_path_factory.mktemp("straight")
    with pytest.MonkeyPatch.context() as mp:
        log = runs.parent / "select-writes.log"
        mp.setenv(faults.FAULT_LOG_ENV, str(log))
        folder = _select(runs)
    paths = [line.split("\t")[1] for line in log.read_text().splitlines()]
    return folder, [p for p in paths if "/selection/" in p]


@pytest.mark.parametrize("name", ["selection.npz", "coreset.csv", "manifest.json"])
def test_kill_after_a_select_write_then_rerun_gives_the_same_files(tmp_path, monkeypatch, straight, name):
    folder, paths = straight
    n = next(i for i, p in enumerate(paths) if p.endswith("/" + name))
    _select(tmp_path)  # embed and select once, then drop select to run it again aimed (numbered from 1)
    shutil.rmtree(tmp_path / "demo" / "selection")
    _aim(monkeypatch, f"kill@{n + 1}")
    with pytest.raises(Killed):
        _select(tmp_path)
    monkeypatch.delenv(faults.FAULT_ENV)
    got = _select(tmp_path)
    for f in ("selection.npz", "coreset.csv", "selection.json"):
        assert (got / f).read_bytes() == (folder / f).read_bytes(), f


def test_kill_after_embed_commits_its_features_leaves_no_bookkeeping(tmp_path, monkeypatch, straight):
    """The aimed suite's one miss (kill right after embed's meta.json): the rerun must drop partial.json and
    the progress marks, so the folder equals an uninterrupted one."""
    folder, _ = straight
    embed = folder.parents[1] / "features" / "pixels-size112"
    log = tmp_path / "writes.log"
    monkeypatch.setenv(faults.FAULT_LOG_ENV, str(log))  # number the writes of an embed: find meta.json's
    runs = tmp_path / "a"
    pipe = Pipeline(load_run_config("configs/demo.yaml", [*TINY, f"runs_dir={runs}"]), progress=False)
    pipe.embed()
    n = next(int(line.split("\t")[0]) for line in log.read_text().splitlines() if line.endswith("/meta.json"))
    monkeypatch.delenv(faults.FAULT_LOG_ENV)
    runs = tmp_path / "b"
    _aim(monkeypatch, f"kill@{n}")
    pipe = Pipeline(load_run_config("configs/demo.yaml", [*TINY, f"runs_dir={runs}"]), progress=False)
    with pytest.raises(Killed):
        pipe.embed()
    monkeypatch.delenv(faults.FAULT_ENV)
    Pipeline(load_run_config("configs/demo.yaml", [*TINY, f"runs_dir={runs}"]), progress=False).embed()
    got = runs / "demo" / "features" / "pixels-size112"
    names = sorted(p.name for p in got.rglob("*") if not p.name.startswith("."))
    assert names == sorted(p.name for p in embed.rglob("*") if not p.name.startswith(".")), names


@pytest.mark.parametrize("kind", ["enospc", "erofs"])
def test_enospc_and_erofs_at_a_select_write_are_one_clear_line(tmp_path, monkeypatch, straight, kind):
    folder, paths = straight
    _select(tmp_path)
    shutil.rmtree(tmp_path / "demo" / "selection")
    n = next(i for i, p in enumerate(paths) if p.endswith("/selection.npz"))
    _aim(monkeypatch, f"{kind}@{n + 1}")
    with pytest.raises(Exception) as e:
        _select(tmp_path)
    assert _clear_line(user_message(e.value), tmp_path / "demo/selection/random-r0.5/selection.npz"), \
        user_message(e.value)
    monkeypatch.delenv(faults.FAULT_ENV)
    assert (_select(tmp_path) / "selection.npz").read_bytes() == (folder / "selection.npz").read_bytes()
