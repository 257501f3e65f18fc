"""Stage orchestration: each stage reads its inputs' fingerprints, is skipped when its manifest matches
(a cache hit), and otherwise runs and writes its outputs, its resolved config and its manifest.

The methods call each other on demand, so ``Pipeline(cfg).evaluate(arm)`` runs (or reuses) every stage
that arm needs: embed -> select -> [reference -> reweight] -> train -> sample -> evaluate.

Latent runs (a ``latent`` section) embed and select on pixels as usual, then the reference, DRO and training
stages read VAE latents from one cache in ``latents/`` that encodes each image at most once; sampling decodes.
"""
from __future__ import annotations

import shutil
from functools import cached_property
from pathlib import Path
from typing import Any, Iterable

import numpy as np
from rich.console import Console

from diffprune.data import DatasetError, ImageDataset
from diffprune.data.sources import NATIVE_RESOLUTION
from diffprune.diffusion import TrainConfig, generate, total_steps
from diffprune.diffusion import train as train_model
from diffprune.diffusion.batches import latent_meta
from diffprune.diffusion.checkpoint import checkpoint_step
from diffprune.diffusion.config import PUSH_FIELDS
from diffprune.diffusion.sampling import save_grid
from diffprune.encoders import embed_dataset
from diffprune.encoders.embed import build_encoder
from diffprune.evaluation import evaluate as evaluate_samples
from diffprune.evaluation.during_training import TrainingEvaluator
from diffprune.export.pipeline import check_push, hub_repo_id, pipeline_kind, push_trained, write_pipeline
from diffprune.export.table import coreset_rows, write_coreset
from diffprune.io import env_flag, hash_arrays, hash_file, read_json, remove_stale_temps
from diffprune.pipeline.budget import train_until_target
from diffprune.pipeline.checks import check_run
from diffprune.pipeline.config import FULL, ArmConfig, RunConfig
from diffprune.pipeline.flops import dro_flops, encoder_flops, sampling_flops, training_flops
from diffprune.pipeline.layout import RunLayout
from diffprune.pipeline.layout import selection_name as layout_selection_name
from diffprune.pipeline.manifest import StageDir
from diffprune.pipeline.dry_run import plan_stages
from diffprune.pipeline.resolve import StageConfigs
from diffprune.pipeline.run_files import measure_flops, model_fingerprint, write_run_files
from diffprune.pipeline.stages import Pending, StageRunner, continuable, distributed
from diffprune.pipeline.training_data import TrainingData
from diffprune.provenance import provenance
from diffprune.report import build_report
from diffprune.reweighting import ReweightError, load_class_weights, prepare_reference, run_dro
from diffprune.reweighting.proxy import PROXY_DIR
from diffprune.selection import Selection, select_from_config
from diffprune.selection.figures import selection_figures


