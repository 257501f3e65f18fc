"""Stage 3: class weights from Group DRO of a proxy diffusion model against a frozen reference (DoReMi-style).

Public API:
    ClassDRO            the pure weight-update state machine (numpy float64)
    ReweightConfig      the ``reweight`` config section
    prepare_reference   resolve a reference model folder (given, from the hub, or trained on the data)
    run_dro             train the proxy (diffusion.train with a DROHook), write class_weights.json, trajectory.npz,
                        plots, summary.json; ``rounds`` > 1: iterated DoReMi (rounds.json)
    load_class_weights  read and validate class_weights.json
    weights_entropy     Shannon entropy (nats) of a weight vector

Example::

    config = ReweightConfig(steps=500, batch_size=60)            # no reference given: one is trained
    reference = prepare_reference(config, full_data, run_dir / "reference")
    summary = run_dro(config, coreset, reference, run_dir / "reweight")   # coreset.labels = groups
    weights = load_class_weights(run_dir / "reweight" / "class_weights.json", coreset.class_names)

With more classes than a batch holds, set ``update_every`` so that ``batch_size * update_every`` is a
multiple of the number of classes: every update then sees every class once per round of the class queue.
"""
from diffprune.reweighting.config import ReweightConfig
from diffprune.reweighting.checkpoint import CheckpointMismatchError
from diffprune.reweighting.dro import ClassDRO, DROStateError
from diffprune.reweighting.reference import prepare_reference
from diffprune.reweighting.hook import DROHook
from diffprune.reweighting.errors import DROInterrupted, ReweightError
from diffprune.reweighting.runner import run_dro
from diffprune.reweighting.weights import (
    ClassWeightsError,
    is_collapsed,
    load_class_weights,
    save_class_weights,
    validate_class_weights,
    weights_entropy,
)

__all__ = [
    "CheckpointMismatchError",
    "ClassDRO",
    "ClassWeightsError",
    "DROInterrupted",
    "DROHook",
    "DROStateError",
    "ReweightConfig",
    "ReweightError",
    "is_collapsed",
    "load_class_weights",
    "prepare_reference",
    "run_dro",
    "save_class_weights",
    "validate_class_weights",
    "weights_entropy",
]
