"""Third-party errors at lfr-ds's edges: out of memory and out of disk become one line naming the resource
and the setting to change; anything else (an lfr-ds bug above all) keeps its traceback."""

from __future__ import annotations

import dataclasses
import errno
import subprocess
import sys

import numpy as np
import pytest
import torch
from clitools import assert_one_line_error

from lfr_ds import launch, resources, train
from lfr_ds.config import ModelConfig
from lfr_ds.engine import resolve_bf16
from lfr_ds.errors import UserError
from lfr_ds.launch import Geometry, check_memory
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


def test_memory_check_refuses_a_model_that_cannot_fit_and_passes_one_that_can():
    huge = ModelConfig(
        preset=None, num_layers=1024, hidden_size=65536, num_attention_heads=64, seq_length=64, vocab_size=8000
    )
    with pytest.raises(OutOfResource) as e:
        check_memory(huge, 2, ONE_RANK, bf16=False)
    assert "memory per rank" in str(e.value) and "engine.zero_stage=3" in str(e.value)
    check_memory(dataclasses.replace(ModelConfig(preset="tiny"), vocab_size=8000), 2, ONE_RANK, bf16=False)


def test_zero3_and_more_ranks_need_less_memory_per_rank(monkeypatch):
    cfg = dataclasses.replace(ModelConfig(preset="gpt2-124m"), vocab_size=50257)
    needed = {}
    for stage, ranks in ((2, 1), (2, 8), (3, 8)):
        monkeypatch.setattr(launch, "_available_host_memory", lambda: 0)
        with pytest.raises(OutOfResource) as e:
            check_memory(cfg, stage, dataclasses.replace(ONE_RANK, world_size=ranks, local_world_size=1), bf16=False)
        needed[stage, ranks] = float(str(e.value).split("at least ")[1].split(" GiB")[0])
    # fp32 ZeRO-2 on one rank: 16 bytes a parameter (weights, gradients, two Adam moments).
    assert needed[2, 1] == pytest.approx(16 * cfg.num_parameters / 2**30, abs=0.06)
    assert needed[2, 1] > needed[2, 8] > needed[3, 8]


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
