"""bench/faults.py in small: SIGKILL preprocessing once and training three times (mid-index-rewrite, from
outside at a random moment, and between a checkpoint's rename and ``latest``), resume each time, and end
byte-identical to the uninterrupted runs. The harness is ``tests/faultkit.py``."""

from __future__ import annotations

import os
import sys
from pathlib import Path

from faultkit import (
    TRAINING_STARTED,
    Kill,
    checkpoints_consistent,
    compare_training,
    drive,
    launch_once,
    preprocess_outputs,
)
from launch import BIN

from lfr_ds.data.preprocess import preprocess

ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


def test_killed_preprocess_publishes_nothing_and_reruns_identically(small_data, tmp_path):
    src = Path(small_data).parent
    corpus, tok, prefix = str(src / "planted.jsonl"), str(src / "tok.model"), str(tmp_path / "data")
    argv = [str(BIN / "lfr-preprocess"), corpus, "-t", tok, "-j", "1", "--no-progress", "-o", prefix]
    # Killed after its one chunk reached the temp files, before anything is renamed into place.
    killed = launch_once(
        argv,
        env=ENV,
        log=tmp_path / "kill.log",
        crash=Kill("preprocess", 1),
        timer=None,
        started=None,
        timeout=300,
    )
    assert killed == Kill("preprocess", 1)
    assert preprocess_outputs(prefix) == {}
    preprocess([corpus], prefix, tok, progress=False)  # the rerun (in-process: the CLI's start-up is 5-10 s)
    assert preprocess_outputs(prefix) == preprocess_outputs(small_data)


def test_killed_training_resumes_to_the_same_model_table_and_index(job, ref1, tmp_path):
    # In the order the job meets them: mid-rewrite of Focus's index at step 10 (resume from 10); SIGKILL to
    # the whole job 50 ms into the next run; checkpoint 15 renamed, `latest` not yet (resume from 10 again).
    plan = [Kill("rewrite", 1), Kill("timer", 0.05), Kill("publish", 15)]
    run = tmp_path / "run"
    kills, consistent = drive(
        [sys.executable, "-m", "lfr_ds.train", *job(run)],
        plan,
        env=ENV,
        logs=tmp_path / "logs",
        started=TRAINING_STARTED,
        after_kill=lambda k: checkpoints_consistent(run),
    )
    assert (kills, consistent) == (3, 3)
    assert compare_training(ref1, run) == dict.fromkeys(["model", "loss_table", "index_files", "step_losses"], True)
