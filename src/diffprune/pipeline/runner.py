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

from diffprune.data import DatasetError, ImageDataset
from diffprune.data.sources import NATIVE_RESOLUTION
from diffprune.io import (
    atomic_write_json, atomic_write_yaml, env_flag, folder_lock, hash_arrays, hash_file, read_json,
    remove_stale_temps,
)
from diffprune.pipeline.config import FULL, ArmConfig, RunConfig
from diffprune.pipeline.manifest import StageDir
from diffprune.provenance import full_command, provenance
from diffprune.runtime import launch_precision, launch_world, resolve_device

T = TypeVar("T")
STAGES = ("embed", "select", "reference", "reweight", "train", "sample", "evaluate", "report")
DISTRIBUTED_STAGES = ("embed", "train", "sample", "evaluate")


class Pending(Exception):
    """``dry_run``: this stage would compute (``status``: run, extend or resume), so nothing after it is known."""

    def __init__(self, stage: str, path: str, status: str) -> None:
        super().__init__(f"{stage} ({path}) would {status}")
        self.stage, self.path, self.status = stage, path, status


def _distributed() -> tuple[int, bool]:
    """(world size, is main process) from the variables that ``accelerate launch`` / torchrun set."""
    rank, world = launch_world()
    return world, rank == 0


