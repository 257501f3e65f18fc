"""The stage contract: a stage is a cache hit (its manifest matches) or computes under its folder's lock and
writes its outputs, its resolved config and, last, its manifest. ``StageRunner.run`` is the one place that
decides which, for every stage of ``Pipeline``; a dry run prints the decision instead.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Iterable, TypeVar

import yaml
from rich.console import Console

from diffprune.diffusion.checkpoint import checkpoint_step
from diffprune.io import folder_lock, remove_stale_temps
from diffprune.pipeline.manifest import StageDir
from diffprune.runtime import launch_world

T = TypeVar("T")
STAGES = ("embed", "select", "reference", "reweight", "train", "sample", "evaluate", "report")
DISTRIBUTED_STAGES = ("embed", "train", "sample", "evaluate")


class Pending(Exception):
    """``dry_run``: this stage would compute (``status``: run, extend or resume), so nothing after it is known."""

    def __init__(self, stage: str, path: str, status: str) -> None:
        super().__init__(f"{stage} ({path}) would {status}")
        self.stage, self.path, self.status = stage, path, status


def distributed() -> tuple[int, bool]:
    """(world size, is main process) from the variables that ``accelerate launch`` / torchrun set."""
    rank, world = launch_world()
    return world, rank == 0


def continuable(checkpoint: int | Path | None, budget: int) -> bool:
    """Whether a trainer checkpoint (its step, or the run folder whose ``state/`` holds it; None: no checkpoint)
    can be continued to ``budget`` steps: a checkpoint cannot be rewound, so one past a lowered budget means
    retraining from step 0."""
    step = checkpoint_step(checkpoint) if isinstance(checkpoint, Path) else checkpoint
    return step is None or step <= budget


class StageRunner:
    """Runs stages of the run directory ``root`` under the contract (see ``run``).

    Args:
        root: the run directory.
        force: stage names to recompute even when cached (``True`` = all).
        console: where status lines go.
        wait: queue behind another process computing the same stage instead of stopping.
        dry_run: compute nothing; ``planned`` collects each stage's status and resolved config.
        manifest_extra: fields every manifest records (e.g. the run's provenance).
    """

    def __init__(self, root: Path, force: bool | Iterable[str], console: Console, wait: bool, dry_run: bool,
                 manifest_extra: dict[str, Any] | None = None) -> None:
        self.root, self.console, self.wait, self.dry_run = root, console, wait, dry_run
        self.force = set(STAGES) if force is True else set(force or ())
        self.manifest_extra = dict(manifest_extra or {})
        self.planned: list[dict[str, Any]] = []

    def run(
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
        world, main = distributed()
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
            remove_stale_temps(stage.path, all_writers=distributed()[0] == 1)  # other ranks may be writing
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
        self.print_plan({"stage": stage.stage, "path": str(rel), "status": status, "config": dict(stage.config)})
        if status == "cached":
            return load(), stage.manifest()["fingerprint"]
        raise Pending(stage.stage, str(rel), status)

    def print_plan(self, entry: dict[str, Any]) -> None:
        """Record a dry run's entry in ``planned`` and print it with its resolved config."""
        self.planned.append(entry)
        self.console.print(f"[bold]{entry['status']:<7}[/] {entry['stage']:<9} {entry['path']}")
        self.console.print("\n".join(f"          {line}" for line in
                                     yaml.safe_dump(entry["config"], sort_keys=False).splitlines()),
                           highlight=False, markup=False)

    def _compute(self, stage: StageDir, rel: Path, compute: Callable[[bool], tuple[T, str, dict[str, Any]]],
                 outputs: tuple[str, ...], main: bool) -> tuple[T, str]:
        world = distributed()[0]
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
                                    **self.manifest_extra, **extra)
            self.console.print(f"[green]done[/]    {stage.stage:<9} {rel} ({manifest['seconds']:.1f} s)")
        return result, fingerprint
