"""The run configs shipped in the package (``src/diffprune/configs/``) and how a command names a config or a run:
``resolve_config`` (a YAML path, or a shipped config's name), ``run_name_for`` (a run named after its data)."""
from __future__ import annotations

import re
from importlib import resources
from pathlib import Path


def bundled_config(name: str) -> Path:
    return Path(str(resources.files("diffprune") / "configs" / f"{name}.yaml"))


def bundled_configs() -> list[str]:
    """Names of the configs shipped in the package (``diffprune run NAME``)."""
    return sorted(p.name[:-5] for p in resources.files("diffprune").joinpath("configs").iterdir()
                  if p.name.endswith(".yaml"))


def resolve_config(config: str | Path | None) -> Path:
    """A config path as given, else the shipped config of that name (``cifar10-ddpm``), else a clear error."""
    if config is None:
        return bundled_config("demo")
    path = Path(config)
    if path.exists():  # a folder too: load_run_config names it and says what to pass instead
        return path
    name = path.name[:-5] if path.name.endswith(".yaml") else path.name
    if name in bundled_configs() and path.parent in (Path("."), Path("configs")):
        return bundled_config(name)
    from diffprune.config import ConfigError  # pydantic: loaded only for this message, so `--help` stays quick

    raise ConfigError(f"config '{config}' is neither a file nor a shipped config "
                      f"({', '.join(bundled_configs())}); pass a YAML path or one of those names")


def run_name_for(data: str) -> str:
    """A run name derived from a dataset spec: ``imagefolder:/data/pets`` -> ``pets``, ``cifar10`` -> ``cifar10``."""
    tail = data.rstrip("/").rpartition(":")[2].rstrip("/").rpartition("/")[2] or data
    return re.sub(r"[^A-Za-z0-9._+-]", "-", tail).lstrip("._+-") or "data"
