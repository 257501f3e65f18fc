"""diffprune.runtime (devices, launch world, stop-on-signal, progress) and diffprune.hub (the weights policy)."""
import os
import signal

import numpy as np
import pytest
import torch

from diffprune import hub
from diffprune.config import ConfigError, Device, StrictModel, validate_config
from diffprune.diffusion.batches import WeightsError, class_weight_vector
from diffprune.reweighting import ClassWeightsError, validate_class_weights
from diffprune.runtime import (
    WEIGHT_SUM_TOLERANCE,
    DeviceError,
    StopOnSignal,
    available_cpus,
    configure_threads,
    launch_world,
    progress_bar,
    resolve_device,
)


class _WithDevice(StrictModel):
    device: Device = "auto"


@pytest.mark.parametrize("name", ["auto", "cpu", "cuda", "cuda:1", "mps"])
def test_device_type_accepts_the_documented_spellings(name):
    assert validate_config(_WithDevice, {"device": name}).device == name


@pytest.mark.parametrize("name", ["gpu", "cuda:", "cuda:x", "CPU", "cuda1"])
def test_device_type_names_the_field_and_the_choices(name):
    with pytest.raises(ConfigError, match=r"device: got .*allowed: 'auto'.*'cuda:N'"):
        validate_config(_WithDevice, {"device": name})


