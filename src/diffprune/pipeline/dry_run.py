"""The dry run (``--dry-run``): every stage's folder, resolved config and status, in the order of ``STAGES``,
computing nothing; a stage after one that would compute is listed as ``run`` "after <stage>"."""
from __future__ import annotations

from typing import Any, Iterable

from diffprune.pipeline.config import FULL, ArmConfig
from diffprune.pipeline.stages import STAGES, Pending


def plan_stages(pipe: Any, arms: Iterable[str] | None = None, until: str = "evaluate") -> list[dict[str, Any]]:
    """``dry_run``: every stage up to ``until`` of every arm (or the named arms) with its resolved config and
    status (``cached``, ``run``, ``extend``, ``resume``; ``after <stage>`` when an upstream stage would
    compute first), computing nothing. Returns the entries also printed to the console."""
    if not pipe.dry_run:
        raise RuntimeError("plan() needs Pipeline(..., dry_run=True)")
    order = STAGES[:STAGES.index(until) + 1]
    chosen = [pipe.arm(a) for a in arms] if arms else list(pipe.cfg.arms)
    if until == "embed":
        chosen = chosen[:1]  # shared by every arm
    for arm in chosen:
        if (until == "select" and arm.method == FULL) or (until == "reweight" and not arm.reweight):
            continue
        pipe.console.rule(f"arm {arm.label()}")
        seen = len(pipe.planned)
        try:
            pipe.embed() if until == "embed" else getattr(pipe, until)(arm)
        except Pending as p:
            done = {e["stage"] for e in pipe.planned[seen:]}
            for name in order[order.index(p.stage) + 1 if p.stage in order else 1:]:
                if name in done or (name in ("reference", "reweight") and not arm.reweight) or \
                        (name == "select" and arm.method == FULL):
                    continue
                pipe.stages.print_plan({"stage": name, "path": f"(after {p.stage}: its inputs are not computed yet)",
                                        "status": "run", "after": p.stage, "config": stage_config(pipe, name, arm)})
        for entry in pipe.planned[seen:]:
            entry.setdefault("arm", arm.label())
    return pipe.planned


def stage_config(pipe: Any, name: str, arm: ArmConfig) -> dict[str, Any]:
    """The resolved config of stage ``name`` of ``arm`` as the stage will record it."""
    if name == "reference":  # the recipe does not depend on which images it trains on
        return pipe.reference_config(None if pipe.dry_data_missing() else pipe.dataset)
    get = {"embed": pipe.embed_config, "select": lambda: pipe.select_config(arm),
           "reweight": lambda: pipe.reweight_config(arm), "train": lambda: pipe.train_config(arm),
           "sample": pipe.sample_config, "evaluate": pipe.evaluate_config}[name]
    return get().model_dump(mode="json")
