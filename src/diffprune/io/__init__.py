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
    sync_tree,
)
from diffprune.io.env import EnvError, env_flag
from diffprune.io.hashing import config_hash, file_checksum, hash_arrays, hash_file, hash_state_dict
from diffprune.io.lock import LockBusy, folder_lock, lock_holder
from diffprune.io.space import DiskSpaceError, disk_full_error, ensure_free_space, free_space, is_disk_full

__all__ = [
    "DiskSpaceError",
    "EnvError",
    "env_flag",
    "disk_full_error",
    "free_space",
    "is_disk_full",
    "sync_tree",
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
