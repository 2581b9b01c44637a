"""The launch scripts and their configs: every preset config resolves, and the GPU check runs in CPU mode."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from lfr_ds.config import load_config
from lfr_ds.engine import build_ds_config

ROOT = Path(__file__).resolve().parents[2]
SCRIPTS = ROOT / "launch_scripts"


@pytest.mark.parametrize("preset", ["gpt2-124m", "gpt2-345m", "gpt2-774m", "gpt2-1.5b"])
def test_preset_configs_resolve_for_a_node_of_8(preset):
    cfg = load_config(str(SCRIPTS / "configs" / f"{preset}.yaml"), ["data.path=x"])
    assert cfg.model.preset == preset and cfg.model.seq_length == 1024
    ds = build_ds_config(cfg, world_size=8, bf16=True)
    assert ds["train_batch_size"] == ds["train_micro_batch_size_per_gpu"] * 8 * ds["gradient_accumulation_steps"] == 512
    assert ds["bf16"]["enabled"] and ds["zero_optimization"]["stage"] == cfg.engine.zero_stage
    assert (SCRIPTS / f"{preset}.sh").is_file() and (SCRIPTS / f"{preset}_multinode.sh").is_file()


def test_scripts_parse():
    for script in SCRIPTS.glob("*.sh"):
        subprocess.run(["bash", "-n", str(script)], check=True)


def test_multinode_script_names_what_is_missing():
    proc = subprocess.run(
        ["bash", str(SCRIPTS / "gpt2-124m_multinode.sh")],
        capture_output=True,
        text=True,
        env={"PATH": "/usr/bin:/bin", "DATA": "x"},
    )
    assert proc.returncode != 0 and "HOSTFILE" in proc.stderr


def _gpu_check(*args: str, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(SCRIPTS / "gpu_check.sh"), *args],
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "PYTHON": sys.executable, **env},
    )


def test_gpu_check_cpu_mode_prints_the_table():
    proc = _gpu_check("--cpu")
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = proc.stdout.strip().splitlines()
    result = json.loads(lines[-1])
    runs = [(r["preset"], r["zero"], r["sampling"]) for r in result["results"]]
    assert runs == [("tiny", 2, "random"), ("tiny", 2, "lfr"), ("tiny", 3, "random")]
    for r in result["results"]:
        assert r["tokens_per_s"] > 0 and r["tflops_per_device"] > 0 and r["peak_memory_gib"] > 0
        assert r["estimate_gib"] > 0 and r["estimate_ratio"] > 0
        assert r["mfu_percent"] is None  # no peak on CPU
    assert sum("tok/s" in line and "MFU" in line for line in lines) == 3
    overhead = result["lfr_overhead"]
    assert overhead["random_run_s"] > 0 and overhead["lfr_run_s"] > 0
    ratio = overhead["lfr_run_s"] / overhead["random_run_s"]
    assert overhead["overhead_percent"] == pytest.approx(100 * (ratio - 1), abs=0.1)


def test_gpu_check_without_a_gpu_fails_in_one_line():
    proc = _gpu_check("--preflight", CUDA_VISIBLE_DEVICES="")
    assert proc.returncode == 2
    assert proc.stderr.startswith("error: no CUDA GPU visible to torch ") and len(proc.stderr.splitlines()) == 1
