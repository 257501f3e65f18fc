"""Run directories, manifests, cache hits and the orchestration of the stages."""
from diffprune.pipeline.config import ArmConfig, RunConfig, load_run_config
from diffprune.pipeline.manifest import StageDir
from diffprune.pipeline.runner import STAGES, Pipeline

__all__ = ["STAGES", "ArmConfig", "Pipeline", "RunConfig", "StageDir", "load_run_config"]
