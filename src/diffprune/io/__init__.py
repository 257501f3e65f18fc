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
)
from diffprune.io.hashing import config_hash, hash_arrays, hash_file, hash_state_dict

__all__ = [
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
