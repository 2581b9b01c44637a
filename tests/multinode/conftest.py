"""One small LFR job (learn for 10 steps, then focus) run uninterrupted on 2 ranks and on 1, once per
session: the references the two-node, elastic-resume and fault-injection tests compare against."""

from __future__ import annotations

import pytest
from corpora import SMALL_MODEL, planted
from launch import launch

STEPS = 20
SCHEDULE = "learn:10,focus:*@0.5"


@pytest.fixture(scope="session")
def small_data(tmp_path_factory) -> str:
    """~840 blocks of 65 tokens (planted corpus, 60 documents)."""
    return planted(tmp_path_factory, 60, "mn_data")


@pytest.fixture(scope="session")
def job(small_data):
    """``job(run_dir, **overrides)``: the job's lfr-train arguments. Global batch 16 in micro-batches of 8
    (2 ranks x 1, or 1 rank x 2 accumulated), a checkpoint every 5 steps."""

    def overrides(run_dir, data=small_data, **extra) -> list[str]:
        cfg = {
            "data.path": data,
            "run_dir": run_dir,
            "steps": STEPS,
            "lfr.schedule": SCHEDULE,
            "engine.micro_batch_size": 8,
            "engine.global_batch_size": 16,
            "checkpoint.interval": 5,
            "checkpoint.keep_last": 10,
            "log.trace_blocks": "true",
            "log.progress_bar": "false",
            **extra,
        }
        return [*SMALL_MODEL, *(f"{k}={v}" for k, v in cfg.items())]

    return overrides


@pytest.fixture(scope="session")
def ref2(job, tmp_path_factory):
    """The job on one node, 2 ranks under torchrun."""
    run = tmp_path_factory.mktemp("ref2") / "run"
    launch(job(run), nproc=2)
    return run


@pytest.fixture(scope="session")
def ref1(job, tmp_path_factory):
    """The job in one process."""
    run = tmp_path_factory.mktemp("ref1") / "run"
    launch(job(run), nproc=1, launcher="python")
    return run
