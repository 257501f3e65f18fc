"""diffprune: data-efficient diffusion training by pruning then reweighting the training set."""

import os as _os

__version__ = "0.1.0"

# OpenMP worker threads that spin while they wait for a core collapse training on a shared CPU (11x slower beside
# one busy process, measured in docs/benchmarks.md); sleeping waiters cost little alone. OpenMP reads this when
# torch loads it, so it takes effect only where diffprune is imported before torch (the CLI, scripts that import
# diffprune first); export it yourself otherwise.
_os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


def coreset(*args, **kwargs):
    """The coreset of a dataset or of a run's arm, with ``subset()``, ``sampler()`` and
    ``distributed_sampler()``: see ``diffprune.export.coreset.coreset``."""
    from diffprune.export import coreset as _coreset  # torch and friends load on first use, not on import

    return _coreset(*args, **kwargs)


def prune_and_reweight(*args, **kwargs):
    """The whole method on a user's dataset (embed -> select -> DRO class weights), cached in a folder the
    caller names: see ``diffprune.api.prune_and_reweight``."""
    from diffprune.api import prune_and_reweight as _prune_and_reweight  # heavy imports on first use

    return _prune_and_reweight(*args, **kwargs)
