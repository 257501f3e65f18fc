"""Every failure a user can cause ends in one line ``error: ...`` and exit status 2, never a traceback.

Each case of issue 16 runs through the real entry point (``sys.argv`` + ``diffprune.cli.main``), in-process.
"""
import errno
import os
import pickle
import subprocess
import sys
from pathlib import Path

import pytest

from diffprune.cli import main

TINY = ["data.limit=40", "data.resolution=8", "data.resize=pad", "embed.encoder=pixels", "select.ratio=0.5",
        "train.preset=ddpm-tiny", "train.steps=4", "train.batch_size=8", "train.checkpoint_every=2",
        "train.log_every=1"]


def _sets(runs, *extra):
    out = []
    for item in [*TINY, f"runs_dir={runs}", *extra]:
        out += ["--set", item]
    return out


def cli(monkeypatch, capsys, *args):
    """(exit status, stderr) of ``diffprune ARGS``."""
    monkeypatch.setattr(sys, "argv", ["diffprune", *map(str, args)])
    monkeypatch.delenv("DIFFPRUNE_DEBUG", raising=False)
    with pytest.raises(SystemExit) as e:
        main()
    return e.value.code, capsys.readouterr().err


def one_line_error(code, err, *needles):
    """Exit 2, exactly one ``error:`` line, it is the last line, no traceback, and it says ``needles``."""
    lines = [ln for ln in err.splitlines() if ln.strip()]
    errors = [ln for ln in lines if ln.startswith("error:")]
    assert code == 2, err
    assert "Traceback" not in err and len(errors) == 1 and lines[-1] == errors[0], err
    for needle in needles:
        assert needle in errors[0], (needle, errors[0])
    return errors[0]


def test_yaml_syntax_error_in_config_file(tmp_path, monkeypatch, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("data:\n  spec: [digits\n")
    msg = one_line_error(*cli(monkeypatch, capsys, "embed", "-c", bad), str(bad), "not valid YAML", "line")
    assert "fix the syntax" in msg


def test_yaml_syntax_error_in_set(tmp_path, monkeypatch, capsys):
    one_line_error(*cli(monkeypatch, capsys, "train", "--set", "train.steps=[1"), "train.steps=[1", "not valid YAML")


def test_config_that_is_a_folder(tmp_path, monkeypatch, capsys):
    one_line_error(*cli(monkeypatch, capsys, "embed", "-c", tmp_path), str(tmp_path), "is a folder")


def test_decompression_bomb_names_the_file(tmp_path, monkeypatch, capsys):
    from PIL import Image

    for k in ("a", "b"):
        (tmp_path / "data" / k).mkdir(parents=True)
        Image.new("L", (8, 8)).save(tmp_path / "data" / k / "small.png")
    Image.new("L", (40, 40)).save(tmp_path / "data" / "b" / "huge.png")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 500)  # 1600 px > 2 x 500: PIL refuses it as a bomb
    code, err = cli(monkeypatch, capsys, "embed", "--no-progress",
                    *_sets(tmp_path / "runs", f"data.spec=imagefolder:{tmp_path / 'data'}"))
    one_line_error(code, err, "huge.png", "data.skip_bad=true")


def test_unknown_encoder_option(tmp_path, monkeypatch, capsys):
    code, err = cli(monkeypatch, capsys, "embed", "--no-progress", *_sets(tmp_path, "embed.options.bogus=1"))
    one_line_error(code, err, "embed.options", "bogus")


def _ro_mount(path: Path) -> None:
    path.mkdir(parents=True, exist_ok=True)
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=1m", "tmpfs", str(path)], capture_output=True)
    if r.returncode:
        pytest.skip(f"cannot mount a read-only tmpfs here: {r.stderr.decode().strip()}")


def test_read_only_run_directory(tmp_path, monkeypatch, capsys):
    ro = tmp_path / "ro"
    _ro_mount(ro)
    try:
        one_line_error(*cli(monkeypatch, capsys, "embed", "--no-progress", *_sets(ro)),
                       "read-only", str(ro), "runs_dir")
    finally:
        subprocess.run(["umount", str(ro)], check=False)


