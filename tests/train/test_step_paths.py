"""Issue 28's faster step trains on the same batches to the same losses, bit for bit, as the plain path it
replaces, both run here side by side: the batches read ahead (``data.prefetch``) or each step's own."""

from __future__ import annotations

import pytest
from corpora import SMALL_MODEL, planted
from launch import launch, read_trace


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> str:
    return planted(tmp_path_factory, 30, "planted_step_paths")  # ~420 blocks: 13 steps an epoch


def _run(corpus: str, run_dir, *extra: str) -> list[dict]:
    launch(
        [
            f"data.path={corpus}",
            f"run_dir={run_dir}",
            *SMALL_MODEL,
            "engine.micro_batch_size=16",  # 2 micro-batches a step: accumulation reads a step's batches as one
            "engine.global_batch_size=32",
            "steps=14",
            "lfr.schedule=learn:8,focus:*@0.5",  # a phase boundary: a new sampler mid-run
            "checkpoint.interval=0",
            "log.trace_blocks=true",
            *extra,
        ],
        nproc=1,
        launcher="python",
    )
    return read_trace(run_dir)


def test_prefetched_batches_train_to_the_same_losses(corpus, tmp_path):
    ahead = _run(corpus, tmp_path / "ahead")
    own = _run(corpus, tmp_path / "own", "data.prefetch=false")
    assert len(ahead) == 14
    assert [t["ids"] for t in ahead] == [t["ids"] for t in own]
    assert [t["losses"] for t in ahead] == [t["losses"] for t in own]


def test_a_compare_run_recorded_before_data_prefetch_existed_is_reused():
    from lfr_ds.compare.runs import identity

    def rec(**data) -> dict:
        config = {"run_dir": "/out/lfr-seed1", "data": {"seed": 1} | data, "lfr": {"schedule": "recipe"}, "model": {}}
        return {"config": config, "corpus": "abc", "threads": 2}

    assert identity(rec()) == identity(rec(prefetch=True)) == identity(rec(prefetch=False))
    assert identity(rec(seed=2)) != identity(rec())
