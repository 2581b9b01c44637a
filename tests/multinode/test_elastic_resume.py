"""Elastic resume: a checkpoint written by 2 data-parallel ranks resumes on 1, and one written by 1 on 2.

DeepSpeed refuses to load ZeRO shards into another number of ranks, so lfr-ds converts the checkpoint to
DeepSpeed's universal format (per-parameter fp32 weights and Adam moments) and lets DeepSpeed re-partition
it. The global data order never depends on the rank count, so the resumed run trains on exactly the
uninterrupted run's blocks, step for step. Its losses agree to float tolerance: the gradient of a global
batch is summed in another order on another number of ranks (here it happens to come out bit-identical,
with two micro-batches per step either way).
"""

from __future__ import annotations

import numpy as np
from launch import copy_run, launch, read_trace


def _check_resumed(reference, resumed, proc, at_step: int, ranks: int) -> None:
    assert f"resumed from {resumed / 'checkpoints'}/step_{at_step:08d} at step {at_step}" in proc.stderr
    assert f"lfr-ds: {ranks} rank(s)" in proc.stderr
    want, got = read_trace(reference), read_trace(resumed)
    assert [t["step"] for t in got] == [t["step"] for t in want]
    assert [t["ids"] for t in got] == [t["ids"] for t in want]
    np.testing.assert_allclose([t["losses"] for t in got], [t["losses"] for t in want], rtol=1e-4, atol=1e-5)
    ckpts = resumed / "checkpoints"
    assert not (ckpts / ".universal").exists()  # the conversion's scratch space is gone
    last = ckpts / (ckpts / "latest").read_text()
    assert sorted(p.name for p in (last / "lfr").glob("rng_rank*.npz")) == [
        f"rng_rank{r:05d}.npz" for r in range(ranks)
    ]


def test_two_ranks_resume_on_one(job, ref2, tmp_path):
    """From the checkpoint at the Focus boundary: Focus's index is rebuilt from the restored loss table."""
    run = copy_run(ref2, tmp_path / "run", "step_00000010")
    proc = launch(job(run), nproc=1, launcher="python")
    _check_resumed(ref2, run, proc, 10, 1)


def test_one_rank_resumes_on_two(job, ref1, tmp_path):
    """From a checkpoint in the middle of Focus: the phase's index file is reused as written."""
    run = copy_run(ref1, tmp_path / "run", "step_00000015")
    proc = launch(job(run), nproc=2)
    _check_resumed(ref1, run, proc, 15, 2)
