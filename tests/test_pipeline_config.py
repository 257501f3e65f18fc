from pathlib import Path

import pytest

from diffprune.config import ConfigError
from diffprune.pipeline.config import load_run_config


def test_bundled_demo_config_is_valid():
    from diffprune.cli import bundled_config

    cfg = load_run_config(bundled_config("demo"))
    assert cfg.name == "demo" and cfg.data.spec == "digits"
    assert [a.label() for a in cfg.arms] == ["gaussian+dro", "random"]


def test_overrides_are_parsed_as_yaml_and_validated(tmp_path):
    cfg = load_run_config(None, ["train.steps=7", "select.ratio=0.5", "data.spec=mnist5k"], name="x")
    assert cfg.train.steps == 7 and cfg.select.ratio == 0.5 and cfg.data.spec == "mnist5k" and cfg.name == "x"
    with pytest.raises(ConfigError, match=r"select.ratio: got 1.5"):
        load_run_config(None, ["select.ratio=1.5"])
    with pytest.raises(ConfigError, match="expected KEY=VALUE"):
        load_run_config(None, ["train.steps"])


def test_bad_yaml_fields_get_one_line_each(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("name: 'bad name'\ntrain:\n  stepz: 3\narms:\n  - method: nonsense\n")
    with pytest.raises(ConfigError) as e:
        load_run_config(p)
    msg = str(e.value)
    assert "name: got 'bad name'" in msg
    assert "train.stepz: unknown field" in msg
    assert "arms.0.method: got 'nonsense'" in msg and "gaussian" in msg
    with pytest.raises(ConfigError, match="not found"):
        load_run_config(tmp_path / "missing.yaml")


def test_duplicate_arms_rejected():
    with pytest.raises(ConfigError, match="repeats"):
        load_run_config(None, ["arms=[{method: random}, {method: random}]"])


def test_arm_select_config_applies_arm_fields():
    cfg = load_run_config(None, ["select.ratio=0.2", "arms=[{method: knn, ratio: 0.4, keep: bottom}, {method: random}]"])
    a, b = cfg.arms
    assert cfg.arm_select_config(a).ratio == 0.4 and cfg.arm_select_config(a).keep == "bottom"
    assert cfg.arm_select_config(b).ratio == 0.2 and cfg.arm_select_config(b).method == "random"


PACKAGE_CONFIGS = sorted(p.stem for p in (Path(__file__).parents[1] / "src" / "diffprune" / "configs").glob("*.yaml"))


@pytest.mark.parametrize("name", PACKAGE_CONFIGS)
def test_every_packaged_config_loads_by_name(name):
    """``diffprune <verb> -c NAME`` reads the file inside the package (the one a pip install ships)."""
    from diffprune.cli import bundled_config

    path = bundled_config(name)
    assert path.resolve() == (Path(__file__).parents[1] / "src" / "diffprune" / "configs" / f"{name}.yaml").resolve()
    cfg = load_run_config(path)
    assert cfg.name == name and cfg.arms


def test_configs_folder_holds_links_to_the_packaged_files_only():
    """One copy of each config: every configs/X.yaml is a symlink to src/diffprune/configs/X.yaml (editing either
    edits both), every packaged config has one, and pyproject ships the folder as package data."""
    import tomllib

    root = Path(__file__).parents[1]
    links = sorted((root / "configs").glob("*.yaml"))
    assert sorted(p.stem for p in links) == PACKAGE_CONFIGS and len(PACKAGE_CONFIGS) >= 5
    for link in links:
        assert link.is_symlink(), f"{link} is a copy; make it a link: ln -sf ../src/diffprune/configs/{link.name}"
        assert link.resolve() == (root / "src" / "diffprune" / "configs" / link.name).resolve()
    pyproject = tomllib.loads((root / "pyproject.toml").read_text(encoding="utf-8"))
    assert "configs/*.yaml" in pyproject["tool"]["setuptools"]["package-data"]["diffprune"]


@pytest.mark.parametrize("name", ["demo", "fashion-mnist", "cifar10-ddpm", "imagenet-latent"])
def test_shipped_configs_validate(name):
    """Every config in configs/ loads, and its training preset resolves (a typo would fail a user hours in)."""
    from pathlib import Path

    cfg = load_run_config(Path(__file__).parents[1] / "configs" / f"{name}.yaml")
    assert cfg.name == name and cfg.arms and cfg.train.resolved().batch_size
    if name == "imagenet-latent":
        assert cfg.latent is not None and cfg.train.preset.startswith("dit-") and cfg.train.mask_ratio == 0.3


def test_the_run_seed_is_the_default_seed_of_every_section():
    from diffprune.pipeline.config import SEEDED_SECTIONS

    cfg = load_run_config(None, ["seed=7", "train.seed=2"])
    assert cfg.train.seed == 2 and cfg.train.eval.seed == 7
    assert [getattr(cfg, s).seed for s in SEEDED_SECTIONS if s != "train"] == [7] * (len(SEEDED_SECTIONS) - 1)
    assert cfg.reweight.null_reference_seed == 8
    base = load_run_config(None, [])
    assert {getattr(base, s).seed for s in SEEDED_SECTIONS} == {0}  # backward compatible: 0 as before


def test_select_method_is_refused_because_the_arms_choose_it_and_dumps_validate_again():
    with pytest.raises(ConfigError, match=r"select: .*each arm chooses its method"):
        load_run_config(None, ["select.method=knn"])
    cfg = load_run_config(None, ["seed=3"])
    from diffprune.config import validate_config
    from diffprune.pipeline.config import RunConfig

    again = validate_config(RunConfig, cfg.model_dump(mode="json"))  # runs/<name>/config.yaml, sweeps
    assert again == cfg and "method" not in cfg.model_dump()["select"]
    with pytest.raises(ConfigError, match="reweight.train_reference: unknown field"):
        load_run_config(None, ["reweight.train_reference=true"])