def test_full_disk_while_embedding_is_one_line_and_leaves_nothing(tmp_path, monkeypatch, capsys):
    """The pixels features of 400 8x8 images need 100 KB: checked before the memory map is made (no SIGBUS)."""
    small = tmp_path / "small"
    small.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(small)], capture_output=True)
    if r.returncode:
        pytest.skip(f"cannot mount a tmpfs here: {r.stderr.decode().strip()}")
    try:
        code, err = cli(monkeypatch, capsys, "embed", "--no-progress", *_sets(small, "data.limit=1600"))
        one_line_error(code, err, "not enough space", "features.partial.npy", "MB free", "runs_dir")
        assert not list(small.rglob("features.partial.npy")) and not list(small.rglob(".*.tmp"))
    finally:
        subprocess.run(["umount", str(small)], check=False)


def test_full_disk_during_a_checkpoint_names_the_folder_and_removes_the_partial_state(tmp_path, monkeypatch):
    """A save that fails (ENOSPC from the safetensors writer) removes ``.state.tmp`` and raises DiskSpaceError."""
    import safetensors.torch

    from diffprune.data import load_dataset
    from diffprune.diffusion import TrainConfig, train
    from diffprune.errors import user_message
    from diffprune.io import DiskSpaceError

    def full(*a, **k):
        raise OSError(errno.ENOSPC, "No space left on device", str(tmp_path / "t" / ".state.tmp" / "x"))

    monkeypatch.setattr(safetensors.torch, "save_file", full)
    monkeypatch.setattr("diffprune.diffusion.checkpoint.save_file", full)
    ds = load_dataset("digits", "train", resolution=8, limit=16)
    with pytest.raises(DiskSpaceError) as e:
        train(TrainConfig(preset="ddpm-tiny", steps=2, batch_size=8), ds, tmp_path / "t", progress=False)
    assert not (tmp_path / "t" / ".state.tmp").exists()
    msg = user_message(e.value)
    assert "cannot save the checkpoint of step 2" in msg and str(tmp_path / "t") in msg and "MB free" in msg


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A finished tiny train stage (arm random), whose checkpoint the resume cases damage."""
    from typer.testing import CliRunner

    from diffprune.cli import app

    runs = tmp_path_factory.mktemp("runs")
    r = CliRunner().invoke(app, ["train", "--no-progress", "--arm", "random", *_sets(runs)], catch_exceptions=False)
    assert r.exit_code == 0, r.output
    return runs


def _interrupted_copy(trained, tmp_path):
    """A copy of the run whose train stage looks killed after its last checkpoint (manifest gone)."""
    import shutil

    runs = tmp_path / "runs"
    shutil.copytree(trained, runs)
    (runs / "demo" / "train" / "random" / "manifest.json").unlink()
    return runs, runs / "demo" / "train" / "random" / "state"


def test_truncated_checkpoint_on_resume(trained, tmp_path, monkeypatch, capsys):
    runs, state = _interrupted_copy(trained, tmp_path)
    weights = state / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])
    code, err = cli(monkeypatch, capsys, "train", "--no-progress", "--arm", "random", *_sets(runs))
    one_line_error(code, err, str(state), "cannot be loaded", "--force")


def test_refused_pickle_in_a_checkpoint(trained, tmp_path, monkeypatch, capsys):
    runs, state = _interrupted_copy(trained, tmp_path)
    target = next(p for p in sorted(state.glob("*.bin")) + sorted(state.glob("*.pkl")))
    with open(target, "wb") as f:
        pickle.dump({"callable": os.system}, f)  # weights-only loading must refuse this
    code, err = cli(monkeypatch, capsys, "train", "--no-progress", "--arm", "random", *_sets(runs))
    one_line_error(code, err, str(state), "cannot be loaded")


def test_corrupt_trainer_state_names_the_file(trained, tmp_path, monkeypatch, capsys):
    runs, state = _interrupted_copy(trained, tmp_path)
    (state / "trainer_state.json").write_text('{"step": 4 "x"')
    code, err = cli(monkeypatch, capsys, "train", "--no-progress", "--arm", "random", *_sets(runs))
    one_line_error(code, err, str(state / "trainer_state.json"), "corrupt")


def test_npz_that_is_not_an_npz(tmp_path, monkeypatch, capsys):
    fake = tmp_path / "data.npz"
    fake.write_bytes(b"these are not arrays")
    code, err = cli(monkeypatch, capsys, "embed", "--no-progress", *_sets(tmp_path, f"data.spec=npz:{fake}"))
    msg = one_line_error(code, err, str(fake), "not an .npz")
    assert "allow_pickle" not in msg


def test_stage_locked_by_another_process(tmp_path, monkeypatch, capsys):
    """A second writer of a stage folder stops with one line naming the holder's pid."""
    folder = tmp_path / "demo" / "features" / "pixels-size112"  # the demo config embeds at size 112
    holder = _hold_lock(folder)
    try:
        code, err = cli(monkeypatch, capsys, "embed", "--no-progress", *_sets(tmp_path))
        one_line_error(code, err, f"pid {holder.pid}", "--wait")
    finally:
        holder.kill()
        holder.wait()


