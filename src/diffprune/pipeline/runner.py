"""Stage orchestration: each stage reads its inputs' fingerprints, is skipped when its manifest matches
(a cache hit), and otherwise runs and writes its outputs, its resolved config and its manifest.

The methods call each other on demand, so ``Pipeline(cfg).evaluate(arm)`` runs (or reuses) every stage
that arm needs: embed -> select -> [reference -> reweight] -> train -> sample -> evaluate.

Latent runs (a ``latent`` section) embed and select on pixels as usual, then the reference, DRO and training
stages read VAE latents from one cache in ``latents/`` that encodes each image at most once; sampling decodes.
"""
from __future__ import annotations

import os
import shutil
from functools import cached_property
from pathlib import Path
from typing import Any, Callable, Iterable, TypeVar

import numpy as np
from rich.console import Console

from diffprune.data import ImageDataset
from diffprune.io import atomic_write_json, atomic_write_yaml, hash_arrays, hash_file, read_json
from diffprune.pipeline.config import FULL, ArmConfig, RunConfig
from diffprune.pipeline.manifest import StageDir

T = TypeVar("T")
STAGES = ("embed", "select", "reference", "reweight", "train", "sample", "evaluate", "report")
DISTRIBUTED_STAGES = ("embed", "train", "sample", "evaluate")


def _distributed() -> tuple[int, bool]:
    """(world size, is main process) from the variables that ``accelerate launch`` / torchrun set."""
    return int(os.environ.get("WORLD_SIZE", "1")), int(os.environ.get("RANK", "0")) == 0


def model_fingerprint(path: str | Path) -> str:
    """Hash of a diffusers model folder's weights, or of the hub id when it is not a local folder."""
    weights = sorted(Path(path).glob("*.safetensors")) if Path(path).is_dir() else []
    if weights:
        return hash_file(weights[0])
    return hash_arrays(np.frombuffer(str(path).encode(), np.uint8))


