"""ZeRO-3 builds the model partitioned (DeepSpeed's zero.Init): every rank draws the same initial weights and
keeps its share, so the gathered weights equal an unpartitioned build's, bit for bit, on 1 and on 2 ranks."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest
from launch import BIN

SCRIPT = Path(__file__).with_name("zero3_build.py")


@pytest.fixture(scope="module")
def builds(tmp_path_factory) -> dict[int, dict]:
    out = {}
    for ranks in (1, 2):
        path = tmp_path_factory.mktemp(f"build{ranks}") / "result.json"
        cmd = [str(BIN / "torchrun"), "--standalone", f"--nproc-per-node={ranks}", str(SCRIPT), str(path)]
        env = {**os.environ, "OMP_NUM_THREADS": "1"}
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env)
        assert proc.returncode == 0, proc.stderr[-4000:]
        out[ranks] = json.loads(path.read_text())
    return out


@pytest.mark.parametrize("ranks", [1, 2])
def test_partitioned_build_equals_the_whole_build_bitwise(builds, ranks):
    got = builds[ranks]
    assert got["names"] == got["whole_names"]
    assert got["mismatched"] == []


def test_one_and_two_ranks_build_the_same_weights(builds):
    assert builds[1]["digest"] == builds[2]["digest"]


def test_two_ranks_each_hold_half_the_parameters(builds):
    full, mine = builds[2]["counts"]
    assert full == builds[2]["whole_counts"][0] == builds[1]["counts"][0]
    # Each partition is ceil(numel / 2): half the model, plus at most one element of padding a parameter.
    assert full / 2 <= mine <= full / 2 + len(builds[2]["names"])
    assert builds[1]["counts"] == [full, full]
