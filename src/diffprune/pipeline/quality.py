"""``eval/quality.json`` of a run: for every metric evaluated during training, its floor and its evaluation noise
next to the tolerances (``diffprune.evaluation.quality``), so the report can say whether a 5% target is
resolvable by that metric at that sample count.

- floor: the Frechet distance in the small classifier's features (``classifier_fd``) between disjoint real sets
  of ``train.eval.samples`` and of the reference's size, drawn from the images the classifier can embed (the whole
  split with ``evaluate.classifier.data: split``), over 3 splits.
- noise: the full arm (first seed) evaluated at its final EMA weights with sample seeds 0, 1, 2.
- ``final``: the same for the evaluate stage's metrics (Inception FID, KID, classifier FD) at
  ``sample.num_samples``: the floor by ``evaluate`` itself on disjoint real sets, the noise over 3 sample seeds.

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


def final_floor(pipe: Any, n_eval: int, n_ref: int, seed: int) -> dict[str, Any]:
    """The evaluate stage's metrics (Inception FID, KID, classifier FD) of ``n_eval`` real images in place of the
    samples against ``n_ref`` other real images, by the evaluate stage's own code (``evaluate``)."""
    from diffprune.evaluation import evaluate
    from diffprune.evaluation.quality import disjoint_subsets

    pool = pipe.classifier_data if pipe.classifier_data is not None else pipe.dataset
    fake, real = disjoint_subsets(len(pool), (n_eval, n_ref), seed)
    ec = pipe.cfg.evaluate.model_copy(update={"classwise": False, "cross_check": False, "fid_floor": False,
                                              "num_real": None})
    # the run's eval cache: the classifier is reused; each real subset's statistics are cached under its fingerprint
    return evaluate(pool.images[fake], pool.subset(real), ec, None, cache_dir=pipe.root / "eval",
                    progress=pipe.progress, classifier_data=pipe.classifier_data)


def final_quality(pipe: Any, arm: Any, draws: int) -> dict[str, Any]:
    """Floor and noise of the evaluate stage's metrics at ``sample.num_samples`` (the final evaluation)."""
    from diffprune.diffusion.loading import load_model
    from diffprune.diffusion.sampling import sample_images
    from diffprune.evaluation import evaluate
    from diffprune.evaluation.quality import spread

    metrics = [m for m in pipe.cfg.evaluate.metrics if m in ("fid", "kid", "classifier_fd")]
    n_eval, n_ref = pipe.cfg.sample.num_samples, min(pipe.cfg.evaluate.num_real or len(pipe.dataset), len(pipe.dataset))
    try:
        floors = [final_floor(pipe, n_eval, n_ref, pipe.cfg.evaluate.seed + d) for d in range(draws)]
        floor = {m: {**spread([f[m] for f in floors]), "n_eval": n_eval, "n_ref": n_ref} for m in metrics}
    except Exception as e:  # noqa: BLE001 - e.g. too few real images for two disjoint sets: say so, keep the noise
        floor = {m: {"value": None, "reason": f"{type(e).__name__}: {e}"} for m in metrics}
    model, scheduler = load_model(pipe.root / "train" / arm.label() / "model")
    values = []
    for seed in NOISE_SEEDS:
        sc = pipe.sample_config().model_copy(update={"seed": seed})
        images = sample_images(model, scheduler, sc, progress=pipe.progress)
        values.append(evaluate(images, pipe.dataset, pipe.evaluate_config().model_copy(update={"classwise": False}),
                               None, cache_dir=pipe.root / "eval", progress=pipe.progress,
                               classifier_data=pipe.classifier_data))
    return {"samples": n_eval, "metrics": {m: {
        "floor": floor[m] if "mean" in floor[m] else None, "floor_error": floor[m].get("reason"),
        "noise": {**spread([v[m] for v in values]), "seeds": list(NOISE_SEEDS)}} for m in metrics}}


def write_quality(pipe: Any, final: bool = True, draws: int = 3) -> Path:
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
    if final:  # the evaluate stage's metrics at its sample count: Inception embeddings, minutes on a CPU
        out["final"] = final_quality(pipe, arm, draws)
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
    parser.add_argument("--no-final", action="store_true",
                        help="skip the evaluate stage's metrics (Inception FID/KID: minutes of CPU per draw and seed)")
    args = parser.parse_args(argv)
    base = load_run_config(args.config, args.overrides, name=args.name)
    data = base.model_dump(mode="json")
    data["arms"] = [{"method": FULL, "seed": args.seed}]
    pipe = Pipeline(validate_config(RunConfig, data), progress=False)
    print(write_quality(pipe, final=not args.no_final))


if __name__ == "__main__":
    main()
