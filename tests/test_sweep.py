import math

import pytest

from diffprune.config import ConfigError
from diffprune.pipeline.config import load_run_config
from diffprune.pipeline.sweep import _mean_std, parse_method, sweep_config


def test_grid_has_one_arm_per_cell_plus_full_per_seed():
    base = load_run_config(None)
    cfg = sweep_config(base, ["random", "gaussian+dro"], [0.1, 0.3], [0, 1])
    labels = [a.label() for a in cfg.arms]
    assert len(labels) == 2 * (1 + 2 * 2)
    assert "full-s1" in labels and "gaussian+dro-r0.3-s0" in labels
    assert {a.reweight for a in cfg.arms if a.method == "gaussian"} == {True}


def test_method_tokens_validated():
    assert parse_method("gaussian+dro") == ("gaussian", True)
    with pytest.raises(ConfigError, match="only suffix"):
        parse_method("gaussian+foo")
    with pytest.raises(ConfigError, match="arms.1.method"):
        sweep_config(load_run_config(None), ["nosuchmethod"], [0.1], [0])


def test_mean_std_uses_sample_std():
    vals = [1.0, 2.0, 4.0]
    mean = sum(vals) / 3
    std = math.sqrt(sum((v - mean) ** 2 for v in vals) / 2)
    assert _mean_std(vals) == f"{mean:.3g} ± {std:.2g}"
    assert _mean_std([None, 3.0]) == "3"
    assert _mean_std([]) == "-"
