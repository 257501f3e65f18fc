"""Ground floor: atomic file writes and content hashing shared by every stage."""
from diffprune.io.atomic import (
    atomic_path,
    atomic_save_npy,
    atomic_save_npz,
    atomic_write_bytes,
    atomic_write_json,
    atomic_write_text,
    atomic_write_yaml,
    read_json,
    read_yaml,
    remove_stale_temps,
)
from diffprune.io.hashing import config_hash, file_checksum, hash_arrays, hash_file, hash_state_dict
from diffprune.io.lock import LockBusy, folder_lock, lock_holder
from diffprune.io.space import DiskSpaceError, ensure_free_space

__all__ = [
    "DiskSpaceError",
    "LockBusy",
    "ensure_free_space",
    "file_checksum",
    "folder_lock",
    "lock_holder",
    "remove_stale_temps",
    "atomic_path",
    "atomic_save_npy",
    "atomic_save_npz",
    "atomic_write_bytes",
    "atomic_write_json",
    "atomic_write_text",
    "atomic_write_yaml",
    "config_hash",
    "hash_arrays",
    "hash_file",
    "hash_state_dict",
    "read_json",
    "read_yaml",
]