class Pipeline:
    """Runs the stages of one run directory (``runs/<name>/``) for a validated ``RunConfig``.

    Args:
        cfg: the run config.
        force: stage names to recompute even when cached (``True`` = all).
        progress: show progress bars.
        console: where status lines go.
    """

    def __init__(
        self,
        cfg: RunConfig,
        force: bool | Iterable[str] = (),
        progress: bool = True,
        console: Console | None = None,
    ) -> None:
        self.cfg = cfg
        self.root = cfg.run_dir
        self.force = set(STAGES) if force is True else set(force or ())
        self.progress = progress
        self.console = console or Console(stderr=True)
        self._fingerprints: dict[str, str] = {}
        self._coresets: dict[str, tuple[ImageDataset, str]] = {}
        self.command: list[str] | None = None  # the CLI arguments that made this run (for command.json)

    # ----------------------------------------------------------------------------------------- helpers
    def _stage(
        self,
        stage: StageDir,
        compute: Callable[[bool], tuple[T, str, dict[str, Any]]],
        load: Callable[[], T],
    ) -> T:
        """Cache hit -> ``load()``; else ``compute(resume)`` -> (result, output fingerprint, manifest extras).

        ``resume`` is True only when an attempt with the same config and inputs was interrupted here (and the
        stage is not forced): a changed config starts afresh instead of resuming foreign checkpoints.

        Under ``accelerate launch`` every process runs the stages that shard their work across processes
        (train, sample, embed, evaluate) and only the main process writes the stage's config and manifest;
        the other stages must already be cached, so they never run twice at once.
        """
        rel = stage.path.relative_to(self.root) if stage.path.is_relative_to(self.root) else stage.path
        if stage.stage not in self.force and stage.is_complete():
            self.console.print(f"[dim]cached[/]  {stage.stage:<9} {rel}")
            self._fingerprints[str(stage.path)] = stage.manifest()["fingerprint"]
            return load()
        world, main = _distributed()
        if world > 1 and stage.stage not in DISTRIBUTED_STAGES:
            raise RuntimeError(
                f"stage '{stage.stage}' ({rel}) is not cached and does not run under several processes; "
                f"run it first without accelerate launch (e.g. `diffprune {stage.stage} ...`), then launch again"
            )
        resume = stage.stage not in self.force and stage.was_interrupted()
        if main:
            self.console.print(f"[bold cyan]{'resume' if resume else 'run':<7}[/] {stage.stage:<9} {rel}")
            stage.begin()
        result, fingerprint, extra = compute(resume)
        self._fingerprints[str(stage.path)] = fingerprint
        if main:
            manifest = stage.finish(fingerprint, world_size=world, **extra)
            self.console.print(f"[green]done[/]    {stage.stage:<9} {rel} ({manifest['seconds']:.1f} s)")
        return result

    def fingerprint(self, path: Path) -> str:
        return self._fingerprints[str(path)]

    def write_run_files(self) -> None:
        """The resolved run config, the arms and the shared stages (read by the report); main process only."""
        if not _distributed()[1]:
            return
        self.root.mkdir(parents=True, exist_ok=True)
        atomic_write_yaml(self.root / "config.yaml", self.cfg.model_dump(mode="json"))
        if self.command is not None:  # set by the command line; the report shows it
            atomic_write_json(self.root / "command.json", {"argv": ["diffprune", *self.command], "cwd": os.getcwd()})
        arms = []
        for arm in self.cfg.arms:
            label = arm.label()
            sel = None if arm.method == FULL else f"selection/{self.selection_name(arm)}"
            arms.append({
                "arm": label, "method": arm.method, "seed": self.cfg.arm_train_config(arm).seed,
                "ratio": 1.0 if arm.method == FULL else self.cfg.arm_select_config(arm).ratio,
                "reweight": f"reweight/{self.selection_name(arm)}" if arm.reweight else None,
                "selection": sel, "train": f"train/{label}", "samples": f"samples/{label}", "eval": f"eval/{label}",
            })
        atomic_write_json(self.root / "arms.json", arms)
        stages = {"embed": f"features/{self.cfg.embed.encoder}"}
        if self.cfg.latent is not None:
            stages["latents"] = "latents"
        if any(a.reweight for a in self.cfg.arms):
            stages["reference"] = "reference"
        atomic_write_json(self.root / "stages.json", stages)

    def arm(self, label: str) -> ArmConfig:
        for a in self.cfg.arms:
            if a.label() == label:
                return a
        raise KeyError(f"no arm '{label}' in the config; arms: {', '.join(a.label() for a in self.cfg.arms)}")

    # ------------------------------------------------------------------------------------------ stages
    @cached_property
    def dataset(self) -> ImageDataset:
        ds = self.cfg.data.load()
        if ds.skipped:
            self.console.print(f"[yellow]skipped {len(ds.skipped)} unreadable files[/]: {', '.join(ds.skipped[:5])}")
        return ds

    def embed(self) -> np.ndarray:
        from diffprune.encoders import embed_dataset

        out = self.root / "features" / self.cfg.embed.encoder
        stage = StageDir(out, "embed", self.cfg.embed.model_dump(mode="json"), {"dataset": self.dataset.fingerprint})

        def compute(resume: bool):
            feats = embed_dataset(self.dataset, self.cfg.embed, out, progress=self.progress)
            return feats, hash_file(out / "features.npy"), {"images_processed": len(self.dataset)}

        return self._stage(stage, compute, lambda: np.load(out / "features.npy", mmap_mode="r"))

    def selection_name(self, arm: ArmConfig) -> str:
        sc = self.cfg.arm_select_config(arm)
        name = f"{sc.method}-r{sc.ratio:g}"
        if sc.keep != "top":
            name += f"-{sc.keep}"
        if not sc.per_class:
            name += "-global"
        if arm.seed is not None:
            name += f"-s{arm.seed}"
        if arm.options:
            name += "-" + hash_arrays(np.frombuffer(repr(sorted(arm.options.items())).encode(), np.uint8))[:6]
        return name

    def select(self, arm: ArmConfig):
        from diffprune.export.table import coreset_rows, write_coreset
        from diffprune.selection import Selection, select
        from diffprune.selection.figures import selection_figures

        sc = self.cfg.arm_select_config(arm)
        features = self.embed()
        feat_path = self.root / "features" / self.cfg.embed.encoder
        out = self.root / "selection" / self.selection_name(arm)
        stage = StageDir(out, "select", sc.model_dump(mode="json"), {"features": self.fingerprint(feat_path)})

        def compute(resume: bool):
            sel = select(
                features, self.dataset.labels, sc.method, sc.ratio, per_class=sc.per_class, keep=sc.keep,
                seed=sc.seed, clusters=sc.clusters, class_names=self.dataset.class_names or None, **sc.options,
            )
            sel.save(out)
            write_coreset(out, coreset_rows(self.dataset, sel))  # the file list, unweighted (export adds weights)
            selection_figures(out, self.dataset.images, sel)  # examples.png, scores.png for the report
            return sel, hash_arrays(sel.indices, sel.groups), {"kept": int(len(sel.indices)), "images_processed": 0}

        return self._stage(stage, compute, lambda: Selection.load(out))

    def training_set(self, arm: ArmConfig) -> tuple[ImageDataset, str]:
        """What an arm trains on (the coreset, labelled by its groups; latents in a latent run) and its
        fingerprint.

        Built once per arm: the reference, DRO and training stages all ask for it."""
        if arm.method == FULL:
            return self.full_training_set()
        name = self.selection_name(arm)
        if name not in self._coresets:
            sel = self.select(arm)
            fp = self.fingerprint(self.root / "selection" / name)
            labels, names = sel.groups[sel.indices], list(sel.group_names)
            if self.cfg.latent is not None:
                self._coresets[name] = self._latent_set(sel.indices, labels, names, fp)
            else:
                ds = ImageDataset(self.dataset.images[sel.indices], labels, names, name=f"{self.dataset.name}[{name}]")
                self._coresets[name] = (ds, fp)
        return self._coresets[name]

    def full_training_set(self) -> tuple[ImageDataset, str]:
        """Every training image (or its latent) and the fingerprint."""
        if self.cfg.latent is None:
            return self.dataset, self.dataset.fingerprint
        if FULL not in self._coresets:
            ds = self.dataset
            labels = ds.labels if ds.labels is not None else np.zeros(len(ds), dtype=np.int64)
            self._coresets[FULL] = self._latent_set(np.arange(len(ds)), labels, list(ds.class_names) or ["all"],
                                                    ds.fingerprint)
        return self._coresets[FULL]

    # ------------------------------------------------------------------------------------------ latents
    @cached_property
    def latent_cache(self):
        """The run's VAE latent cache (``latents/<vae>-<dtype>``) and its VAE; runs with a ``latent`` section."""
        import torch

        from diffprune.diffusion.latents import LatentCache, load_vae

        lc = self.cfg.latent
        device = ("cuda" if torch.cuda.is_available() else "cpu") if lc.device == "auto" else lc.device
        vae = load_vae(lc.vae, device=device)
        slug = "".join(ch if ch.isalnum() or ch in "._-" else "_" for ch in lc.vae.strip("/"))[-60:]
        return LatentCache.open(self.root / "latents" / f"{slug}-{lc.dtype}", self.dataset, lc.vae, vae,
                                dtype=lc.dtype), vae

    def _latent_set(self, indices: np.ndarray, labels: np.ndarray, names: list[str], fp: str):
        """The latents of ``indices`` (encoded now if the cache lacks any) labelled ``labels``, and their
        fingerprint (the images' fingerprint + the VAE's identity, so gigabytes of latents are never hashed)."""
        cache, vae = self.latent_cache
        missing = len(cache.missing(indices))
        if missing:
            if _distributed()[0] > 1:
                raise RuntimeError(
                    f"{missing} of the {len(indices)} images this stage needs are not in the latent cache yet and "
                    f"encoding does not run under several processes; run it first without accelerate launch "
                    f"(e.g. `diffprune reweight ...` or `diffprune run ...`), then launch again"
                )
            self.console.print(f"[bold cyan]{'encode':<7}[/] latents   {missing} images with {self.cfg.latent.vae}")
            cache.ensure(self.dataset, indices, vae, batch_size=self.cfg.latent.batch_size, progress=self.progress)
        meta = cache.meta
        key = hash_arrays(np.frombuffer(f"{fp}|{meta['vae_weights_hash']}|{meta['dtype']}".encode(), np.uint8))
        ds = cache.dataset(indices, labels=labels, class_names=names, fingerprint=key)
        return ds, key

    def reference(self, arm: ArmConfig) -> tuple[Path, str]:
        """The frozen reference DM of the DRO stage (given as a path / hub id, or trained once per run)
        and its fingerprint."""
        from diffprune.reweighting import prepare_reference
        from diffprune.reweighting.reference import reference_train_config

        rc = self.cfg.reweight
        if self.cfg.reference_data == "coreset":
            data, data_fp = self.training_set(arm)
            out = self.root / "reference" / self.selection_name(arm)
        else:
            data, data_fp = self.full_training_set()
            out = self.root / "reference"
        # keyed by what determines the reference only, so changing DRO settings keeps it cached
        ref_config = {"reference": rc.reference} if rc.reference else reference_train_config(rc, data).model_dump(mode="json")
        stage = StageDir(out, "reference", ref_config, {"data": data_fp})

        def compute(resume: bool):
            if not resume:  # the trainer resumes any checkpoint it finds; a changed config starts afresh
                shutil.rmtree(out / "state", ignore_errors=True)
            path = prepare_reference(rc, data, out, progress=self.progress)
            images = 0 if rc.reference else int(rc.reference_steps) * int(rc.batch_size)
            return Path(path), model_fingerprint(path), {"images_processed": images, "path": str(path)}

        path = self._stage(stage, compute, lambda: Path(stage.manifest()["path"]))
        return path, self.fingerprint(out)

    def reweight(self, arm: ArmConfig) -> dict[str, float] | None:
        from diffprune.reweighting import load_class_weights, run_dro

        if not arm.reweight:
            return None
        coreset, coreset_fp = self.training_set(arm)
        ref, ref_fp = self.reference(arm)
        out = self.root / "reweight" / self.selection_name(arm)
        inputs = {"coreset": coreset_fp, "reference": ref_fp}
        rc = self.cfg.arm_reweight_config(arm)
        stage = StageDir(out, "reweight", rc.model_dump(mode="json"), inputs)

        def compute(resume: bool):
            summary = run_dro(rc, coreset, ref, out, progress=self.progress, resume=resume)
            images = int(rc.steps) * int(rc.batch_size)
            weights = load_class_weights(out / "class_weights.json")
            return weights, hash_file(out / "class_weights.json"), {"images_processed": images, "summary": summary}

        return self._stage(stage, compute, lambda: load_class_weights(out / "class_weights.json"))

    def train(self, arm: ArmConfig) -> Path:
        from diffprune.diffusion import train
        from diffprune.export.pipeline import pipeline_kind, write_pipeline

        data, data_fp = self.training_set(arm)
        weights = self.reweight(arm)
        out = self.root / "train" / arm.label()
        inputs = {"data": data_fp}
        if weights is not None:
            inputs["class_weights"] = self.fingerprint(self.root / "reweight" / self.selection_name(arm))
        tc = self.cfg.arm_train_config(arm)
        stage = StageDir(out, "train", tc.model_dump(mode="json"), inputs)

        def compute(resume: bool):
            summary = train(tc, data, out, class_weights=weights, resume=resume, progress=self.progress)
            if _distributed()[1] and pipeline_kind(out / "model"):  # DDPMPipeline.from_pretrained(train/<arm>/pipeline)
                write_pipeline(out / "model", out / "pipeline")
            return out / "model", model_fingerprint(out / "model"), {
                "images_processed": int(summary.get("images_seen", 0)), "summary": summary,
            }

        return self._stage(stage, compute, lambda: out / "model")

    def sample(self, arm: ArmConfig) -> np.ndarray:
        from diffprune.diffusion import generate

        model_dir = self.train(arm)
        out = self.root / "samples" / arm.label()
        sc = self.cfg.sample
        stage = StageDir(out, "sample", sc.model_dump(mode="json"), {"model": self.fingerprint(model_dir.parent)})

        def load() -> np.ndarray:
            with np.load(out / "samples.npz") as z:
                return z["arr_0"]

        def compute(resume: bool):
            generate(model_dir, out, sc, progress=self.progress)  # resumable chunks, sharded across processes
            images = load()
            return images, hash_arrays(images), {"images_processed": int(len(images))}

        return self._stage(stage, compute, load)

    def evaluate(self, arm: ArmConfig) -> dict[str, Any]:
        from diffprune.evaluation import evaluate

        samples = self.sample(arm)
        out = self.root / "eval" / arm.label()
        ec = self.cfg.evaluate
        inputs = {"samples": self.fingerprint(self.root / "samples" / arm.label()), "real": self.dataset.fingerprint}
        stage = StageDir(out, "evaluate", ec.model_dump(mode="json"), inputs)
        protocol = {
            "sampler": self.cfg.sample.sampler, "sampler_steps": self.cfg.sample.steps,
            "sample_seed": self.cfg.sample.seed, "reference_split": self.cfg.data.split,
            "dataset": self.cfg.data.spec, "resolution": self.dataset.resolution,
        }

        def compute(resume: bool):
            labels_path = self.root / "samples" / arm.label() / "samples.npz"
            with np.load(labels_path) as z:
                sample_labels = z["labels"] if "labels" in z.files else None
            metrics = evaluate(
                samples, self.dataset, ec, out, cache_dir=self.root / "eval", sample_labels=sample_labels,
                protocol=protocol, progress=self.progress,
            )
            return metrics, hash_file(out / "metrics.json"), {"images_processed": int(len(samples))}

        return self._stage(stage, compute, lambda: read_json(out / "metrics.json"))

    def export(self, arm: ArmConfig, out_dir: Path | None = None) -> Path:
        """``coreset.csv`` / ``coreset.jsonl`` of a pruned arm with its class weights and ``train.weighting``
        (in ``export/<arm>/`` by default), plus a diffusers pipeline folder when the arm is trained."""
        from diffprune.export.pipeline import write_pipeline
        from diffprune.export.table import coreset_rows, write_coreset

        if arm.method == FULL:
            raise ValueError("arm 'full' trains on all data; it has no coreset to export (pick a pruned arm)")
        out = out_dir or self.root / "export" / arm.label()
        rows = coreset_rows(self.dataset, self.select(arm), self.reweight(arm), self.cfg.arm_train_config(arm).weighting)
        write_coreset(out, rows)
        model = self.root / "train" / arm.label() / "model"
        if (model / "config.json").is_file():
            write_pipeline(model, out / "pipeline")
        return out

    def report(self) -> Path:
        from diffprune.report import build_report

        self.write_run_files()
        if not _distributed()[1]:
            return self.root / "report" / "report.md"
        if "dataset" in self.__dict__ and not (self.root / "real_grid.png").exists():  # loaded by the stages
            from diffprune.diffusion.sampling import save_grid

            save_grid(self.root / "real_grid.png", self.dataset.images[:64])
        path = build_report(self.root)
        self.console.print(f"[green]report[/]  {path}")
        return path

    def run_all(self, arms: Iterable[str] | None = None) -> Path:
        """Every stage for every arm (or the named arms), then the report."""
        self.write_run_files()
        chosen = [self.arm(a) for a in arms] if arms else list(self.cfg.arms)
        for arm in chosen:
            self.console.rule(f"arm {arm.label()}")
            self.evaluate(arm)
        return self.report()