def _continuable(checkpoint: int | Path | None, budget: int) -> bool:
    """Whether a trainer checkpoint (its step, or the run folder whose ``state/`` holds it; None: no checkpoint)
    can be continued to ``budget`` steps: a checkpoint cannot be rewound, so one past a lowered budget means
    retraining from step 0."""
    from diffprune.diffusion.checkpoint import checkpoint_step

    step = checkpoint_step(checkpoint) if isinstance(checkpoint, Path) else checkpoint
    return step is None or step <= budget


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
        self.force = set(STAGES) if force is True else set(force or ())
        self.progress = progress
        self.console = console or Console(stderr=True)
        self.dry_run = dry_run
        self.planned: list[dict[str, Any]] = []  # dry_run: every stage's status and resolved config
        self._coresets: dict[str, tuple[ImageDataset, str]] = {}
        self.command: list[str] | None = None  # the CLI arguments that made this run (for command.json)
        # devices, processes, precisions, threads, launcher: printed by the CLI, kept in command.json and manifests
        self.provenance = provenance(cfg.train.mixed_precision, cfg.sample.mixed_precision)

    # ----------------------------------------------------------------------------------------- helpers
    def _stage(
        self,
        stage: StageDir,
        compute: Callable[[bool], tuple[T, str, dict[str, Any]]],
        load: Callable[[], T],
        outputs: tuple[str, ...] = (),
    ) -> tuple[T, str]:
        """The stage contract: cache hit -> ``(load(), recorded fingerprint)``; else ``compute(resume)`` ->
        (result, output fingerprint, manifest extras) and ``(result, fingerprint)`` is returned.

        ``resume`` is True when this stage continues a checkpoint of the same trajectory (not forced): an
        interrupted attempt, or a finished one whose config differs only in resume-mutable fields (an
        extension, e.g. more ``train.steps``). Any other config change starts afresh.
        ``outputs`` (files relative to the stage folder) are checksummed into the manifest and verified before
        every reuse; a damaged one is deleted and the stage recomputed. With ``dry_run`` nothing is computed:
        the stage's resolved config and status are printed and a stage that would run raises ``Pending``.

        The main process computes under the stage folder's lock (``diffprune.io.folder_lock``): a second run of
        the same run directory stops with a line naming the holder, or with ``wait`` queues and then reuses
        the holder's result. Under the lock, temporaries that a killed writer left are removed first.

        Under ``accelerate launch`` every process runs the stages that shard their work across processes
        (train, sample, embed, evaluate) and only the main process writes the stage's config and manifest;
        the other stages must already be cached, so they never run twice at once.
        """
        rel = stage.path.relative_to(self.root) if stage.path.is_relative_to(self.root) else stage.path
        forced = stage.stage in self.force
        if self.dry_run:
            return self._plan(stage, rel, load)
        if not forced and stage.is_complete():
            return self._cached(stage, rel, load)
        world, main = _distributed()
        if world > 1 and stage.stage not in DISTRIBUTED_STAGES:
            raise RuntimeError(
                f"stage '{stage.stage}' ({rel}) is not cached and does not run under several processes; "
                f"run it first without accelerate launch (e.g. `diffprune {stage.stage} ...`), then launch again"
            )
        if not main:
            return self._compute(stage, rel, compute, outputs, main=False)

        def waiting(holder: str) -> None:
            self.console.print(f"[yellow]wait[/]    {stage.stage:<9} {rel}: being computed by {holder}")

        with folder_lock(stage.path, wait=self.wait, what=f"stage {stage.stage} ({stage.path})", on_wait=waiting):
            if not forced and stage.is_complete():  # finished by the process we waited for
                return self._cached(stage, rel, load)
            remove_stale_temps(stage.path, all_writers=_distributed()[0] == 1)  # other ranks may be writing
            # only a finished result of this very request is damaged when it differs: a resumed or extended
            # attempt changes its outputs (metrics.jsonl) on purpose, and they must survive a failed attempt
            damaged = stage.damaged_outputs() if not forced and stage.records_this_request() else []
            for name in damaged:  # e.g. a NaN written into features.npy: never resumed from, recomputed
                self.console.print(f"[yellow]damaged[/] {stage.stage:<9} {rel / name}: checksum differs from the "
                                   f"manifest; recomputing")
                (stage.path / name).unlink(missing_ok=True)
            return self._compute(stage, rel, compute, outputs, main=True)

    def _cached(self, stage: StageDir, rel: Path, load: Callable[[], T]) -> tuple[T, str]:
        self.console.print(f"[dim]cached[/]  {stage.stage:<9} {rel}")
        return load(), stage.manifest()["fingerprint"]

    def _plan(self, stage: StageDir, rel: Path, load: Callable[[], T]) -> tuple[T, str]:
        """``dry_run``: print the stage's status and resolved config; reuse a cached result, else ``Pending``."""
        status = stage.status(force=stage.stage in self.force)
        self._print_plan({"stage": stage.stage, "path": str(rel), "status": status, "config": dict(stage.config)})
        if status == "cached":
            return load(), stage.manifest()["fingerprint"]
        raise Pending(stage.stage, str(rel), status)

    def _print_plan(self, entry: dict[str, Any]) -> None:
        import yaml

        self.planned.append(entry)
        self.console.print(f"[bold]{entry['status']:<7}[/] {entry['stage']:<9} {entry['path']}")
        self.console.print("\n".join(f"          {line}" for line in
                                     yaml.safe_dump(entry["config"], sort_keys=False).splitlines()),
                           highlight=False, markup=False)

    def _compute(self, stage: StageDir, rel: Path, compute: Callable[[bool], tuple[T, str, dict[str, Any]]],
                 outputs: tuple[str, ...], main: bool) -> tuple[T, str]:
        world = _distributed()[0]
        status = stage.status(force=stage.stage in self.force)
        resume = status in ("resume", "extend")
        if main:
            self.console.print(f"[bold cyan]{status:<7}[/] {stage.stage:<9} {rel}")
            stage.begin(continues=status == "extend")
        try:
            result, fingerprint, extra = compute(resume)
        except KeyboardInterrupt as e:  # the CLI's interrupt line names the stage
            e.stage = getattr(e, "stage", None) or f"{stage.stage} ({stage.path})"
            raise
        if main:
            files = tuple(o for pattern in outputs for o in sorted(str(p.relative_to(stage.path))
                                                                  for p in stage.path.glob(pattern)))
            attempt = extra.pop("attempt", None)
            manifest = stage.finish(fingerprint, outputs=files, world_size=world, attempt_extra=attempt,
                                    provenance=self.provenance, **extra)
            self.console.print(f"[green]done[/]    {stage.stage:<9} {rel} ({manifest['seconds']:.1f} s)")
        return result, fingerprint

    def _flops(self, measure: Callable[[], dict[str, Any]], what: str) -> dict[str, Any]:
        """A stage's FLOP fields (``pipeline.flops``); a model FlopCounterMode cannot run is recorded, not fatal."""
        try:
            return measure()
        except Exception as e:  # noqa: BLE001 - accounting must not lose a finished stage; the reason is kept
            self.console.print(f"[yellow]FLOPs of {what} not measured[/]: {type(e).__name__}: {e}")
            return {"flops": None, "flops_error": f"{type(e).__name__}: {e}"}

    def write_run_files(self) -> None:
        """The resolved run config, the arms and the shared stages (read by the report); main process only."""
        if not _distributed()[1]:
            return
        self.root.mkdir(parents=True, exist_ok=True)
        atomic_write_yaml(self.root / "config.yaml", self.cfg.model_dump(mode="json"))
        if self.command is not None:  # set by the command line; the report shows it
            argv = ["diffprune", *self.command]
            atomic_write_json(self.root / "command.json", {
                "argv": argv, "cwd": os.getcwd(), "provenance": self.provenance,
                "command": full_command(self.provenance, argv)})
        arms = []
        for arm in self.cfg.arms:
            label = arm.label()
            sel = None if arm.method == FULL else f"selection/{self.selection_name(arm)}"
            arms.append({
                "arm": label, "method": arm.method, "seed": self.cfg.arm_train_config(arm).seed,
                "snr_gamma": arm.snr_gamma,  # the arm's own Min-SNR (label suffix +minsnr), not the run's
                "ratio": 1.0 if arm.method == FULL else self.cfg.arm_select_config(arm).ratio,
                "reweight": f"reweight/{self.selection_name(arm)}" if arm.reweight else None,
                "selection": sel, "train": f"train/{label}", "samples": f"samples/{label}", "eval": f"eval/{label}",
            })
        atomic_write_json(self.root / "arms.json", arms)
        stages = {"embed": str(self.features_dir().relative_to(self.root))}
        if self.cfg.latent is not None:
            stages["latents"] = "latents"
        if any(a.reweight for a in self.cfg.arms):
            stages["reference"] = "reference"
            if self.cfg.reweight.null_control:  # a diagnostic: not charged to any arm's cost
                stages["null_reference"] = "reference-null"
        atomic_write_json(self.root / "stages.json", stages)
        if any(a.reweight for a in self.cfg.arms):
            atomic_write_json(self.root / "reference_cost.json", self.reference_training_cost())

    def reference_training_cost(self) -> dict[str, Any]:
        """What training the DRO reference cost (``reference_cost.json``, read by the report):
        trained by this run (its reference stage manifest), a diffprune train dir (its train manifest), or a
        pre-trained model whose cost the user states in ``reweight.reference_cost`` (else unknown)."""
        rc = self.cfg.reweight
        if rc.reference is None:
            return {"kind": "trained by this run", "source": "the reference stage's manifest"}
        for candidate in (Path(rc.reference), Path(rc.reference).parent):
            manifest = candidate / "manifest.json"
            if manifest.is_file() and read_json(manifest).get("stage") == "train":
                m = read_json(manifest)
                return {"kind": "given", "images": m.get("images_processed"),
                        "seconds": max(0.0, float(m["seconds"]) - float(m.get("eval_seconds") or 0.0)),
                        "flops": m.get("train_flops"), "source": f"diffprune train manifest {manifest}"}
        if rc.reference_cost is not None:
            return {"kind": "given", **rc.reference_cost.model_dump(mode="json")}
        return {"kind": "given", "images": None, "seconds": None, "flops": None,
                "source": "not stated: set reweight.reference_cost (images, optionally seconds and flops)"}

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

    # ------------------------------------------------------------------------- resolved stage configs
    # One place per stage turns the run config into the stage's validated, *resolved* config: what the stage
    # is called with, what config.yaml shows and what the cache key hashes (recipe defaults filled in, so that
    # editing a preset's recipe invalidates the stages trained with it).
    def embed_config(self):
        return self.cfg.embed

    def select_config(self, arm: ArmConfig):
        return self.cfg.arm_select_config(arm)

    def reweight_config(self, arm: ArmConfig):
        rc = self.cfg.arm_reweight_config(arm)
        return rc.model_copy(update={"lr": rc.proxy_lr(), "warmup_steps": rc.proxy_warmup_steps()})

    def reference_config(self, data: ImageDataset, null: bool = False) -> dict[str, Any]:
        """What determines the (null) reference only, so that changing DRO settings keeps it cached: the given
        model, or the resolved ``TrainConfig`` it is trained with."""
        from diffprune.reweighting.reference import reference_train_config

        rc = self.cfg.reweight
        given = rc.null_reference if null else rc.reference
        if given:
            return {"reference": given}
        seed = rc.null_reference_seed if null else None
        return reference_train_config(rc, data, seed=seed).resolved().model_dump(mode="json")

    def train_config(self, arm: ArmConfig):
        from diffprune.pipeline.budget import budgeted

        tc = self.cfg.arm_train_config(arm).resolved()
        if tc.budget == "equal_steps" or tc.lr_schedule != "constant":  # needs the full data's size
            tc = budgeted(tc, len(self.dataset))
        return tc

    def stop_target(self, arm: ArmConfig) -> float | None:
        """``train.stop_at_target``'s target for a pruned ``arm``: the full arm of its seed (trained first, or
        found cached) ends at value v of the metric; the target is v x (1 + tolerance). None: no early stop."""
        from diffprune.config import ConfigError
        from diffprune.pipeline.budget import stop_target

        stop = self.cfg.train.stop_at_target
        if stop is None or arm.method == FULL:
            return None
        full = [a for a in self.cfg.arms if a.method == FULL and a.seed == arm.seed]
        if not full:
            raise ConfigError(f"train.stop_at_target: arm {arm.label()} needs a full-data arm of seed {arm.seed} "
                              f"for its target; add {{method: full, seed: {arm.seed}}} to arms (a sweep without "
                              f"--no-full does), or set train.stop_at_target: null")
        self.train(full[0])
        return stop_target(self.root / "train" / full[0].label() / "metrics.jsonl", stop)

    def sample_config(self):
        sc = self.cfg.sample  # unset precision: the launch's, resolved so that the cache key records it
        precision = sc.mixed_precision or launch_precision()
        return sc.model_copy(update={"steps": sc.num_steps, "mixed_precision": precision})

    def evaluate_config(self):
        return self.cfg.evaluate

    # ------------------------------------------------------------------------------------------ stages
    def features_dir(self) -> Path:
        """``features/<encoder>``, suffixed by the encoder's options and weights when they are set (each
        combination embeds into its own folder)."""
        ec = self.cfg.embed
        name = ec.encoder.replace(":", "-")
        if ec.options or ec.weights:
            parts = [f"{k}{v}" for k, v in sorted(ec.options.items())]
            slug = "-".join(parts)
            if ec.weights or len(slug) > 40 or not all(ch.isalnum() or ch in "._-" for ch in slug):
                key = repr((sorted(ec.options.items()), ec.weights)).encode()
                slug = hash_arrays(np.frombuffer(key, np.uint8))[:8]
            name += f"-{slug}"
        return self.root / "features" / name

    def embed(self) -> tuple[np.ndarray, str]:
        from diffprune.encoders import embed_dataset

        ec = self.embed_config()
        out = self.features_dir()
        missing = self.dry_data_missing()
        if missing is not None:  # nothing is known downstream of data that is not there
            rel = str(out.relative_to(self.root))
            self._print_plan({"stage": "embed", "path": rel, "status": "run", "config": ec.model_dump(mode="json"),
                              "data": f"unknown until loaded: {missing}"})
            self.console.print(f"          data: unknown until loaded ({missing})", markup=False, highlight=False)
            raise Pending("embed", rel, "run")
        stage = StageDir(out, "embed", ec.model_dump(mode="json"), {"dataset": self.dataset.fingerprint},
                         mutable=type(ec).RESUME_MUTABLE)

        def compute(resume: bool):
            from diffprune.encoders.embed import build_encoder
            from diffprune.pipeline.flops import encoder_flops

            feats = embed_dataset(self.dataset, ec, out, progress=self.progress)
            flops = self._flops(lambda: encoder_flops(build_encoder(ec, self.dataset, "cpu"),
                                                      self.dataset, len(self.dataset)), "the encoder")
            return feats, hash_file(out / "features.npy"), {"images_processed": len(self.dataset), **flops}

        return self._stage(stage, compute, lambda: np.load(out / "features.npy", mmap_mode="r"), ("features.npy",))

    def selection_name(self, arm: ArmConfig) -> str:
        sc = self.select_config(arm)
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
        """The arm's ``Selection`` and its fingerprint (``selection/<name>/``)."""
        from diffprune.export.table import coreset_rows, write_coreset
        from diffprune.selection import Selection, select_from_config
        from diffprune.selection.figures import selection_figures

        sc = self.select_config(arm)
        features, features_fp = self.embed()
        out = self.root / "selection" / self.selection_name(arm)
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

        return self._stage(stage, compute, lambda: Selection.load(out), ("selection.npz",))

    def training_set(self, arm: ArmConfig) -> tuple[ImageDataset, str]:
        """What an arm trains on (the coreset, labelled by its groups; latents in a latent run) and its
        fingerprint.

        Built once per arm: the reference, DRO and training stages all ask for it."""
        if arm.method == FULL:
            return self.full_training_set()
        name = self.selection_name(arm)
        if name not in self._coresets:
            sel, fp = self.select(arm)
            labels, names = sel.groups[sel.indices], list(sel.group_names)
            self._check_no_group_emptied(arm, labels, names)
            if self.cfg.latent is not None:
                self._coresets[name] = self._latent_set(sel.indices, labels, names, fp)
            else:
                ds = ImageDataset(self.dataset.images[sel.indices], labels, names, name=f"{self.dataset.name}[{name}]")
                self._coresets[name] = (ds, fp)
        return self._coresets[name]

    def _check_no_group_emptied(self, arm: ArmConfig, labels: np.ndarray, names: list[str]) -> None:
        """The rule for groups that selection empties: DRO would give them weight that no image carries and a
        conditional model would sample them untrained, so such an arm stops (an unconditional arm without DRO
        just trains on the groups it kept)."""
        empty = [name for k, name in enumerate(names) if not np.any(labels == k)]
        if empty and (arm.reweight or self.train_config(arm).conditional):
            from diffprune.pipeline.config import ConfigError

            uses = "DRO" if arm.reweight else "the conditional model"
            raise ConfigError(
                f"arm {arm.label()}: selection keeps no image of {len(empty)} group(s) ({', '.join(empty[:8])}), "
                f"which {uses} needs; raise select.ratio, select per class (select.per_class=true) or group by "
                f"clusters (--clusters N)")

    def full_training_set(self) -> tuple[ImageDataset, str]:
        """Every training image (or its latent) and the fingerprint."""
        missing = self.dry_data_missing()
        if missing is not None:
            self.console.print(f"data      unknown until loaded ({missing})", markup=False, highlight=False)
            raise Pending("data", self.cfg.data.spec, "load")
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
        from diffprune.data.latents import LatentCache, load_vae

        lc = self.cfg.latent
        vae = load_vae(lc.vae, device=resolve_device(lc.device))
        slug = "".join(ch if ch.isalnum() or ch in "._-" else "_" for ch in lc.vae.strip("/"))[-60:]
        return LatentCache.open(self.root / "latents" / f"{slug}-{lc.dtype}", self.dataset, lc.vae, vae,
                                dtype=lc.dtype), vae

    def _latent_set(self, indices: np.ndarray, labels: np.ndarray, names: list[str], fp: str):
        """The latents of ``indices`` (encoded now if the cache lacks any) labelled ``labels``, and their
        fingerprint (the images' fingerprint + the VAE's identity, so gigabytes of latents are never hashed)."""
        cache, vae = self.latent_cache
        missing = len(cache.missing(indices))
        if missing:
            if self.dry_run:
                self.console.print(f"[bold]{'run':<7}[/] latents   {missing} images to encode with {self.cfg.latent.vae}")
                raise Pending("latents", str(cache.path), "run")
            if _distributed()[0] > 1:
                raise RuntimeError(
                    f"{missing} of the {len(indices)} images this stage needs are not in the latent cache yet and "
                    f"encoding does not run under several processes; run it first without accelerate launch "
                    f"(e.g. `diffprune reweight ...` or `diffprune run ...`), then launch again"
                )
            self.console.print(f"[bold cyan]{'encode':<7}[/] latents   {missing} images with {self.cfg.latent.vae}")
            with folder_lock(cache.path, wait=True, what=f"latent cache {cache.path}"):
                cache.ensure(self.dataset, indices, vae, batch_size=self.cfg.latent.batch_size,
                             progress=self.progress)
        meta = cache.meta
        key = hash_arrays(np.frombuffer(f"{fp}|{meta['vae_weights_hash']}|{meta['dtype']}".encode(), np.uint8))
        ds = cache.dataset(indices, labels=labels, class_names=names, fingerprint=key)
        return ds, key

    def reference(self, arm: ArmConfig, null: bool = False) -> tuple[Path, str]:
        """The frozen reference DM of the DRO stage (given as a path / hub id, or trained once per run)
        and its fingerprint; ``null``: the null control's second reference (``reference-null/``: the same
        recipe with ``reweight.null_seed``, or ``reweight.null_reference``)."""
        from diffprune.diffusion import TrainConfig
        from diffprune.reweighting import prepare_reference

        rc = self.cfg.reweight
        folder = "reference-null" if null else "reference"
        if self.cfg.reference_data == "coreset":
            data, data_fp = self.training_set(arm)
            out = self.root / folder / self.selection_name(arm)
        else:
            data, data_fp = self.full_training_set()
            out = self.root / folder
        given = rc.null_reference if null else rc.reference
        ref_config = self.reference_config(data, null=null)
        stage = StageDir(out, "reference", ref_config, {"data": data_fp},
                         mutable=frozenset() if given else TrainConfig.RESUME_MUTABLE,
                         resumable=_continuable(out, int(ref_config.get("steps") or 0)))

        def compute(resume: bool):
            if not resume:  # the trainer resumes any checkpoint it finds; a changed config starts afresh
                shutil.rmtree(out / "state", ignore_errors=True)
            from diffprune.pipeline.flops import training_flops

            path = prepare_reference(rc, data, out, progress=self.progress, null=null)
            images = 0 if given else int(rc.reference_budget) * int(rc.batch_size)
            flops = self._flops(lambda: training_flops(path, data, images), "the reference")
            return Path(path), model_fingerprint(path), {"images_processed": images, "path": str(path), **flops}

        return self._stage(stage, compute, lambda: Path(stage.manifest()["path"]), ("model/*.safetensors",))

    def reweight(self, arm: ArmConfig) -> tuple[dict[str, float] | None, str | None]:
        """The arm's DRO class weights and their fingerprint; ``(None, None)`` for an arm without DRO."""
        from diffprune.diffusion.checkpoint import checkpoint_step
        from diffprune.reweighting import ReweightError, load_class_weights, run_dro
        from diffprune.reweighting.runner import PROXY_DIR

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
        out = self.root / "reweight" / self.selection_name(arm)
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
                         mutable=type(rc).RESUME_MUTABLE, resumable=_continuable(step, rc.steps))

        def compute(resume: bool):
            from diffprune.pipeline.flops import dro_flops

            ref_data = None  # iterated DoReMi retrains references on the data of the first one
            if rc.rounds > 1:
                ref_data = coreset if self.cfg.reference_data == "coreset" else self.full_training_set()[0]
            summary = run_dro(rc, coreset, ref, out, progress=self.progress, resume=resume,
                              null_reference_dir=null_ref, reference_dataset=ref_data)
            images = int(rc.steps) * int(rc.batch_size)
            weights = load_class_weights(out / "class_weights.json")
            flops = self._flops(lambda: dro_flops(rc, coreset, ref, images), "DRO")
            # every DRO image goes through two networks (the reference's forward, the proxy's forward+backward),
            # as the FLOPs count it; "images" counts image passes through a network
            return weights, hash_file(out / "class_weights.json"), {"images_processed": 2 * images, "summary": summary,
                                                                    "attempt": {"resumed_from": step if resume else None},
                                                                    **flops}

        return self._stage(stage, compute, lambda: load_class_weights(out / "class_weights.json"),
                           ("class_weights.json", "trajectory.npz"))

    def train(self, arm: ArmConfig) -> tuple[Path, str]:
        """The arm's trained model folder (``train/<arm>/model``) and its fingerprint."""
        from diffprune.diffusion import train, total_steps
        from diffprune.diffusion.config import PUSH_FIELDS
        from diffprune.export.pipeline import check_push, hub_repo_id, pipeline_kind, push_trained, write_pipeline

        tc = self.train_config(arm)
        if tc.push_to_hub:
            check_push()  # no token: stop before selecting and training, not after
        data, data_fp = self.training_set(arm)
        weights, weights_fp = self.reweight(arm)
        out = self.root / "train" / arm.label()
        inputs = {"data": data_fp}
        if weights is not None:
            inputs["class_weights"] = weights_fp
        target = self.stop_target(arm)
        if target is not None:
            inputs["stop_target"] = f"{tc.stop_at_target.metric} <= {target!r}"
        # where the weights are pushed is not part of the result: changing it neither retrains nor extends
        stage = StageDir(out, "train", tc.model_dump(mode="json", exclude=set(PUSH_FIELDS)), inputs,
                         mutable=type(tc).RESUME_MUTABLE, resumable=_continuable(out, total_steps(tc, len(data))))

        def compute(resume: bool):
            from diffprune.diffusion.checkpoint import checkpoint_step
            from diffprune.pipeline.budget import train_until_target
            from diffprune.pipeline.flops import training_flops

            evaluator = self.training_evaluator(data) if tc.eval_every else None

            def train_piece(config, resume_piece: bool) -> dict[str, Any]:
                return train(config, data, out, class_weights=weights, resume=resume_piece, progress=self.progress,
                             evaluator=evaluator)

            if target is None:
                summary = train_piece(tc, resume)
            else:  # in pieces between evaluations, stopping at the target (pipeline/budget.py)
                budget = tc.model_copy(update={"steps": total_steps(tc, len(data)), "epochs": None})
                summary = train_until_target(budget, train_piece, out / "metrics.jsonl", target, tc.stop_at_target,
                                             (checkpoint_step(out) or 0) if resume else 0, resume)
            if _distributed()[1] and pipeline_kind(out / "model"):  # DDPMPipeline.from_pretrained(train/<arm>/pipeline)
                write_pipeline(out / "model", out / "pipeline")
            images = int(summary.get("images_seen", 0))
            return out / "model", model_fingerprint(out / "model"), {
                "images_processed": images, "summary": summary,
                # this attempt's evaluation time; the manifest's eval_seconds totals it (not a training cost)
                "attempt": {"resumed_from": summary.get("resumed_from"), "reached": summary.get("steps"),
                            "eval_seconds": float(summary.get("eval_seconds", 0.0))},
                **self._flops(lambda: training_flops(out / "model", data, images), f"training {arm.label()}"),
            }

        model = self._stage(stage, compute, lambda: out / "model", ("model/*.safetensors", "metrics.jsonl"))
        if tc.push_to_hub and _distributed()[1]:  # once per trained weights (train/<arm>/pushed.json)
            url = push_trained(out, hub_repo_id(tc.hub_model_id, arm.label()), private=tc.hub_private)
            if url:
                self.console.print(f"pushed {out / 'pipeline'} to {url}")
        return model

    def training_evaluator(self, data: ImageDataset):
        """What ``train.eval_every`` runs: the EMA model sampled with ``train.eval`` and scored with the run's
        ``evaluate`` protocol against the same real images and caches as the evaluate stage."""
        from diffprune.diffusion.batches import latent_meta
        from diffprune.evaluation.during_training import TrainingEvaluator

        return TrainingEvaluator(self.cfg.train.eval, self.cfg.evaluate, self.dataset, self.root / "eval",
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
        from diffprune.diffusion import generate

        model_dir, model_fp = self.train(arm)
        out = self.root / "samples" / arm.label()
        sc = self.sample_config()
        stage = StageDir(out, "sample", sc.model_dump(mode="json"), {"model": model_fp},
                         mutable=type(sc).RESUME_MUTABLE)

        def load() -> np.ndarray:
            with np.load(out / "samples.npz") as z:
                return z["arr_0"]

        def compute(resume: bool):
            from diffprune.pipeline.flops import sampling_flops

            generate(model_dir, out, sc, progress=self.progress)  # resumable chunks, sharded across processes
            images = load()
            flops = self._flops(lambda: sampling_flops(model_dir, self.training_set(arm)[0], len(images), sc.num_steps,
                                                       sc.guidance_scale), f"sampling {arm.label()}")
            return images, hash_arrays(images), {"images_processed": int(len(images)), **flops}

        return self._stage(stage, compute, load, ("samples.npz",))

    def evaluate(self, arm: ArmConfig) -> tuple[dict[str, Any], str]:
        """The arm's metrics (``eval/<arm>/metrics.json``) and their fingerprint."""
        from diffprune.evaluation import evaluate

        samples, samples_fp = self.sample(arm)
        out = self.root / "eval" / arm.label()
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
            labels_path = self.root / "samples" / arm.label() / "samples.npz"
            with np.load(labels_path) as z:
                sample_labels = z["labels"] if "labels" in z.files else None
            metrics = evaluate(
                samples, self.dataset, ec, out, cache_dir=self.root / "eval", sample_labels=sample_labels,
                protocol=protocol, progress=self.progress, classifier_data=self.classifier_data,
            )
            return metrics, hash_file(out / "metrics.json"), {"images_processed": int(len(samples))}

        return self._stage(stage, compute, lambda: read_json(out / "metrics.json"), ("metrics.json",))

    def export(self, arm: ArmConfig, out_dir: Path | None = None) -> Path:
        """``coreset.csv`` / ``coreset.jsonl`` of a pruned arm with its class weights and ``train.weighting``
        (in ``export/<arm>/`` by default), plus a diffusers pipeline folder when the arm is trained."""
        from diffprune.export.pipeline import write_pipeline
        from diffprune.export.table import coreset_rows, write_coreset

        if arm.method == FULL:
            raise ValueError("arm 'full' trains on all data; it has no coreset to export (pick a pruned arm)")
        out = out_dir or self.root / "export" / arm.label()
        rows = coreset_rows(self.dataset, self.select(arm)[0], self.reweight(arm)[0], self.train_config(arm).weighting)
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

    def check(self, arms: Iterable[ArmConfig] | None = None) -> None:
        """Every config and environment check (devices, tracker packages, image size vs model presets) of
        ``arms`` (default: all), before any stage computes: a failed start leaves finished stages cached."""
        from diffprune.pipeline.checks import check_run

        size = self.cfg.data.resolution or NATIVE_RESOLUTION.get(self.cfg.data.spec) if self.dry_data_missing() \
            else self.dataset.resolution
        if size is None:
            self.console.print("[yellow]image size unknown until the data is loaded[/]: size checks skipped")
            return
        check_run(self.cfg, list(arms) if arms is not None else self.cfg.arms, size)

    def plan(self, arms: Iterable[str] | None = None, until: str = "evaluate") -> list[dict[str, Any]]:
        """``dry_run``: every stage up to ``until`` of every arm (or the named arms) with its resolved config and
        status (``cached``, ``run``, ``extend``, ``resume``; ``after <stage>`` when an upstream stage would
        compute first), computing nothing. Returns the entries also printed to the console."""
        if not self.dry_run:
            raise RuntimeError("plan() needs Pipeline(..., dry_run=True)")
        order = ("embed", "select", "reference", "reweight", "train", "sample", "evaluate")
        order = order[:order.index(until) + 1]
        chosen = [self.arm(a) for a in arms] if arms else list(self.cfg.arms)
        if until == "embed":
            chosen = chosen[:1]  # shared by every arm
        for arm in chosen:
            if (until == "select" and arm.method == FULL) or (until == "reweight" and not arm.reweight):
                continue
            self.console.rule(f"arm {arm.label()}")
            seen = len(self.planned)
            try:
                self.embed() if until == "embed" else getattr(self, until)(arm)
            except Pending as p:
                done = {e["stage"] for e in self.planned[seen:]}
                for name in order[order.index(p.stage) + 1 if p.stage in order else 1:]:
                    if name in done or (name in ("reference", "reweight") and not arm.reweight) or \
                            (name == "select" and arm.method == FULL):
                        continue
                    self._print_plan({"stage": name, "path": f"(after {p.stage}: its inputs are not computed yet)",
                                      "status": "run", "after": p.stage, "config": self._stage_config(name, arm)})
            for entry in self.planned[seen:]:
                entry.setdefault("arm", arm.label())
        return self.planned

    def _stage_config(self, name: str, arm: ArmConfig) -> dict[str, Any]:
        """The resolved config of stage ``name`` of ``arm`` as the stage will record it."""
        if name == "reference":  # the recipe does not depend on which images it trains on
            return self.reference_config(None if self.dry_data_missing() else self.dataset)
        get = {"embed": self.embed_config, "select": lambda: self.select_config(arm),
               "reweight": lambda: self.reweight_config(arm), "train": lambda: self.train_config(arm),
               "sample": self.sample_config, "evaluate": self.evaluate_config}[name]
        return get().model_dump(mode="json")

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
