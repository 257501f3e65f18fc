"""The resolved stage configs: one place per stage turns the run config into the stage's validated, *resolved*
config: what the stage is called with, what ``config.yaml`` shows and what the cache key hashes (recipe defaults
filled in, so that editing a preset's recipe invalidates the stages trained with it).
"""
from __future__ import annotations

from typing import Any

from diffprune.config import ConfigError
from diffprune.data import ImageDataset
from diffprune.pipeline.budget import budgeted
from diffprune.pipeline.budget import stop_target as target_from_log
from diffprune.pipeline.config import FULL, ArmConfig
from diffprune.reweighting.reference import reference_train_config
from diffprune.runtime import launch_precision


class StageConfigs:
    """``Pipeline.<stage>_config``: the resolved config of each stage (a base of ``Pipeline``, whose ``cfg``,
    ``dataset``, ``layout`` and ``train`` it reads)."""

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
        rc = self.cfg.reweight
        given = rc.null_reference if null else rc.reference
        if given:
            return {"reference": given}
        seed = rc.null_reference_seed if null else None
        return reference_train_config(rc, data, seed=seed).resolved().model_dump(mode="json")

    def train_config(self, arm: ArmConfig):
        tc = self.cfg.arm_train_config(arm).resolved()
        if tc.budget == "equal_steps" or tc.lr_schedule != "constant":  # needs the full data's size
            tc = budgeted(tc, len(self.dataset))
        return tc

    def stop_target(self, arm: ArmConfig) -> float | None:
        """``train.stop_at_target``'s target for a pruned ``arm``: the full arm of its seed (trained first, or
        found cached) ends at value v of the metric; the target is v x (1 + tolerance). None: no early stop."""
        stop = self.cfg.train.stop_at_target
        if stop is None or arm.method == FULL:
            return None
        full = [a for a in self.cfg.arms if a.method == FULL and a.seed == arm.seed]
        if not full:
            raise ConfigError(f"train.stop_at_target: arm {arm.label()} needs a full-data arm of seed {arm.seed} "
                              f"for its target; add {{method: full, seed: {arm.seed}}} to arms (a sweep without "
                              f"--no-full does), or set train.stop_at_target: null")
        self.train(full[0])
        return target_from_log(self.layout.train(full[0].label()) / "metrics.jsonl", stop)

    def sample_config(self):
        sc = self.cfg.sample  # unset precision: the launch's, resolved so that the cache key records it
        precision = sc.mixed_precision or launch_precision()
        return sc.model_copy(update={"steps": sc.num_steps, "mixed_precision": precision})

    def evaluate_config(self):
        return self.cfg.evaluate
