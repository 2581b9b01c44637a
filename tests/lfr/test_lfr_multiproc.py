"""LFR on 2 gloo ranks: the gathered loss table, index distribution, and kill-and-resume anywhere.

One 2-rank run is the reference. A second run of the same config uses broadcast distribution and is
killed (SIGKILL) three times: while rank 0 writes the sample index at a phase boundary (so it resumes
from the boundary's checkpoint), in the middle of a phase, and while saving the final checkpoint. Each
time it resumes from its latest complete checkpoint, and it must end with the same index files, loss
table and per-step losses as the reference, bit for bit.
"""

from __future__ import annotations

import numpy as np
import pytest
from corpora import SMALL_MODEL
from launch import launch, read_trace

# ~420 blocks / 32 per step = 13 steps a pass. Phases: learn 0-13, focus 13-17, review 17-31, focus 31-40.
SCHEDULE = "learn:13,focus:4@0.5,review,focus:*@0.7"
STEPS = 40


def _overrides(data, run_dir, **extra) -> list[str]:
    cfg = {
        "data.path": data,
        "run_dir": run_dir,
        "steps": STEPS,
        "lfr.schedule": SCHEDULE,
        "engine.micro_batch_size": 16,
        "engine.global_batch_size": 32,
        "checkpoint.interval": 13,
        "checkpoint.keep_last": 20,
        "log.trace_blocks": "true",
        **extra,
    }
    return [*SMALL_MODEL, *(f"{k}={v}" for k, v in cfg.items())]


@pytest.fixture(scope="module")
def reference(planted_tiny, tmp_path_factory):
    run = tmp_path_factory.mktemp("lfr2") / "run"
    launch(_overrides(planted_tiny, run), nproc=2)
    return run


def _arrays(ckpt):
    with np.load(ckpt / "lfr" / "arrays.npz") as z:
        return {k: z[k] for k in z.files}


def test_schedule_ran_every_phase(reference):
    names = sorted(p.name for p in (reference / "index").glob("phase_*.json"))
    assert names == ["phase_000_learn.json", "phase_001_focus.json", "phase_002_review.json", "phase_003_focus.json"]
    assert [t["step"] for t in read_trace(reference)] == list(range(1, STEPS + 1))
    assert (reference / "checkpoints" / "latest").read_text() == f"step_{STEPS:08d}"
    assert not list((reference / "checkpoints").glob("*.partial"))


def test_gathered_table_equals_one_process_run(reference, planted_tiny, tmp_path):
    """After Learn (step 13), the table gathered over 2 ranks equals a 1-process run's: the same blocks
    seen at the same steps, and losses equal to float tolerance (only the all-reduce order differs)."""
    one = tmp_path / "one"
    proc = launch(
        _overrides(planted_tiny, one, **{"engine.micro_batch_size": 32}),
        nproc=1,
        launcher="python",
        extra_env={"LFR_CRASH_AT": "step:14"},
        check=False,
    )  # stop once Learn's checkpoint is written
    assert proc.returncode != 0
    a, b = _arrays(reference / "checkpoints" / "step_00000013"), _arrays(one / "checkpoints" / "step_00000013")
    for k in ("seen", "last_step"):
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)
    assert (a["seen"] > 0).all()  # Learn was one full pass
    for k in ("loss", "ref", "phase_loss"):
        np.testing.assert_allclose(a[k].astype(np.float32), b[k].astype(np.float32), rtol=2e-3, atol=2e-3, err_msg=k)


def test_kill_and_resume_anywhere_is_identical(reference, planted_tiny, tmp_path):
    run = tmp_path / "run"
    args = _overrides(planted_tiny, run, **{"lfr.distribute": "broadcast"})
    # At the Learn/Focus boundary during the rewrite (resumes from the boundary's checkpoint), in the middle
    # of the Review, and during the final save.
    for crash in ("rewrite:1", "step:22", "save:40"):
        proc = launch(args, nproc=2, check=False, extra_env={"LFR_CRASH_AT": crash})
        assert proc.returncode != 0, f"the run should have been killed at {crash}"
    launch(args, nproc=2)

    for p in sorted((reference / "index").glob("phase_*")):
        assert (run / "index" / p.name).read_bytes() == p.read_bytes(), p.name
        if p.suffix == ".npy" and not p.name.endswith(".kept.npy"):  # broadcast: rank 1 read its own, identical copy
            assert (run / "index" / "rank1" / p.name).read_bytes() == p.read_bytes()
    final = f"step_{STEPS:08d}"
    ref, got = _arrays(reference / "checkpoints" / final), _arrays(run / "checkpoints" / final)
    assert ref.keys() == got.keys()
    for k in ref:
        np.testing.assert_array_equal(got[k], ref[k], err_msg=k)
    assert [t["losses"] for t in read_trace(run)] == [t["losses"] for t in read_trace(reference)]
