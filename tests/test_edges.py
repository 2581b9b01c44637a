"""Third-party errors at lfr-ds's edges: out of memory and out of disk become one line naming the resource
and the setting to change; anything else (an lfr-ds bug above all) keeps its traceback."""

from __future__ import annotations

import dataclasses
import errno
import json
import subprocess
import sys

import numpy as np
import pytest
import torch
from clitools import assert_one_line_error

from lfr_ds import launch, resources, train
from lfr_ds.config import EngineConfig, ModelConfig
from lfr_ds.engine import DS_CONFIG_DIR, resolve_bf16
from lfr_ds.errors import UserError
from lfr_ds.launch import Geometry, check_memory, estimate_memory
from lfr_ds.model.gpt import count_parameters
from lfr_ds.resources import OutOfResource, out_of_disk, out_of_memory
from lfr_ds.train import _check_token_ids

ONE_RANK = Geometry(rank=0, world_size=1, local_rank=0, local_world_size=1)


def test_torch_cpu_allocation_failure_is_one_line():
    # 40 TB: the kernel refuses it at once, whatever the overcommit policy allows for sane sizes.
    with (
        pytest.raises(OutOfResource, match=r"^out of host memory building it; lower x$"),
        out_of_memory("building it", "lower x"),
    ):
        torch.empty(10**13)


def test_numpy_memory_error_is_one_line():
    with pytest.raises(OutOfResource, match="out of host memory"), out_of_memory("ranking", "lower lfr.centroids"):
        np.empty(10**14)


def test_gpu_out_of_memory_is_one_line():
    with (
        pytest.raises(OutOfResource, match=r"^out of GPU memory in a step; lower x$"),
        out_of_memory("in a step", "lower x"),
    ):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")


def test_other_runtime_errors_pass_through():
    with pytest.raises(RuntimeError, match="size of tensor a"), out_of_memory("stepping", "lower x"):
        torch.ones(2) + torch.ones(3)


def test_full_disk_names_the_place_and_the_setting():
    with pytest.raises(OutOfResource) as e, out_of_disk("/dev", "run_dir"), open("/dev/full", "wb") as f:
        f.write(b"x" * 8192)
        f.flush()
    assert str(e.value) == (
        "/dev: out of disk space (No space left on device); free space there, or set run_dir to a disk with room"
    )


def test_other_os_errors_pass_through(tmp_path):
    with pytest.raises(FileNotFoundError), out_of_disk(tmp_path, "run_dir"):
        (tmp_path / "missing" / "file").read_bytes()
    with pytest.raises(OSError) as e, out_of_disk(tmp_path, "run_dir"):
        raise OSError(errno.EIO, "I/O error")
    assert e.type is OSError


def test_lfr_train_names_run_dir_when_the_disk_fills(run_cli, tmp_path, monkeypatch):
    def fills_the_disk(cfg):
        yield
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(train, "train", fills_the_disk)
    result = run_cli(train.main, ["data.path=unused", f"run_dir={tmp_path / 'run'}"])
    assert_one_line_error(result, f"{tmp_path / 'run'}: out of disk space", "set run_dir to a disk with room")
    assert result.code == 2


def test_failed_torch_save_is_the_disk_only_when_it_is_full(tmp_path, monkeypatch):
    """torch.save to a path reports ENOSPC only as a RuntimeError from its writer: with room left on the
    disk that RuntimeError is someone's bug and must stay one; on a full disk it is the disk."""
    with pytest.raises(RuntimeError, match="writer failed"), out_of_disk(tmp_path, "run_dir"):
        raise RuntimeError("writer failed")
    monkeypatch.setattr(resources.shutil, "disk_usage", lambda p: type("U", (), {"free": 1024})())
    full = pytest.raises(OutOfResource, match=r"out of disk space \(0 MiB free\).*set run_dir")
    with full, out_of_disk(tmp_path / "not" / "yet", "run_dir"):
        raise RuntimeError("writer failed")


@pytest.mark.parametrize(
    "shape",
    [
        dict(preset="tiny"),
        dict(preset="gpt2-124m"),
        dict(preset="gpt2-1.5b"),
        dict(preset=None, num_layers=3, hidden_size=96, num_attention_heads=3, seq_length=40),
    ],
)
def test_parameter_count_from_the_shape_matches_the_built_model(shape):
    cfg = dataclasses.replace(ModelConfig(**shape), vocab_size=8000)
    assert cfg.num_parameters == count_parameters(cfg, 8000)


ZERO_CPU = {
    stage: json.loads((DS_CONFIG_DIR / f"zero{stage}_cpu.json").read_text())["zero_optimization"] for stage in (2, 3)
}


def _engine(stage: int, micro: int = 1) -> EngineConfig:
    return EngineConfig(zero_stage=stage, micro_batch_size=micro, global_batch_size=8 * micro)


def test_memory_check_refuses_a_model_that_cannot_fit_and_passes_one_that_can(capsys):
    huge = ModelConfig(
        preset=None, num_layers=1024, hidden_size=65536, num_attention_heads=64, seq_length=64, vocab_size=8000
    )
    with pytest.raises(OutOfResource) as e:
        check_memory(huge, _engine(2, micro=4), ONE_RANK, False, ZERO_CPU[2])
    message = str(e.value)
    assert "memory per rank" in message and "\n" not in message
    assert "use engine.zero_stage=3 (about" in message and "a smaller engine.micro_batch_size (now 4;" in message
    tiny = dataclasses.replace(ModelConfig(preset="tiny"), vocab_size=8000)
    estimate = check_memory(tiny, _engine(2), ONE_RANK, False, ZERO_CPU[2])
    # Rank 0 says what it predicts before any process group starts (a launcher reads it back after a SIGKILL).
    printed = capsys.readouterr().err
    assert printed.startswith(f"{launch.PREFLIGHT} {estimate.total / 2**30:.1f} GiB a rank")


