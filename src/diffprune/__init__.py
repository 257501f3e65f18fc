"""diffprune: data-efficient diffusion training by pruning then reweighting the training set."""

__version__ = "0.1.0"
