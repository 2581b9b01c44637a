#!/usr/bin/env python3
"""Training throughput of the tiny preset on CPU: 1 and 2 processes, ZeRO-2 and ZeRO-3, fp32.

Both process counts use both cores (1 rank × 2 threads, 2 ranks × 1 thread). Random tokens, vocab 8192,
seq 256, global batch 16. Last stdout line:
``{"results": [{"procs": P, "zero": Z, "tokens_per_s": ..., "tflops": ...}, ...]}`` (TFLOP/s per rank; no
MFU: a CPU has no peak to divide by, see ``lfr_ds.metrics.peak_tflops``).

    .venv/bin/python bench/throughput.py [--steps 20]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

from runs import random_token_dataset, timed_run


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--steps", type=int, default=20)
    args = p.parse_args()
    cores = os.cpu_count() or 2
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        data = random_token_dataset(f"{tmp}/tokens", 8192, 1_000_000)
        for procs in (1, 2):
            for zero in (2, 3):
                overrides = [
                    f"data.path={data}",
                    "model.vocab_size=8192",
                    "model.preset=tiny",
                    f"engine.zero_stage={zero}",
                    "engine.micro_batch_size=4",
                    "engine.global_batch_size=16",
                    f"steps={args.steps}",
                    "log.interval=5",
                    "optim.warmup_steps=1",
                    "engine.precision=fp32",
                ]
                m = timed_run(
                    Path(tmp) / f"p{procs}z{zero}",
                    overrides,
                    nproc=procs,
                    launcher="torchrun",
                    threads_per_rank=max(1, cores // procs),
                )
                row = {
                    "procs": procs,
                    "zero": zero,
                    "tokens_per_s": round(m["tokens_per_s"], 1),
                    "tflops": round(m["tflops_per_device"], 4),
                }
                print(
                    f"procs={procs} zero={zero}: {row['tokens_per_s']:,.0f} tok/s, {row['tflops']} TFLOP/s per rank",
                    file=sys.stderr,
                    flush=True,
                )
                results.append(row)
    print(json.dumps({"results": results}))


if __name__ == "__main__":
    main()
