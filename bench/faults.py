#!/usr/bin/env python3
"""Fault injection: SIGKILL preprocessing and training at random points, resume every time, and check that
the end result is byte-identical to an uninterrupted run.

1. A planted corpus in several files (one preprocessing chunk each) and its tokenizer.
2. ``lfr-preprocess`` uninterrupted (the reference), then the same command killed after a random chunk
   or at a random time: first into an empty prefix (after each kill nothing may be published, unless the
   kill came after the job had published everything), then, once it has completed, again over that
   complete output (after each kill it must be unchanged). Every completed output must equal the
   reference byte for byte.
3. ``lfr-train`` (2 ranks by default, a 4-phase LFR schedule) uninterrupted, then the same job on the
   killed-and-rerun dataset, killed mid-step, mid-save, between a checkpoint's rename and ``latest``,
   mid-index-rewrite and by SIGKILL to the whole job after a random delay, resuming every time. After each
   kill ``latest`` must name a complete checkpoint; at the end the consolidated fp32 model, the loss
   table, the index files and every step's losses must equal the reference's.

Prints progress to stderr and, as its last stdout line, one JSON object:
``{"kills": N, "identical": M, "checks": 6, "consistent": N, "by_point": {...}, "seconds": ...}``
(``identical``: comparisons with the reference that matched, of ``checks``; ``consistent``: kills after
which the files on disk were as allowed).

    .venv/bin/python bench/faults.py [--kills 24] [--nproc 2] [--seed 0] [--workdir DIR]
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))  # the harness lives with the tests

from faultkit import (
    TRAINING_STARTED,
    checkpoints_consistent,
    compare_training,
    drive,
    plan_preprocess_kills,
    plan_training_kills,
    preprocess_outputs,
)

from lfr_ds import synthetic
from lfr_ds.data.tokenizer import train_tokenizer

BIN = Path(sys.executable).parent
FILES = 4  # corpus files: preprocessing output is written (and can be killed) after each
STEPS, INTERVAL = 40, 5
SCHEDULE = "learn:10,focus:10@0.5,review:10,focus:*@0.5"
PHASE_STARTS = (0, 10, 20, 30)


def say(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def train_argv(nproc: int, data: str, run_dir: Path, distribute: str) -> list[str]:
    launcher = (
        [sys.executable, "-m", "lfr_ds.train"]
        if nproc == 1
        else [str(BIN / "torchrun"), "--standalone", f"--nproc-per-node={nproc}", "-m", "lfr_ds.train"]
    )
    cfg = {
        "data.path": data,
        "run_dir": run_dir,
        "steps": STEPS,
        "lfr.schedule": SCHEDULE,
        "engine.micro_batch_size": 16 // nproc // 2 or 1,
        "engine.global_batch_size": 16,
        "checkpoint.interval": INTERVAL,
        "checkpoint.keep_last": 2,
        "lfr.distribute": distribute,
        "log.trace_blocks": "true",
        "log.progress_bar": "false",
    }
    return [*launcher, *synthetic.SMALL_MODEL, *(f"{k}={v}" for k, v in cfg.items())]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--kills", type=int, default=24, help="kills in all, at least 8 (default 24)")
    p.add_argument("--nproc", type=int, default=2, help="training ranks (default 2)")
    p.add_argument("--seed", type=int, default=0, help="seed of the kill plan")
    p.add_argument("--workdir", help="keep everything here (default: a temp directory)")
    args = p.parse_args()
    if args.kills < 8:
        p.error("--kills must be at least 8: two preprocessing and six training kills")
    t_start = time.monotonic()
    work = Path(args.workdir or tempfile.mkdtemp(prefix="lfr-faults-")).resolve()
    work.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(args.seed)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    say(f"fault injection in {work}")

    # ---- 1. corpus and tokenizer
    docs = synthetic.generate(240, seed=0)
    files = [work / f"corpus_{i}.jsonl" for i in range(FILES)]
    for i, f in enumerate(files):
        synthetic.write_jsonl(f, docs[i::FILES])
    tok = work / "tok.model"
    train_tokenizer([str(f) for f in files], str(tok), 512)

    # ---- 2. preprocessing
    pre = [str(BIN / "lfr-preprocess"), *map(str, files), "-t", str(tok), "-j", "2", "--no-progress", "-o"]
    ref_prefix, out_prefix = str(work / "ref" / "data"), str(work / "data" / "data")
    for d in (work / "ref", work / "data"):
        d.mkdir(exist_ok=True)
    t0 = time.monotonic()
    drive([*pre, ref_prefix], [], env=env, logs=work / "logs" / "preprocess_ref", started=None)
    reference = preprocess_outputs(ref_prefix)
    n_pre = max(4, args.kills // 6)
    pkills = plan_preprocess_kills(rng, n_pre, chunks=FILES, timers=n_pre // 2, max_delay=time.monotonic() - t0)
    half = len(pkills) // 2
    say(
        f"preprocess: {len(pkills)} kills, {half} into an empty prefix, "
        f"then {len(pkills) - half} over its complete output"
    )
    landed, consistent = drive(
        [*pre, out_prefix],
        pkills[:half],
        env=env,
        logs=work / "logs" / "preprocess_1",
        started=None,
        after_kill=lambda k: preprocess_outputs(out_prefix) in ({}, reference),
    )
    checks = {"preprocess_fresh": preprocess_outputs(out_prefix) == reference}
    n, c = drive(
        [*pre, out_prefix],
        pkills[half:],
        env=env,
        logs=work / "logs" / "preprocess_2",
        started=None,
        after_kill=lambda k: preprocess_outputs(out_prefix) == reference,
    )
    landed, consistent = landed + n, consistent + c
    checks["preprocess_over_previous"] = preprocess_outputs(out_prefix) == reference

    # ---- 3. training
    distribute = "broadcast" if args.nproc > 1 else "shared_fs"
    ref_run, run = work / "train_ref", work / "train"
    say(f"training reference ({args.nproc} rank(s), {STEPS} steps, {SCHEDULE})")
    drive(
        train_argv(args.nproc, ref_prefix, ref_run, distribute),
        [],
        env=env,
        logs=work / "logs" / "train_ref",
        started=TRAINING_STARTED,
    )
    n_train = args.kills - len(pkills)
    tkills = plan_training_kills(
        rng,
        n_train,
        steps=STEPS,
        checkpoints=range(INTERVAL, STEPS + 1, INTERVAL),
        phase_starts=PHASE_STARTS,
        timers=max(1, n_train // 4),
    )
    say(f"training: {len(tkills)} kills: {' '.join(map(str, tkills))}")
    n, c = drive(
        train_argv(args.nproc, out_prefix, run, distribute),
        tkills,
        env=env,
        logs=work / "logs" / "train",
        started=TRAINING_STARTED,
        after_kill=lambda k: checkpoints_consistent(run),
    )
    landed, consistent = landed + n, consistent + c
    checks.update(compare_training(ref_run, run))

    for name, ok in checks.items():
        say(f"{name:26s} {'identical' if ok else 'DIFFERS'}")
    by_point = collections.Counter(k.point for k in [*pkills, *tkills])
    result = {
        "kills": landed,
        "identical": sum(checks.values()),
        "checks": len(checks),
        "consistent": consistent,
        "by_point": dict(sorted(by_point.items())),
        "nproc": args.nproc,
        "seconds": round(time.monotonic() - t_start, 1),
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
