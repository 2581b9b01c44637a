"""Training runs shared by the engine tests: each is launched once per session (they cost ~30-60 s)."""

from __future__ import annotations

import pytest
from launch import base_overrides, launch


@pytest.fixture(scope="session")
def zero2_run(tmp_path_factory, webmix_dataset):
    """2 gloo ranks under torchrun, ZeRO-2."""
    run_dir = tmp_path_factory.mktemp("zero2") / "run"
    proc = launch(base_overrides(webmix_dataset, run_dir, **{"engine.zero_stage": 2}), nproc=2, launcher="torchrun")
    return run_dir, proc


@pytest.fixture(scope="session")
def zero3_run(tmp_path_factory, webmix_dataset):
    """2 ranks under the deepspeed launcher, ZeRO-3."""
    run_dir = tmp_path_factory.mktemp("zero3") / "run"
    proc = launch(base_overrides(webmix_dataset, run_dir, **{"engine.zero_stage": 3}), nproc=2, launcher="deepspeed")
    return run_dir, proc
