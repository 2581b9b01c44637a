"""A ``kp`` Focus resolves its length at its boundary, and a run killed after that boundary resumes on the
resolved schedule, not the provisional one."""

from __future__ import annotations

import json

import numpy as np
from corpora import SMALL_MODEL
from launch import launch, read_trace

from lfr_ds.data.sample_index import read_sample_index
from lfr_ds.lfr.schedule import kept_pass_steps

# 390 blocks, 32 a step (13 steps a pass). Learn sees 6 x 32 = 192 blocks; Focus drops half of those and
# keeps the 198 never seen, so it keeps 294 blocks, not the provisional (1 - 0.5) x 390: its 1kp is
# ceil(294 / 32) = 10 steps, not the provisional ceil(0.5 x 13) = 7, and the Review absorbs the difference.
SCHEDULE, STEPS, G = "learn:6,focus:1kp@0.5,review:*", 24, 32


def test_kept_passes_resolve_at_the_boundary_and_survive_a_resume(planted_tiny, tmp_path):
    run = tmp_path / "run"
    args = [
        *SMALL_MODEL,
        f"data.path={planted_tiny}",
        f"run_dir={run}",
        f"steps={STEPS}",
        f"lfr.schedule={SCHEDULE}",
        "engine.micro_batch_size=32",
        f"engine.global_batch_size={G}",
        "checkpoint.interval=4",
        "checkpoint.keep_last=20",
        "log.trace_blocks=true",
    ]
    # Killed in the Review after the resolved boundary (step 16); resumes from step 20's checkpoint. On the
    # provisional schedule the Review would start at step 13 and step 21 would read other batches.
    proc = launch(args, nproc=1, launcher="python", check=False, extra_env={"LFR_CRASH_AT": "step:22"})
    assert proc.returncode != 0
    launch(args, nproc=1, launcher="python")

    focus = json.loads((run / "index" / "phase_001_focus.json").read_text())
    assert focus["provisional_steps"] == 7 and focus["kept_passes"] == 1.0
    assert focus["num_blocks"] == 390 and focus["eligible"] == 6 * G
    assert focus["kept"] == 390 - 96 and focus["steps"] == kept_pass_steps(1.0, focus["kept"], G) == 10
    assert focus["length"] == 10 * G
    review_order, review = read_sample_index(run / "index" / "phase_002_review.npy")
    assert (review.start_step, review.steps) == (16, STEPS - 16)
    state = json.loads((run / "checkpoints" / f"step_{STEPS:08d}" / "lfr" / "state.json").read_text())
    assert [(p["start"], p["steps"]) for p in state["schedule"]] == [(0, 6), (6, 10), (16, 8)]

    trace = read_trace(run)
    assert [t["step"] for t in trace] == list(range(1, STEPS + 1))  # the run's total is unchanged
    for t in trace[20:]:  # steps 21-24, trained after the resume
        s = t["step"] - 1 - 16
        assert t["ids"] == np.asarray(review_order[s * G : (s + 1) * G]).tolist(), t["step"]