def test_resolve_device_auto_and_explicit(monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    want = "cuda" if torch.cuda.is_available() else "cpu"
    assert resolve_device("auto").type == want and resolve_device(None).type == want
    assert resolve_device("cpu") == torch.device("cpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(DeviceError, match="'cuda:0' requested but CUDA is not available"):
        resolve_device("cuda:0")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    with pytest.raises(DeviceError, match="has 2 CUDA device"):
        resolve_device("cuda:2")


def test_launch_world_reads_the_launcher_variables(monkeypatch):
    monkeypatch.setenv("RANK", "3")
    monkeypatch.setenv("WORLD_SIZE", "4")
    assert launch_world() == (3, 4)
    monkeypatch.delenv("RANK")
    monkeypatch.delenv("WORLD_SIZE")
    assert launch_world() == (0, 1)


def test_stop_on_signal_sets_the_flag_then_restores_the_handler():
    before = signal.getsignal(signal.SIGTERM)
    with StopOnSignal() as stop:
        assert not stop.requested
        os.kill(os.getpid(), signal.SIGTERM)  # delivered to the main thread before the next bytecode
        assert stop.requested
        assert signal.getsignal(signal.SIGTERM) == before  # a second SIGTERM would act as without us
    assert signal.getsignal(signal.SIGTERM) == before and signal.getsignal(signal.SIGINT) is not None


def test_a_disabled_progress_bar_still_counts():
    with progress_bar("loss {task.fields[loss]:.2f}", enabled=False, rate="img/s") as bar:
        task = bar.add_task("x", total=5, loss=0.0)
        bar.update(task, advance=3, loss=1.5)
        assert bar.tasks[0].completed == 3 and bar.tasks[0].fields["loss"] == 1.5


@pytest.mark.parametrize("total", [1 - 9e-4, 1 + 9e-4, 1 - 1.1e-3, 1 + 1.1e-3])
def test_one_sum_tolerance_for_files_and_the_trainer(total):
    """The trainer's check (``class_weight_vector``) and the file check (``validate_class_weights``) accept and
    refuse the same sums; the trainer divides them by their sum, the file check returns them as written."""
    weights = {"a": 0.25 * total, "b": 0.75 * total}
    if abs(total - 1) <= WEIGHT_SUM_TOLERANCE:
        np.testing.assert_allclose(class_weight_vector(weights, ["a", "b"]), [0.25, 0.75], rtol=1e-12)
        assert validate_class_weights(weights, ["a", "b"]) == weights
    else:
        with pytest.raises(WeightsError, match="sum to 1"):
            class_weight_vector(weights, ["a", "b"])
        with pytest.raises(ClassWeightsError, match="sum to 1"):
            validate_class_weights(weights, ["a", "b"])


def test_hub_refuses_pickles_unless_allowed(tmp_path, monkeypatch):
    from diffusers import AutoencoderKL

    from diffprune.data.latents import tiny_random_vae

    tiny_random_vae(1).save_pretrained(tmp_path / "pickled", safe_serialization=False)
    monkeypatch.delenv(hub.PICKLE_ENV, raising=False)
    with pytest.raises(ValueError, match="DIFFPRUNE_ALLOW_PICKLE_WEIGHTS=1"):
        hub.from_pretrained(AutoencoderKL, tmp_path / "pickled", ValueError)
    monkeypatch.setenv(hub.PICKLE_ENV, "1")
    vae = hub.from_pretrained(AutoencoderKL, tmp_path / "pickled", ValueError)
    ref = tiny_random_vae(1).state_dict()
    assert all(torch.equal(v, ref[k]) for k, v in vae.state_dict().items())


def test_hub_snapshot_asks_for_safetensors_and_configs_only(monkeypatch, tmp_path):
    import huggingface_hub

    calls = []

    def fake(repo_id, allow_patterns):
        calls.append(list(allow_patterns))
        return str(tmp_path)  # an empty snapshot: no safetensors in the repo

    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake)
    monkeypatch.delenv(hub.PICKLE_ENV, raising=False)
    hub.snapshot("owner/model")
    assert calls == [["*.json", "*.safetensors"]]
    monkeypatch.setenv(hub.PICKLE_ENV, "1")
    calls.clear()
    hub.snapshot("owner/model", ["config.json", "vae/diffusion_pytorch_model.safetensors"])
    assert calls[1] == ["config.json", "vae/diffusion_pytorch_model.safetensors", "vae/diffusion_pytorch_model.bin"]
    with pytest.raises(ValueError, match="neither an existing directory nor a hub id"):
        hub.snapshot("./local/dir")


def test_cli_shows_where_an_interrupted_stage_checkpointed(monkeypatch, capsys):
    from diffprune import cli
    from diffprune.diffusion import TrainingInterrupted

    def invoke(app, args, console):
        raise TrainingInterrupted("training stopped by signal at step 3/6; checkpoint saved in runs/x/state [a]")

    monkeypatch.setattr(cli, "invoke", invoke)
    monkeypatch.setattr(cli.sys, "argv", ["diffprune"])
    with pytest.raises(SystemExit) as info:
        cli.main()
    out = " ".join(capsys.readouterr().err.split())  # the console writes to stderr, wrapped
    assert info.value.code == 130 and "checkpoint saved in runs/x/state [a]" in out and "Interrupted." in out


@pytest.mark.parametrize("files, expected", [
    ({"cpu.max": "150000 100000\n"}, 1),  # v2: 1.5 CPUs' worth of quota -> 1 thread
    ({"cpu.max": "max 100000\n"}, None),  # v2: no quota
    ({"cpu/cpu.cfs_quota_us": "300000\n", "cpu/cpu.cfs_period_us": "100000\n"}, 3),  # v1
    ({"cpu/cpu.cfs_quota_us": "-1\n", "cpu/cpu.cfs_period_us": "100000\n"}, None),  # v1: no quota
    ({}, None),
])
def test_available_cpus_is_the_affinity_capped_by_the_cgroup_quota(tmp_path, files, expected):
    for name, text in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    affinity = len(os.sched_getaffinity(0))
    assert available_cpus(str(tmp_path)) == (affinity if expected is None else min(affinity, expected))


def test_configure_threads_follows_omp_num_threads_else_the_available_cpus(monkeypatch):
    before = torch.get_num_threads()
    try:
        monkeypatch.setenv("OMP_NUM_THREADS", "1")
        assert configure_threads() == 1 == torch.get_num_threads()
        monkeypatch.delenv("OMP_NUM_THREADS")
        assert configure_threads() == available_cpus() == torch.get_num_threads()
    finally:
        torch.set_num_threads(before)


def test_importing_diffprune_first_makes_openmp_threads_wait_passively():
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    code = "import diffprune, os, torch; print(os.environ['OMP_WAIT_POLICY'])"
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "PASSIVE"
