"""diffprune: data-efficient diffusion training by pruning then reweighting the training set."""

__version__ = "0.1.0"


def coreset(*args, **kwargs):
    """The coreset of a dataset or of a run's arm, with ``subset()``, ``sampler()`` and
    ``distributed_sampler()``: see ``diffprune.export.coreset.coreset``."""
    from diffprune.export import coreset as _coreset

    return _coreset(*args, **kwargs)
