"""The training guard in real 2-rank gloo runs: one rank's NaN stops every rank at that step, before any
checkpoint of it; a planted spike under ``rewind`` reloads the checkpoint, skips the batches, finishes,
and repeats bit for bit, also when killed mid-rewind; issue 27's diverging LFR run warns in its first phase,
its Focus drops nothing, and it stops (at once under ``stop``, once dead under ``warn``) instead of exiting 0."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from corpora import SMALL_MODEL, planted
from faultkit import Kill, compare_training, launch_once
from launch import BIN, free_port, launch, read_trace
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from lfr_ds import report
from lfr_ds.eval.checkpoint import consolidated_state_dict, find_checkpoint_dir

ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
SPIKE = {"LFR_FAULT_LOSS": "spike:8"}
# Learn for 10 steps then Focus: a rewind from step 8 to checkpoint 5 re-enters the boundary at 10 with a
# loss table that lacks the skipped batches, so Focus's sample index is rebuilt from it.
REWIND = {
    "train.on_spike": "rewind",
    "train.rewind_skip": 2,
    "train.spike_warmup": 3,
    "train.spike_window": 5,
    "train.diverge_margin": 1000,  # the planted 10x loss is far above ln V: these runs test the spike rule
    "log.tensorboard": "true",
}


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> str:
    return planted(tmp_path_factory, 40, "guard_data")


def job(data: str, run_dir: Path, **extra) -> list[str]:
    cfg = {
        "data.path": data,
        "run_dir": run_dir,
        "steps": 14,
        "lfr.schedule": "learn:10,focus:*@0.5",
        "engine.micro_batch_size": 8,
        "engine.global_batch_size": 16,
        "checkpoint.interval": 5,
        "checkpoint.keep_last": 10,
        "log.interval": 2,
        "log.trace_blocks": "true",
        "log.progress_bar": "false",
        **extra,
    }
    return [*SMALL_MODEL, *(f"{k}={v}" for k, v in cfg.items())]


def two_ranks(argv: list[str], env: dict) -> list[subprocess.CompletedProcess]:
    """Both ranks as separate processes (as a launcher starts them), so each one's exit status is seen."""
    port = str(free_port())
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "lfr_ds.train", *argv],
            env={
                **env,
                "RANK": str(r),
                "LOCAL_RANK": str(r),
                "WORLD_SIZE": "2",
                "LOCAL_WORLD_SIZE": "2",
                "MASTER_ADDR": "127.0.0.1",
                "MASTER_PORT": port,
            },
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for r in range(2)
    ]
    out = [p.communicate(timeout=300) for p in procs]
    return [subprocess.CompletedProcess(p.args, p.returncode, o, e) for p, (o, e) in zip(procs, out, strict=True)]


def test_one_ranks_nan_stops_both_ranks_at_that_step_with_one_line(data, tmp_path):
    run = tmp_path / "run"
    ranks = two_ranks(job(data, run), {**ENV, "LFR_FAULT_LOSS": "nan:7", "LFR_CRASH_RANK": "1"})
    for r in ranks:
        assert r.returncode == 2, r.stderr[-3000:]
        errors = [line for line in r.stderr.splitlines() if line.startswith("error:")]
        assert len(errors) == 1 and "Traceback" not in r.stderr, r.stderr[-3000:]
        line = errors[0]
        assert "stopped at step 7 (phase 0 learn): the loss is non-finite" in line, line
        assert f"last good checkpoint {run / 'checkpoints' / 'step_00000005'} (step 5)" in line and "resume" in line
    ckpts = run / "checkpoints"
    assert (ckpts / "latest").read_text() == "step_00000005"
    assert sorted(p.name for p in ckpts.iterdir() if p.is_dir()) == ["step_00000005"]
    weights = consolidated_state_dict(find_checkpoint_dir(run))
    assert all(torch.isfinite(w).all() for w in weights.values())
    with np.load(find_checkpoint_dir(run) / "lfr" / "arrays.npz") as z:
        assert np.isfinite(z["loss"][z["seen"] > 0]).all() and (z["seen"] > 0).any()
    # The trace (and so the loss table) never took step 7's rows.
    assert [t["step"] for t in read_trace(run)] == [1, 2, 3, 4, 5, 6]