class Pipeline(StageConfigs):
    """Runs the stages of one run directory (``runs/<name>/``) for a validated ``RunConfig``.

    Args:
        cfg: the run config.
        force: stage names to recompute even when cached (``True`` = all).
        progress: show progress bars.
        console: where status lines go.
        wait: when another process is computing a stage of this run directory, wait for it (then reuse its
            result) instead of stopping with a one-line error (default: the ``DIFFPRUNE_WAIT`` variable).
        dry_run: compute nothing: each stage prints its resolved config and whether it would be ``cached``,
            ``run``, ``extend`` (continue a finished checkpoint) or ``resume`` (``plan`` collects them).
        dataset: the images to use instead of loading ``cfg.data`` (``diffprune.prune_and_reweight``).

    Every stage method takes the stage's resolved config (``<stage>_config``) and returns
    ``(result, fingerprint)``; the fingerprint identifies the output for the stages downstream.
    """

    def __init__(
        self,
        cfg: RunConfig,
        force: bool | Iterable[str] = (),
        progress: bool = True,
        console: Console | None = None,
        wait: bool | None = None,
        dry_run: bool = False,
        dataset: ImageDataset | None = None,
    ) -> None:
        self.cfg = cfg
        if dataset is not None:
            self.__dict__["dataset"] = dataset  # fills the cached property
        self.wait = env_flag("DIFFPRUNE_WAIT") if wait is None else wait
        self.root = cfg.run_dir
        self.layout = RunLayout(self.root)
        self.progress = progress
        self.console = console or Console(stderr=True)
        self.dry_run = dry_run
        self.training_data = TrainingData(self)
        self.command: list[str] | None = None  # the CLI arguments that made this run (for command.json)
        # devices, processes, precisions, threads, launcher: printed by the CLI, kept in command.json and manifests
        self.provenance = provenance(cfg.train.mixed_precision, cfg.sample.mixed_precision)
        self.stages = StageRunner(self.root, force, self.console, self.wait, dry_run,
                                  manifest_extra={"provenance": self.provenance})

    @property
    def planned(self) -> list[dict[str, Any]]:
        """``dry_run``: every stage's status and resolved config, in the order they were planned."""
        return self.stages.planned

    @property
    def force(self) -> set[str]:
        return self.stages.force

    def write_run_files(self) -> None:
        """The resolved run config, the arms and the shared stages (read by the report); main process only."""
        if distributed()[1]:
            write_run_files(self.cfg, self.layout, self.selection_name, self.command, self.provenance)

    def arm(self, label: str) -> ArmConfig:
        for a in self.cfg.arms:
            if a.label() == label:
                return a
        raise KeyError(f"no arm '{label}' in the config; arms: {', '.join(a.label() for a in self.cfg.arms)}")

    # ------------------------------------------------------------------------------------------ stages
    @cached_property
    def dataset(self) -> ImageDataset:
        ds = self.cfg.data.load(download=not self.dry_run)  # a dry run neither downloads nor needs the data
        if ds.skipped:
            self.console.print(f"[yellow]skipped {len(ds.skipped)} unreadable files[/]: {', '.join(ds.skipped[:5])}")
        return ds

    def dry_data_missing(self) -> str | None:
        """``dry_run``: why the data cannot be read without downloading it (None: it can, or not a dry run)."""
        if not self.dry_run:
            return None
        try:
            self.dataset
        except DatasetError as e:
            return str(e)
        return None

    # ------------------------------------------------------------------------------------------ stages
    def features_dir(self) -> Path:
        """``features/<encoder>[-<options>]`` (``layout.features_name``)."""
        return self.layout.features(self.cfg.embed)

    def embed(self) -> tuple[np.ndarray, str]:
        ec = self.embed_config()
        out = self.features_dir()
        missing = self.dry_data_missing()
        if missing is not None:  # nothing is known downstream of data that is not there
            rel = str(out.relative_to(self.root))
            self.stages.print_plan({"stage": "embed", "path": rel, "status": "run",
                                    "config": ec.model_dump(mode="json"), "data": f"unknown until loaded: {missing}"})
            self.console.print(f"          data: unknown until loaded ({missing})", markup=False, highlight=False)
            raise Pending("embed", rel, "run")
        stage = StageDir(out, "embed", ec.model_dump(mode="json"), {"dataset": self.dataset.fingerprint},
                         mutable=type(ec).RESUME_MUTABLE)

        def compute(resume: bool):
            feats = embed_dataset(self.dataset, ec, out, progress=self.progress)
            flops = measure_flops(self.console, lambda: encoder_flops(build_encoder(ec, self.dataset, "cpu"),
                                                                      self.dataset, len(self.dataset)), "the encoder")
            return feats, hash_file(out / "features.npy"), {"images_processed": len(self.dataset), **flops}

        return self.stages.run(stage, compute, lambda: np.load(out / "features.npy", mmap_mode="r"), ("features.npy",))

    def selection_name(self, arm: ArmConfig) -> str:
        return layout_selection_name(self.select_config(arm), arm.seed, arm.options)

    def select(self, arm: ArmConfig):
        """The arm's ``Selection`` and its fingerprint (``selection/<name>/``)."""
        sc = self.select_config(arm)
        features, features_fp = self.embed()
        out = self.layout.selection(self.selection_name(arm))
        stage = StageDir(out, "select", sc.model_dump(mode="json"), {"features": features_fp},
                         mutable=type(sc).RESUME_MUTABLE)

        def compute(resume: bool):
            sel = select_from_config(features, self.dataset.labels, sc, class_names=self.dataset.class_names or None,
                                     progress=self.progress)
            sel.save(out)
            few = [f"{g} ({n})" for g, n in sel.counts.items() if n < 2]
            if few:
                self.console.print(f"[yellow]warning:[/] ratio {sc.ratio:g} keeps fewer than 2 images of "
                                   f"{len(few)} group(s): {', '.join(few[:8])}; their weights and FID are noise")
            write_coreset(out, coreset_rows(self.dataset, sel))  # the file list, unweighted (export adds weights)
            selection_figures(out, self.dataset.images, sel)  # examples.png, scores.png for the report
            return sel, hash_arrays(sel.indices, sel.groups), {"kept": int(len(sel.indices)), "images_processed": 0}

        return self.stages.run(stage, compute, lambda: Selection.load(out), ("selection.npz",))

    def training_set(self, arm: ArmConfig) -> tuple[ImageDataset, str]:
        """What an arm trains on and its fingerprint (``TrainingData.of_arm``)."""
        return self.training_data.of_arm(arm)

    def full_training_set(self) -> tuple[ImageDataset, str]:
        """Every training image (or its latent) and the fingerprint."""
        return self.training_data.full()

    def reference(self, arm: ArmConfig, null: bool = False) -> tuple[Path, str]:
        """The frozen reference DM of the DRO stage (given as a path / hub id, or trained once per run)
        and its fingerprint; ``null``: the null control's second reference (``reference-null/``: the same
        recipe with ``reweight.null_seed``, or ``reweight.null_reference``)."""
        rc = self.cfg.reweight
        if self.cfg.reference_data == "coreset":
            data, data_fp = self.training_set(arm)
            out = self.layout.reference(null, self.selection_name(arm))
        else:
            data, data_fp = self.full_training_set()
            out = self.layout.reference(null)
        given = rc.null_reference if null else rc.reference
        ref_config = self.reference_config(data, null=null)
        stage = StageDir(out, "reference", ref_config, {"data": data_fp},
                         mutable=frozenset() if given else TrainConfig.RESUME_MUTABLE,
                         resumable=continuable(out, int(ref_config.get("steps") or 0)))

        def compute(resume: bool):
            if not resume:  # the trainer resumes any checkpoint it finds; a changed config starts afresh
                shutil.rmtree(out / "state", ignore_errors=True)
            path = prepare_reference(rc, data, out, progress=self.progress, null=null)
            images = 0 if given else int(rc.reference_budget) * int(rc.batch_size)
            flops = measure_flops(self.console, lambda: training_flops(path, data, images), "the reference")
            return Path(path), model_fingerprint(path), {"images_processed": images, "path": str(path), **flops}

        return self.stages.run(stage, compute, lambda: Path(stage.manifest()["path"]), ("model/*.safetensors",))

    def reweight(self, arm: ArmConfig) -> tuple[dict[str, float] | None, str | None]:
        """The arm's DRO class weights and their fingerprint; ``(None, None)`` for an arm without DRO."""
        if not arm.reweight:
            return None, None
        coreset, coreset_fp = self.training_set(arm)
        if coreset.num_classes < 2:
            raise ReweightError(
                f"arm {arm.label()}: DRO needs at least 2 groups but the training set has {coreset.num_classes} "
                "(unlabelled data fall into one group); group by k-means clusters with --clusters N "
                "(select.clusters)"
            )
        ref, ref_fp = self.reference(arm)
        out = self.layout.reweight(self.selection_name(arm))
        inputs = {"coreset": coreset_fp, "reference": ref_fp}
        rc = self.reweight_config(arm)
        null_ref = None
        if rc.null_control:
            null_ref, inputs["null_reference"] = self.reference(arm, null=True)
            if not rc.null_reference:  # the run's one null reference, whose seed is the run's, not the arm's
                rc = rc.model_copy(update={"null_seed": self.cfg.reweight.null_reference_seed})
        # the stated reference cost is bookkeeping for the report: changing it does not rerun DRO
        step = checkpoint_step(out / PROXY_DIR)  # the proxy trains in the trainer's folder layout
        stage = StageDir(out, "reweight", rc.model_dump(mode="json", exclude={"reference_cost"}), inputs,
                         mutable=type(rc).RESUME_MUTABLE, resumable=continuable(step, rc.steps))

        def compute(resume: bool):
            ref_data = None  # iterated DoReMi retrains references on the data of the first one
            if rc.rounds > 1:
                ref_data = coreset if self.cfg.reference_data == "coreset" else self.full_training_set()[0]
            summary = run_dro(rc, coreset, ref, out, progress=self.progress, resume=resume,
                              null_reference_dir=null_ref, reference_dataset=ref_data)
            images = int(rc.steps) * int(rc.batch_size)
            weights = load_class_weights(out / "class_weights.json")
            flops = measure_flops(self.console, lambda: dro_flops(rc, coreset, ref, images), "DRO")
            # every DRO image goes through two networks (the reference's forward, the proxy's forward+backward),
            # as the FLOPs count it; "images" counts image passes through a network
            return weights, hash_file(out / "class_weights.json"), {"images_processed": 2 * images, "summary": summary,
                                                                    "attempt": {"resumed_from": step if resume else None},
                                                                    **flops}

        return self.stages.run(stage, compute, lambda: load_class_weights(out / "class_weights.json"),
                           ("class_weights.json", "trajectory.npz"))

    def train(self, arm: ArmConfig) -> tuple[Path, str]:
        """The arm's trained model folder (``train/<arm>/model``) and its fingerprint."""
        tc = self.train_config(arm)
        if tc.push_to_hub:
            check_push()  # no token: stop before selecting and training, not after
        data, data_fp = self.training_set(arm)
        weights, weights_fp = self.reweight(arm)
        out = self.layout.train(arm.label())
        inputs = {"data": data_fp}
        if weights is not None:
            inputs["class_weights"] = weights_fp
        target = self.stop_target(arm)
        if target is not None:
            inputs["stop_target"] = f"{tc.stop_at_target.metric} <= {target!r}"
        # where the weights are pushed is not part of the result: changing it neither retrains nor extends
        stage = StageDir(out, "train", tc.model_dump(mode="json", exclude=set(PUSH_FIELDS)), inputs,
                         mutable=type(tc).RESUME_MUTABLE, resumable=continuable(out, total_steps(tc, len(data))))

        def compute(resume: bool):
            evaluator = self.training_evaluator(data) if tc.eval_every else None

            def train_piece(config, resume_piece: bool) -> dict[str, Any]:
                return train_model(config, data, out, class_weights=weights, resume=resume_piece,
                                   progress=self.progress, evaluator=evaluator)

            if target is None:
                summary = train_piece(tc, resume)
            else:  # in pieces between evaluations, stopping at the target (pipeline/budget.py)
                budget = tc.model_copy(update={"steps": total_steps(tc, len(data)), "epochs": None})
                summary = train_until_target(budget, train_piece, out / "metrics.jsonl", target, tc.stop_at_target,
                                             (checkpoint_step(out) or 0) if resume else 0, resume)
            if distributed()[1] and pipeline_kind(out / "model"):  # DDPMPipeline.from_pretrained(train/<arm>/pipeline)
                write_pipeline(out / "model", out / "pipeline")
            images = int(summary.get("images_seen", 0))
            return out / "model", model_fingerprint(out / "model"), {
                "images_processed": images, "summary": summary,
                # this attempt's evaluation time; the manifest's eval_seconds totals it (not a training cost)
                "attempt": {"resumed_from": summary.get("resumed_from"), "reached": summary.get("steps"),
                            "eval_seconds": float(summary.get("eval_seconds", 0.0))},
                **measure_flops(self.console, lambda: training_flops(out / "model", data, images),
                                f"training {arm.label()}"),
            }

        model = self.stages.run(stage, compute, lambda: out / "model", ("model/*.safetensors", "metrics.jsonl"))
        if tc.push_to_hub and distributed()[1]:  # once per trained weights (train/<arm>/pushed.json)
            url = push_trained(out, hub_repo_id(tc.hub_model_id, arm.label()), private=tc.hub_private)
            if url:
                self.console.print(f"pushed {out / 'pipeline'} to {url}")
        return model

    def training_evaluator(self, data: ImageDataset):
        """What ``train.eval_every`` runs: the EMA model sampled with ``train.eval`` and scored with the run's
        ``evaluate`` protocol against the same real images and caches as the evaluate stage."""
        return TrainingEvaluator(self.cfg.train.eval, self.cfg.evaluate, self.dataset, self.layout.eval(),
                                 guidance_scale=self.cfg.sample.guidance_scale, latent=latent_meta(data),
                                 classifier_data=self.classifier_data)

    @cached_property
    def classifier_data(self) -> ImageDataset | None:
        """What the small classifier trains on when ``evaluate.classifier.data: split``: the run's dataset
        without ``data.limit`` (its whole split); None: the run's real images."""
        if self.cfg.evaluate.classifier.data != "split":
            return None
        return self.cfg.data.model_copy(update={"limit": None}).load() if self.cfg.data.limit else self.dataset

    def sample(self, arm: ArmConfig) -> tuple[np.ndarray, str]:
        """The arm's samples (uint8 N x H x W x C) and their fingerprint."""
        model_dir, model_fp = self.train(arm)
        out = self.layout.samples(arm.label())
        sc = self.sample_config()
        stage = StageDir(out, "sample", sc.model_dump(mode="json"), {"model": model_fp},
                         mutable=type(sc).RESUME_MUTABLE)

        def load() -> np.ndarray:
            with np.load(out / "samples.npz") as z:
                return z["arr_0"]

        def compute(resume: bool):
            generate(model_dir, out, sc, progress=self.progress)  # resumable chunks, sharded across processes
            images = load()
            flops = measure_flops(self.console, lambda: sampling_flops(
                model_dir, self.training_set(arm)[0], len(images), sc.num_steps, sc.guidance_scale),
                f"sampling {arm.label()}")
            return images, hash_arrays(images), {"images_processed": int(len(images)), **flops}

        return self.stages.run(stage, compute, load, ("samples.npz",))

    def evaluate(self, arm: ArmConfig) -> tuple[dict[str, Any], str]:
        """The arm's metrics (``eval/<arm>/metrics.json``) and their fingerprint."""
        samples, samples_fp = self.sample(arm)
        out = self.layout.eval(arm.label())
        ec = self.evaluate_config()
        inputs = {"samples": samples_fp, "real": self.dataset.fingerprint}
        if self.classifier_data is not None:
            inputs["classifier_data"] = self.classifier_data.fingerprint
        stage = StageDir(out, "evaluate", ec.model_dump(mode="json"), inputs, mutable=type(ec).RESUME_MUTABLE)
        protocol = {
            "sampler": self.cfg.sample.sampler, "sampler_steps": self.cfg.sample.steps,
            "sample_seed": self.cfg.sample.seed, "reference_split": self.cfg.data.split,
            "dataset": self.cfg.data.spec, "resolution": self.dataset.resolution,
        }

        def compute(resume: bool):
            labels_path = self.layout.samples(arm.label()) / "samples.npz"
            with np.load(labels_path) as z:
                sample_labels = z["labels"] if "labels" in z.files else None
            metrics = evaluate_samples(
                samples, self.dataset, ec, out, cache_dir=self.layout.eval(), sample_labels=sample_labels,
                protocol=protocol, progress=self.progress, classifier_data=self.classifier_data,
            )
            return metrics, hash_file(out / "metrics.json"), {"images_processed": int(len(samples))}

        return self.stages.run(stage, compute, lambda: read_json(out / "metrics.json"), ("metrics.json",))

    def export(self, arm: ArmConfig, out_dir: Path | None = None) -> Path:
        """``coreset.csv`` / ``coreset.jsonl`` of a pruned arm with its class weights and ``train.weighting``
        (in ``export/<arm>/`` by default), plus a diffusers pipeline folder when the arm is trained."""
        if arm.method == FULL:
            raise ValueError("arm 'full' trains on all data; it has no coreset to export (pick a pruned arm)")
        out = out_dir or self.layout.export(arm.label())
        rows = coreset_rows(self.dataset, self.select(arm)[0], self.reweight(arm)[0], self.train_config(arm).weighting)
        write_coreset(out, rows)
        model = self.layout.train(arm.label()) / "model"
        if (model / "config.json").is_file():
            write_pipeline(model, out / "pipeline")
        return out

    def report(self) -> Path:
        self.write_run_files()
        if not distributed()[1]:
            return self.root / "report" / "report.md"
        if "dataset" in self.__dict__ and not (self.root / "real_grid.png").exists():  # loaded by the stages
            save_grid(self.root / "real_grid.png", self.dataset.images[:64])
        path = build_report(self.root)
        self.console.print(f"[green]report[/]  {path}")
        return path

    def check(self, arms: Iterable[ArmConfig] | None = None) -> None:
        """Every config and environment check (devices, tracker packages, image size vs model presets) of
        ``arms`` (default: all), before any stage computes: a failed start leaves finished stages cached."""
        size = self.cfg.data.resolution or NATIVE_RESOLUTION.get(self.cfg.data.spec) if self.dry_data_missing() \
            else self.dataset.resolution
        if size is None:
            self.console.print("[yellow]image size unknown until the data is loaded[/]: size checks skipped")
            return
        check_run(self.cfg, list(arms) if arms is not None else self.cfg.arms, size)

    def plan(self, arms: Iterable[str] | None = None, until: str = "evaluate") -> list[dict[str, Any]]:
        """``dry_run``: every stage up to ``until`` of every arm (or the named arms) with its resolved config and
        status, computing nothing (``dry_run.plan_stages``). Returns the entries also printed to the console."""
        return plan_stages(self, arms, until)

    def run_all(self, arms: Iterable[str] | None = None, report: bool = True) -> Path | None:
        """Every stage for every arm (or the named arms, in that order), then the report (unless ``report`` is
        False: None is returned); the checks (``check``) first."""
        chosen = [self.arm(a) for a in arms] if arms else list(self.cfg.arms)
        self.check(chosen)
        remove_stale_temps(self.root)  # what writers killed mid-write left (their pid is dead)
        self.write_run_files()
        for arm in chosen:
            self.console.rule(f"arm {arm.label()}")
            self.evaluate(arm)
        return self.report() if report else None