def _hold_lock(folder: Path) -> subprocess.Popen:
    code = ("import sys, time; from diffprune.io import folder_lock\n"
            "with folder_lock(sys.argv[1]):\n    print('locked', flush=True); time.sleep(60)\n")
    p = subprocess.Popen([sys.executable, "-c", code, str(folder)], stdout=subprocess.PIPE, text=True)
    assert p.stdout.readline().strip() == "locked"
    return p


def test_unexpected_error_is_one_line_with_exit_1_and_debug_keeps_the_traceback(tmp_path, monkeypatch, capsys):
    import diffprune.pipeline.runner as runner

    def boom(self):
        raise ZeroDivisionError("a bug")

    monkeypatch.setattr(runner.Pipeline, "embed", boom)
    code, err = cli(monkeypatch, capsys, "embed", "--no-progress", *_sets(tmp_path))
    assert code == 1 and "Traceback" not in err and "unexpected ZeroDivisionError: a bug" in err and "--debug" in err
    monkeypatch.setattr(sys, "argv", ["diffprune", "embed", "--debug", "--no-progress", *_sets(tmp_path)])
    with pytest.raises(ZeroDivisionError):
        main()
    os.environ.pop("DIFFPRUNE_DEBUG", None)


def test_pickled_bin_weights_need_an_explicit_opt_in(tmp_path, monkeypatch):
    from diffusers import UNet2DModel

    from diffprune.diffusion import load_model
    from diffprune.diffusion.loading import ModelError

    unet = UNet2DModel(sample_size=8, in_channels=1, out_channels=1, block_out_channels=(8, 8),
                       down_block_types=("DownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "UpBlock2D"),
                       norm_num_groups=4, layers_per_block=1)
    unet.save_pretrained(tmp_path / "m", safe_serialization=False)
    assert list((tmp_path / "m").glob("*.bin")) and not list((tmp_path / "m").glob("*.safetensors"))
    monkeypatch.delenv("DIFFPRUNE_ALLOW_PICKLE_WEIGHTS", raising=False)
    with pytest.raises(ModelError, match="DIFFPRUNE_ALLOW_PICKLE_WEIGHTS=1"):
        load_model(tmp_path / "m")
    monkeypatch.setenv("DIFFPRUNE_ALLOW_PICKLE_WEIGHTS", "1")
    model, _ = load_model(tmp_path / "m")
    assert sum(p.numel() for p in model.parameters()) == sum(p.numel() for p in unet.parameters())


def test_dinov2_hub_code_needs_trust_repo(monkeypatch):
    import builtins

    from diffprune.encoders.base import EncoderError
    from diffprune.encoders.hub_models import dinov2_vits14

    real_import = builtins.__import__

    def no_timm(name, *a, **k):
        if name == "timm":
            raise ImportError("no timm")
        return real_import(name, *a, **k)

    monkeypatch.setattr(builtins, "__import__", no_timm)
    with pytest.raises(EncoderError, match="embed.options.trust_repo=true"):
        dinov2_vits14()


def test_config_that_is_neither_a_file_nor_a_shipped_name(monkeypatch, capsys):
    one_line_error(*cli(monkeypatch, capsys, "embed", "-c", "cifar11-ddpm"), "cifar11-ddpm", "cifar10-ddpm, demo")
