"""``eval/quality.json`` of a run: for every metric evaluated during training, its floor and its evaluation noise
next to the tolerances (``diffprune.evaluation.quality``), so the report can say whether a 5% target is
resolvable by that metric at that sample count.

- floor: the Frechet distance in the small classifier's features (``classifier_fd``) between disjoint real sets
  of ``train.eval.samples`` and of the reference's size, drawn from the images the classifier can embed (the whole
  split with ``evaluate.classifier.data: split``), over 3 splits. The Inception FID's floor is the evaluate
  stage's ``evaluate.fid_floor`` (held-out real images against the reference).
- noise: the full arm (first seed) evaluated at its final EMA weights with sample seeds 0, 1, 2.

Run it after the sweep (the full arm must be trained):
    python -m diffprune.pipeline.quality CONFIG --name NAME [--seed 0] [--set KEY=VALUE ...]
"""
from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from diffprune.evaluation.quality import evaluation_noise, frechet_floor, tolerance_check
from diffprune.evaluation.speedup import DEFAULT_TOLERANCES
from diffprune.io import atomic_write_json
from diffprune.pipeline.budget import evaluation_curve
from diffprune.config import validate_config
from diffprune.pipeline.config import FULL, RunConfig

NOISE_SEEDS = (0, 1, 2)


def classifier_floor(pipe: Any, n_eval: int, n_ref: int, draws: int = 3) -> dict[str, Any]:
    """The classifier-FD floor: disjoint real sets of ``n_eval`` and ``n_ref`` images in the run's classifier's
    features (the same cached classifier as the evaluations)."""
    from diffprune.evaluation.classifier import classifier_outputs, load_or_train_classifier
    from diffprune.runtime import resolve_device

    ec = pipe.cfg.evaluate
    pool = pipe.classifier_data if pipe.classifier_data is not None else pipe.dataset
    device = resolve_device(ec.device)
    trained = load_or_train_classifier(pool, ec.classifier, seed=ec.seed, device=device,
                                       cache_dir=pipe.root / "eval", progress=pipe.progress)
    features, _ = classifier_outputs(trained.model, pool.images, device=device)
    return frechet_floor(features, n_eval, n_ref, draws=draws, seed=ec.seed)


def noise_at_final_model(pipe: Any, arm: Any) -> dict[str, Any]:
    """The during-training metrics of ``arm``'s final EMA model over sample seeds ``NOISE_SEEDS``."""
    from diffprune.diffusion.loading import load_model

    model, scheduler = load_model(pipe.root / "train" / arm.label() / "model")
    data, _ = pipe.training_set(arm)
    base = pipe.training_evaluator(data)

    def with_seed(seed: int) -> dict[str, Any]:
        base.config = pipe.cfg.train.eval.model_copy(update={"seed": seed})
        return base(model, scheduler, -1)

    return evaluation_noise(with_seed, list(pipe.cfg.train.eval.metrics), NOISE_SEEDS)


def write_quality(pipe: Any) -> Path:
    """Compute and write ``eval/quality.json`` (see the module doc); returns its path."""
    te = pipe.cfg.train.eval
    full = [a for a in pipe.cfg.arms if a.method == FULL]
    if not full:
        raise ValueError("the metric noise is measured at the full arm's final model: the run has no full arm")
    arm = full[0]
    pipe.train(arm)
    noise = noise_at_final_model(pipe, arm)
    stop = pipe.cfg.train.stop_at_target
    tolerances = sorted({*DEFAULT_TOLERANCES, *([stop.tolerance] if stop else [])})
    out: dict[str, Any] = {"arm": arm.label(), "samples": te.samples, "metrics": {}}
    for metric in te.metrics:
        curve = evaluation_curve(pipe.root / "train" / arm.label() / "metrics.jsonl", metric)
        floor = classifier_floor(pipe, te.samples, len(pipe.dataset)) if metric == "classifier_fd" else None
        final = curve[-1][1] if curve else None
        out["metrics"][metric] = {
            "final": final, "floor": floor, "noise": noise.get(metric),
            "tolerances": [tolerance_check(floor, noise.get(metric), final, t) for t in tolerances] if final else [],
        }
    path = pipe.root / "eval" / "quality.json"
    atomic_write_json(path, out)
    return path


def main(argv: list[str] | None = None) -> None:
    from diffprune.pipeline import Pipeline, load_run_config

    parser = argparse.ArgumentParser(prog="python -m diffprune.pipeline.quality", description=__doc__.split("\n")[0])
    parser.add_argument("config")
    parser.add_argument("--name")
    parser.add_argument("--set", action="append", default=[], dest="overrides")
    parser.add_argument("--seed", type=int, default=0, help="the full arm of this seed (a sweep's full-s<seed>)")
    args = parser.parse_args(argv)
    base = load_run_config(args.config, args.overrides, name=args.name)
    data = base.model_dump(mode="json")
    data["arms"] = [{"method": FULL, "seed": args.seed}]
    pipe = Pipeline(validate_config(RunConfig, data), progress=False)
    print(write_quality(pipe))


if __name__ == "__main__":
    main()
