"""Take the coreset elsewhere: file lists (``coreset.csv``/``.jsonl``), a torch ``Subset`` with weighted
(and distributed) samplers, diffusers pipeline folders."""
from diffprune.export.coreset import Coreset, CoresetError, coreset, from_selection
from diffprune.export.user_data import read_dataset
from diffprune.export.samplers import WeightedDistributedSampler
from diffprune.export.table import COLUMNS, coreset_rows, read_coreset, write_coreset

__all__ = ["COLUMNS", "Coreset", "CoresetError", "WeightedDistributedSampler", "coreset", "coreset_rows",
           "from_selection", "read_coreset", "read_dataset", "write_coreset"]