def test_a_non_finite_gradient_alone_stops_the_run(data, tmp_path):
    proc = launch(
        job(data, tmp_path / "run", steps=4, **{"checkpoint.interval": 2, "lfr.schedule": "random"}),
        nproc=1,
        launcher="python",
        check=False,
        extra_env={"LFR_FAULT_LOSS": "gradnan:3"},
    )
    assert proc.returncode == 2
    assert "stopped at step 3 (phase 0 random): the gradient norm is non-finite" in proc.stderr, proc.stderr[-2000:]
    assert (tmp_path / "run" / "checkpoints" / "latest").read_text() == "step_00000002"


def test_a_warned_spike_trains_on_but_keeps_its_losses_out_of_the_table(data, tmp_path):
    run = tmp_path / "run"
    extra = {k: v for k, v in REWIND.items() if k != "train.on_spike"} | {"steps": 9, "lfr.schedule": "random"}
    proc = launch(job(data, run, **extra), nproc=1, launcher="python", extra_env=SPIKE)
    assert "warning: loss spike at step 8 (phase 0 random)" in proc.stderr, proc.stderr[-2000:]
    trace = read_trace(run)
    assert [t["step"] for t in trace] == list(range(1, 10)) and [t["step"] for t in trace if t.get("spike")] == [8]
    with np.load(find_checkpoint_dir(run) / "lfr" / "arrays.npz") as z:
        # last_step counts 0-based steps: step 8's rows (7) never entered the table, step 9's (8) did.
        assert 7 not in z["last_step"] and (z["last_step"] == 8).any()
    assert json.loads((find_checkpoint_dir(run) / "lfr" / "state.json").read_text())["guard"]["spikes"] == 1


@pytest.fixture(scope="module")
def rewound(data, tmp_path_factory) -> tuple[Path, subprocess.CompletedProcess]:
    run = tmp_path_factory.mktemp("rewound") / "run"
    return run, launch(job(data, run, **REWIND), nproc=2, extra_env=SPIKE)


def test_a_spike_rewinds_to_the_checkpoint_skips_the_batches_and_finishes(rewound):
    run, proc = rewound
    assert "rewind 1/5: loss spike at step 8" in proc.stderr and "step_00000005, skipping steps 7-8" in proc.stderr
    trace = read_trace(run)
    assert [t["step"] for t in trace] == list(range(1, 15))
    assert [t["step"] for t in trace if t.get("skipped")] == [7, 8]
    assert all(np.isfinite(t["losses"]).all() for t in trace if not t.get("skipped"))
    state = json.loads((find_checkpoint_dir(run) / "lfr" / "state.json").read_text())
    assert state["step"] == 14 and state["guard"]["skipped"] == [7, 8] and state["guard"]["rewinds"] == 1
    # Blocks of the skipped batches were never trained on after the rewind: the table has no record of them
    # from those steps (last_step counts 0-based steps: 6 and 7).
    with np.load(find_checkpoint_dir(run) / "lfr" / "arrays.npz") as z:
        assert not np.isin(z["last_step"], [6, 7]).any()
        assert np.isfinite(z["loss"][z["seen"] > 0]).all()
    acc = EventAccumulator(str(run / "tb"))
    acc.Reload()
    assert [e.value for e in acc.Scalars("rewinds")][-1] == 1 and [e.value for e in acc.Scalars("skipped-batches")][
        -1
    ] == 2
    assert "spikes 1 rewinds 1 skipped 2" in proc.stderr
    assert report.main([str(run), "--out", str(run.parent / "report")]) == 0
    assert json.loads((run.parent / "report" / "report.json").read_text())["guard"] == {
        "spikes": 1,
        "rewinds": 1,
        "skipped_batches": 2,
        "skipped_steps": "7-8",
    }
    assert (
        "Loss spikes 1, rewinds 1, skipped batches 2 (steps 7-8)." in (run.parent / "report" / "report.md").read_text()
    )


def test_a_repeated_rewound_run_is_bit_identical(rewound, data, tmp_path):
    again = tmp_path / "again"
    launch(job(data, again, **REWIND), nproc=2, extra_env=SPIKE)
    assert compare_training(rewound[0], again) == dict.fromkeys(
        ["model", "loss_table", "index_files", "step_losses"], True
    )


