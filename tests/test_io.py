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
    # the default is the digest's 16-hex prefix, a plain str that goes into JSON manifests as it is
    assert hash_file(p) == hashlib.sha256(data).hexdigest()[:16]
    assert json.loads(json.dumps({"h": hash_file(p)})) == {"h": hashlib.sha256(data).hexdigest()[:16]}
    # chunked reading (the last chunk partial) gives the one-shot digest
    assert hash_file(p, length=64, chunk=(1 << 20) - 7) == hashlib.sha256(data).hexdigest()


# ---- reliability: locks, stale temporaries, permissions, free space (issue 16) --------------------------------

def _holder(folder, *, release_after: float = 60.0):
    import subprocess
    import sys

    code = ("import sys, time; from diffprune.io import folder_lock\n"
            "with folder_lock(sys.argv[1]):\n    print('locked', flush=True); time.sleep(float(sys.argv[2]))\n")
    p = subprocess.Popen([sys.executable, "-c", code, str(folder), str(release_after)], stdout=subprocess.PIPE,
                         text=True)
    assert p.stdout.readline().strip() == "locked"
    return p


def test_folder_lock_refuses_a_second_writer_and_is_released_when_its_holder_is_killed(tmp_path):
    import signal

    from diffprune.io import LockBusy, folder_lock

    p = _holder(tmp_path / "stage")
    try:
        with pytest.raises(LockBusy, match=f"pid {p.pid}"):
            with folder_lock(tmp_path / "stage"):
                pass
    finally:
        p.send_signal(signal.SIGKILL)
        p.wait()
    with folder_lock(tmp_path / "stage") as lock:  # the kernel dropped the dead holder's lock
        assert json.loads(lock.read_text())["pid"] == os.getpid()


def test_folder_lock_with_wait_queues_behind_the_holder(tmp_path):
    import time

    from diffprune.io import folder_lock

    p = _holder(tmp_path / "stage", release_after=1.5)
    seen = []
    t0 = time.monotonic()
    with folder_lock(tmp_path / "stage", wait=True, on_wait=seen.append):
        waited = time.monotonic() - t0
    p.wait()
    assert len(seen) == 1 and f"pid {p.pid}" in seen[0] and waited > 0.5


def test_stale_temporaries_of_dead_writers_are_removed_live_ones_kept(tmp_path):
    import subprocess
    import sys

    from diffprune.io import remove_stale_temps

    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead_pid = int(dead.stdout)
    (tmp_path / "sub").mkdir()
    stale_file = tmp_path / "sub" / f".features.npy.{dead_pid}.abc123.tmp"
    stale_dir = tmp_path / f".model.{dead_pid}.x1y2.tmp"
    live = tmp_path / f".model.{os.getpid()}.zz.tmp"
    fixed = tmp_path / ".state.tmp"  # no pid: only a lock holder may remove it
    stale_file.write_bytes(b"x")
    for d in (stale_dir, live, fixed):
        d.mkdir()
    (stale_dir / "w.safetensors").write_bytes(b"x")
    assert sorted(remove_stale_temps(tmp_path)) == sorted([stale_file, stale_dir])
    assert live.exists() and fixed.exists()
    assert sorted(remove_stale_temps(tmp_path, all_writers=True)) == sorted([live, fixed])


def test_atomic_writes_follow_the_umask(tmp_path):
    import stat

    old = os.umask(0o002)
    try:
        from diffprune.io import atomic_write_text

        f = atomic_write_text(tmp_path / "a.txt", "x")
        with atomic_path(tmp_path / "d", is_dir=True) as tmp:
            (tmp / "w").write_text("y")
    finally:
        os.umask(old)
    assert stat.S_IMODE(f.stat().st_mode) == 0o664
    assert stat.S_IMODE((tmp_path / "d").stat().st_mode) == 0o775


def test_free_space_check_names_path_and_sizes(tmp_path):
    import errno
    import shutil

    from diffprune.io import DiskSpaceError, ensure_free_space

    free = shutil.disk_usage(tmp_path).free
    ensure_free_space(tmp_path / "new" / "f.npy", 1000)
    with pytest.raises(DiskSpaceError) as e:
        ensure_free_space(tmp_path / "new" / "f.npy", free * 2)
    assert e.value.errno == errno.ENOSPC and "f.npy" in e.value.strerror and "MB free" in e.value.strerror
