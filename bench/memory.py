#!/usr/bin/env python3
"""Peak host memory per rank on CPU against the preflight's estimate: GPT-2 124M and 345M, ZeRO-2 and ZeRO-3,
1 and 2 ranks, fp32.

Each configuration trains a few steps (seq 128, micro batch 1, global batch 2, random tokens with GPT-2's
vocabulary) under torchrun and saves a checkpoint at its last step, one configuration at a time. The
measured peak is the largest rank's peak resident set (``getrusage`` of the launcher's children, what
``/usr/bin/time -v`` reports); the estimate is :func:`lfr_ds.launch.estimate_memory`'s, for the same
run. Memory-heavy: 345M ZeRO-2 on one rank peaks near 7 GB; check ``free -g`` first. Last stdout line:
``{"rows": [{"preset", "zero", "ranks", "estimate_gib", "measured_gib", "ratio", "params_on_rank"}, ...]}``.

    .venv/bin/python bench/memory.py [--presets gpt2-124m,gpt2-345m] [--zero 2,3] [--ranks 1,2] [--steps 3]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import re
import resource
import subprocess
import sys
import tempfile
from pathlib import Path

from runs import BIN, random_token_dataset

from lfr_ds.config import ModelConfig
from lfr_ds.engine import DS_CONFIG_DIR
from lfr_ds.launch import estimate_memory

VOCAB, SEQ, MICRO, GLOBAL = 50257, 128, 1, 2


def measure(data: str, run_dir: Path, preset: str, zero: int, ranks: int, steps: int) -> dict:
    """One run in a fresh child process; returns its largest process's peak RSS and the start line's counts."""
    train = [str(BIN / "torchrun"), "--standalone", f"--nproc-per-node={ranks}", "-m", "lfr_ds.train"]
    overrides = [
        f"data.path={data}",
        f"run_dir={run_dir}",
        f"model.vocab_size={VOCAB}",
        f"model.preset={preset}",
        f"model.seq_length={SEQ}",
        f"engine.zero_stage={zero}",
        f"engine.micro_batch_size={MICRO}",
        f"engine.global_batch_size={GLOBAL}",
        "engine.precision=fp32",
        f"steps={steps}",
        f"checkpoint.interval={steps}",
        "optim.warmup_steps=1",
        "log.tensorboard=false",
        "log.progress_bar=false",
    ]
    # A child of its own, so that RUSAGE_CHILDREN's maximum covers this run's processes and no other's.
    probe = (
        "import resource, subprocess, sys; p = subprocess.run(sys.argv[1:]); "
        "print(p.returncode, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)"
    )
    env = {**os.environ, "OMP_NUM_THREADS": str(max(1, (os.cpu_count() or 2) // ranks)), "PYTHONUNBUFFERED": "1"}
    proc = subprocess.run(
        [sys.executable, "-c", probe, *train, *overrides], capture_output=True, text=True, env=env, timeout=1800
    )
    code, maxrss_kib = (int(x) for x in proc.stdout.split()[-2:])
    if code != 0:
        raise RuntimeError(f"{preset} ZeRO-{zero} on {ranks} rank(s) failed ({code}):\n{proc.stderr[-4000:]}")
    counted = re.search(r"\(([\d.]+M params[^)]*)\)", proc.stderr)
    return {"measured": maxrss_kib * 1024, "params_on_rank": counted.group(1) if counted else None}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--presets", default="gpt2-124m,gpt2-345m")
    p.add_argument("--zero", default="2,3")
    p.add_argument("--ranks", default="1,2")
    p.add_argument("--steps", type=int, default=3)
    args = p.parse_args()
    rows = []
    with tempfile.TemporaryDirectory(dir=os.environ.get("TMPDIR")) as tmp:
        data = random_token_dataset(f"{tmp}/tokens", VOCAB, 200_000)
        for preset in args.presets.split(","):
            model = dataclasses.replace(ModelConfig(preset=preset, seq_length=SEQ), vocab_size=VOCAB)
            for zero in (int(z) for z in args.zero.split(",")):
                for ranks in (int(r) for r in args.ranks.split(",")):
                    run = Path(tmp) / f"{preset}-z{zero}-r{ranks}"
                    got = measure(data, run, preset, zero, ranks, args.steps)
                    subprocess.run(["rm", "-rf", str(run)], check=True)  # checkpoints are GBs
                    zero_config = json.loads((DS_CONFIG_DIR / f"zero{zero}_cpu.json").read_text())["zero_optimization"]
                    estimate = estimate_memory(model, zero, ranks, MICRO, False, zero_config).total
                    row = {
                        "preset": preset,
                        "zero": zero,
                        "ranks": ranks,
                        "estimate_gib": round(estimate / 2**30, 2),
                        "measured_gib": round(got["measured"] / 2**30, 2),
                        "ratio": round(estimate / got["measured"], 2),
                        "params_on_rank": got["params_on_rank"],
                    }
                    print(
                        f"{preset} ZeRO-{zero} {ranks} rank(s): estimate {row['estimate_gib']} GiB, "
                        f"measured {row['measured_gib']} GiB a rank (ratio {row['ratio']}); {row['params_on_rank']}",
                        flush=True,
                    )
                    rows.append(row)
    print(json.dumps({"rows": rows, "max_rss_self_kib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss}))


if __name__ == "__main__":
    main()