def test_a_run_killed_during_the_rewind_resumes_to_the_same_weights(rewound, data, tmp_path):
    run = tmp_path / "run"
    argv = [
        str(BIN / "torchrun"),
        "--standalone",
        "--nproc-per-node=2",
        "-m",
        "lfr_ds.train",
        *job(data, run, **REWIND),
    ]
    killed = launch_once(
        argv,
        env={**ENV, **SPIKE},
        log=tmp_path / "kill.log",
        crash=Kill("rewind", 8),
        timer=None,
        started=None,
        timeout=300,
    )
    assert killed == Kill("rewind", 8)
    assert (run / "checkpoints" / "latest").read_text() == "step_00000005"
    launch(job(data, run, **REWIND), nproc=2, extra_env=SPIKE)
    assert compare_training(rewound[0], run) == dict.fromkeys(
        ["model", "loss_table", "index_files", "step_losses"], True
    )


#: Issue 27's report: the tiny preset with 10-step LFR phases, lr 1.0, no clipping, beta2 0.5 went from 7
#: to 1,860 nats with no warning, and Focus ranked blocks by losses of 50 to 300 nats. Here on webmix with
#: the tests' 8,192-piece tokenizer (ln V = 9.01).
DIVERGING = [
    "steps=30",
    "model.preset=tiny",
    "engine.global_batch_size=4",
    "engine.micro_batch_size=2",
    "optim.lr=1.0",
    "optim.grad_clip=0",
    "optim.warmup_steps=1",
    "optim.beta2=0.5",
    "lfr.schedule=learn:10,focus:10@0.5,review:*",
    "checkpoint.interval=0",
    "log.progress_bar=false",
    "log.trace_blocks=true",
]


def test_the_issues_diverging_run_warns_in_learn_drops_nothing_and_stops_dead(webmix_dataset, tmp_path):
    """Default policy (warn): the first phase warns, the Focus at step 10 drops no block, and the run stops
    once it has been diverged for train.diverged_steps (20) steps in a row."""
    run = tmp_path / "run"
    proc = launch(
        [f"data.path={webmix_dataset}", f"run_dir={run}", *DIVERGING], nproc=1, launcher="python", check=False
    )
    warned = [
        int(x.split(" at step ")[1].split()[0]) for x in proc.stderr.splitlines() if x.startswith("warning: diverged")
    ]
    assert warned and warned[0] <= 10, proc.stderr[-3000:]
    assert "phase_001_focus: drops no block and draws every block alike: the run has diverged since step" in proc.stderr
    assert "ppl     >1e6 |" in proc.stderr  # the console's perplexity of a diverged run, not a 22-digit clamp
    manifest = json.loads((run / "index" / "phase_001_focus.json").read_text())
    assert manifest["dropped"] == 0 and manifest["drop_fraction"] == 0.0 and manifest["kept"] == manifest["num_blocks"]
    # The loss table never took a diverged step's rows: the trace marks them, and the checkpointless run
    # stops dead with one line.
    trace = read_trace(run)
    assert all(t["loss"] <= np.log(8192) + 3 for t in trace if not t.get("spike"))
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    line = next(x for x in proc.stderr.splitlines() if x.startswith("error:"))
    assert "(train.diverged_steps=20): the run is dead" in line and "ln V = 9.01" in line, line


def test_the_issues_diverging_run_stops_in_learn_with_on_spike_stop(webmix_dataset, tmp_path):
    argv = [f"data.path={webmix_dataset}", f"run_dir={tmp_path / 'run'}", *DIVERGING, "train.on_spike=stop"]
    proc = launch(argv, nproc=1, launcher="python", check=False)
    assert proc.returncode == 2, proc.stderr[-2000:]
    errors = [x for x in proc.stderr.splitlines() if x.startswith("error:")]
    assert len(errors) == 1 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    line = errors[0]
    step = int(line.split("stopped at step ")[1].split()[0])
    assert step <= 10 and "(phase 0 learn): diverged: the loss " in line, line  # before the Focus boundary
    assert "ln V = 9.01, a uniform guess over the 8,192-token vocabulary (train.on_spike=stop)" in line, line
    assert "no checkpoint was saved before it" in line and not (tmp_path / "run" / "checkpoints").exists()
    assert not (tmp_path / "run" / "index" / "phase_001_focus.npy").exists()
    print(line)
