"""Stage 2: score the embedded samples and select a per-class (or global) coreset.

    from diffprune.selection import score, select, Selection, SelectConfig, available_methods
"""
from diffprune.selection.config import SelectConfig
from diffprune.selection.errors import SelectionError
from diffprune.selection.grouping import kmeans_clusters
from diffprune.selection.registry import available_methods, register
from diffprune.selection.scoring import score
from diffprune.selection.select import Selection, select, select_from_config

__all__ = [
    "SelectConfig",
    "Selection",
    "SelectionError",
    "available_methods",
    "kmeans_clusters",
    "register",
    "score",
    "select",
    "select_from_config",
]