def test_memory_fix_names_only_what_applies(monkeypatch):
    monkeypatch.setattr(launch, "_available_host_memory", lambda: 2**30)
    cfg = dataclasses.replace(ModelConfig(preset="gpt2-345m", seq_length=128), vocab_size=50257)
    with pytest.raises(OutOfResource) as e:
        check_memory(cfg, _engine(3), ONE_RANK, False, ZERO_CPU[3])
    assert "engine.zero_stage=3" not in str(e.value) and "micro_batch_size" not in str(e.value)
    assert "use more ranks (ZeRO-3 divides the model among them), or a smaller model.preset" in str(e.value)


def test_estimate_counts_the_whole_state_and_zero3_divides_it():
    cfg = dataclasses.replace(ModelConfig(preset="gpt2-345m", seq_length=128), vocab_size=50257)
    n = cfg.num_parameters
    z2 = {r: estimate_memory(cfg, 2, r, 1, False, ZERO_CPU[2]) for r in (1, 2)}
    z3 = {r: estimate_memory(cfg, 3, r, 1, False, ZERO_CPU[3]) for r in (1, 2)}
    # fp32 ZeRO-2 on one rank: weights, fp32 master, two gradient buffers, two Adam moments, one step temporary.
    assert z2[1].states == 7 * 4 * n
    # ZeRO-3 keeps only a partition of every one of them: half of it on 2 ranks (partitions are padded).
    assert z3[2].states == pytest.approx(z3[1].states / 2, abs=64)
    assert z3[2].total < z2[2].total < z2[1].total and z3[2].total < z3[1].total
    # The activations grow with the micro batch; nothing else does.
    bigger = estimate_memory(cfg, 3, 2, 8, False, ZERO_CPU[3])
    assert bigger.activations == pytest.approx(8 * z3[2].activations, rel=0.01)
    assert (bigger.states, bigger.buffers) == (z3[2].states, z3[2].buffers)


def test_train_refuses_a_model_that_cannot_fit_before_any_process_starts(
    monkeypatch, run_cli, tmp_path, webmix_dataset
):
    """lfr-train's preflight refuses before the process group (made to fail if reached) starts."""
    monkeypatch.setattr(launch, "_available_host_memory", lambda: 2 * 2**30)

    def started(*a, **k):
        raise AssertionError("a process group started")

    monkeypatch.setattr(train, "init_distributed", started)
    argv = [f"data.path={webmix_dataset}", f"run_dir={tmp_path / 'run'}", "model.preset=gpt2-774m"]
    result = run_cli(train.main, argv)
    assert_one_line_error(result, "model: 7", "M parameters need about", "use engine.zero_stage=3 (about")
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize(
    ("code", "output"),
    [
        (-9, ""),  # python -m lfr_ds.train, killed itself
        (1, "  exitcode  : -9 (pid: 123)\n  error_file: <N/A>\n  traceback : Signal 9 (SIGKILL) received by PID 123"),
        (247, "[ERROR] [launch.py:260:sigkill_handler] ['python', '-u', ...] exits with return code = -9"),
    ],
)
def test_a_rank_killed_by_signal_9_is_named_with_the_estimate(code, output):
    said = f"{launch.PREFLIGHT} 12.1 GiB a rank, 11.0 GiB free (runtime 0.6, ...)\n"
    line = launch.killed_by_oom(code, said + output)
    assert line.startswith("a rank was killed by signal 9 (SIGKILL), which usually means the kernel's OOM killer")
    assert "the preflight estimated 12.1 GiB a rank, 11.0 GiB free" in line and "\n" not in line
    assert launch.killed_by_oom(1, said + "Traceback: ValueError") is None


def test_bf16_on_a_gpu_without_it_is_refused_and_auto_picks_fp32(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda: False)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda *a: "Tesla V100-SXM2-32GB")
    with pytest.raises(UserError, match=r"^engine.precision: bf16, and Tesla V100-SXM2-32GB has no bf16; use fp32"):
        resolve_bf16("bf16")
    assert resolve_bf16("auto") is False


def test_token_ids_past_the_vocabulary_name_the_block_and_the_setting():
    tokens = np.array([[1, 2, 3], [4, 9000, 5]])
    _check_token_ids(tokens, np.array([17, 42]), 9001, "ds")  # fits
    with pytest.raises(
        UserError, match=r"^model.vocab_size 8192: block 42 of ds holds token id 9000; set model.vocab_size"
    ):
        _check_token_ids(tokens, np.array([17, 42]), 8192, "ds")


def test_a_bug_in_lfr_ds_still_shows_its_traceback(tmp_path):
    """An lfr-ds crash is not bad input: the CLI wrapper must not turn it into a tidy line."""
    code = (
        "import lfr_ds.train as t\n"
        "def broken(*a, **k):\n"
        "    raise ZeroDivisionError('injected bug')\n"
        "t.launch_env = broken\n"
        f"t.main(['data.path=unused', 'run_dir={tmp_path}/run'])\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 1
    assert "Traceback (most recent call last)" in proc.stderr
    assert "ZeroDivisionError: injected bug" in proc.stderr
    assert "error: " not in proc.stderr.splitlines()[-1]
