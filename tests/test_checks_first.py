"""Every check before work, one line each (issue 28): encoder options, non-UTF-8 file names, click's own
usage errors, and boolean environment variables read as documented."""
from __future__ import annotations

import os
import sys

import pytest
from PIL import Image

from diffprune.cli import main
from diffprune.io import EnvError, env_flag


def cli(monkeypatch, capsys, *args):
    monkeypatch.setattr(sys, "argv", ["diffprune", *map(str, args)])
    monkeypatch.delenv("DIFFPRUNE_DEBUG", raising=False)
    with pytest.raises(SystemExit) as e:
        main()
    err = capsys.readouterr().err
    lines = [ln for ln in err.splitlines() if ln.strip()]
    errors = [ln for ln in lines if ln.startswith("error:")]
    assert "Traceback" not in err and "Usage" not in err and (not errors or lines[-1] == errors[-1]), err
    return e.value.code, errors  # the error lines (a command may print a status line before)


def test_an_unknown_encoder_option_stops_before_any_folder(tmp_path, monkeypatch, capsys):
    code, lines = cli(monkeypatch, capsys, "embed", "--set", "embed.options.bogus=1", "--set", "embed.encoder=pixels",
                      "--set", f"runs_dir={tmp_path / 'runs'}")
    assert code == 2 and len(lines) == 1 and "bogus" in lines[0] and "embed.options" in lines[0], lines
    assert not (tmp_path / "runs").exists()


def test_a_non_utf8_file_name_stops_before_any_folder(tmp_path, monkeypatch, capsys):
    for k in ("a", "b"):
        (tmp_path / "data" / k).mkdir(parents=True)
        Image.new("L", (8, 8)).save(tmp_path / "data" / k / "x.png")
    Image.new("L", (8, 8)).save(os.path.join(os.fsencode(tmp_path / "data" / "b"), b"caf\xe9.png"))
    code, lines = cli(monkeypatch, capsys, "embed", "--no-progress",
                      "--set", f"data.spec=imagefolder:{tmp_path / 'data'}", "--set", "embed.encoder=pixels", "--set", f"runs_dir={tmp_path / 'runs'}")
    assert code == 2 and len(lines) == 1 and "not valid UTF-8" in lines[0] and "caf\\xe9" in lines[0], lines
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize("args", [["train", "--bogus"], ["report", "/nonexistent-run"],
                                  ["report", "--tolerance", "x", "/tmp"], ["fid"]])
def test_click_usage_errors_are_one_line_without_a_box(monkeypatch, capsys, args):
    code, lines = cli(monkeypatch, capsys, *args)
    assert code == 2 and len(lines) == 1 and lines[0].startswith("error: "), lines
    assert "Usage" not in lines[0] and "╭" not in lines[0] and "--help" in lines[0]


@pytest.mark.parametrize(("value", "expected"), [("", False), ("0", False), ("false", False), ("No", False),
                                                 ("off", False), ("1", True), ("TRUE", True), ("yes", True),
                                                 ("on", True)])
def test_boolean_environment_variables(monkeypatch, value, expected):
    monkeypatch.setenv("DIFFPRUNE_WAIT", value)
    assert env_flag("DIFFPRUNE_WAIT") is expected
    from diffprune.pipeline import Pipeline, load_run_config

    assert Pipeline(load_run_config("configs/demo.yaml", [])).wait is expected


def test_a_boolean_variable_with_another_value_is_an_error(monkeypatch):
    monkeypatch.setenv("DIFFPRUNE_WAIT", "maybe")
    with pytest.raises(EnvError, match="DIFFPRUNE_WAIT='maybe' is not a boolean"):
        env_flag("DIFFPRUNE_WAIT")


def test_messages_keep_their_closing_quote_and_separate_their_lines():
    from diffprune.errors import user_message

    assert user_message(ValueError("got 'x'")) == "got 'x'"
    assert user_message(KeyError("no arm 'a'")) == "no arm 'a'"
    assert user_message(ValueError("first problem\nsecond problem")) == "first problem; second problem"
