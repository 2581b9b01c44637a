#!/usr/bin/env python3
"""The prepared GPU check: a few bf16 steps of GPT-2 124M and 1.5B under ZeRO-2 and ZeRO-3, one table.

    launch_scripts/gpu_check.sh          # on a lent H100/H200: 4 runs, well under 8 minutes
    launch_scripts/gpu_check.sh --cpu    # tiny preset in fp32 on CPU (what the test suite runs)

Prints one row per run (tokens/s, TFLOP/s per device, MFU, peak memory) and, as its last line, the
same as one JSON object ``{"results": [...]}``.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

from runs import random_token_dataset, timed_run

GPU_RUNS = [  # (preset, zero stage, micro batch per GPU); global batch = micro × GPUs × 2 accumulation steps
    ("gpt2-124m", 2, 16),
    ("gpt2-124m", 3, 16),
    ("gpt2-1.5b", 2, 8),
    ("gpt2-1.5b", 3, 8),
]
CPU_RUNS = [("tiny", 2, 2), ("tiny", 3, 2)]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--cpu", action="store_true", help="tiny preset, fp32, on CPU (for tests)")
    p.add_argument("--steps", type=int, default=None, help="steps per run (default 12 on GPU, 4 on CPU)")
    p.add_argument("--gpus", type=int, default=None, help="GPUs per run (default: all visible)")
    args = p.parse_args()
    import torch

    if not args.cpu and not torch.cuda.is_available():
        sys.exit("error: no CUDA GPU visible; run with --cpu for the CPU check")
    runs = CPU_RUNS if args.cpu else GPU_RUNS
    steps = args.steps or (3 if args.cpu else 12)
    nproc = 1 if args.cpu else (args.gpus or torch.cuda.device_count())
    vocab = 1024 if args.cpu else 50257
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        data = random_token_dataset(f"{tmp}/tokens", vocab, 2_000_000 if not args.cpu else 200_000)
        for preset, zero, micro in runs:
            overrides = [
                f"data.path={data}",
                f"model.vocab_size={vocab}",
                f"model.preset={preset}",
                f"engine.zero_stage={zero}",
                f"engine.micro_batch_size={micro}",
                f"engine.global_batch_size={micro * nproc * 2}",
                f"steps={steps}",
                f"log.interval={1 if args.cpu else 4}",
                "optim.warmup_steps=1",
                f"engine.precision={'fp32' if args.cpu else 'bf16'}",
            ]
            m = timed_run(Path(tmp) / f"{preset}-z{zero}", overrides, nproc=nproc)
            row = {
                "preset": preset,
                "zero": zero,
                "ranks": nproc,
                "micro_batch": micro,
                "tokens_per_s": round(m["tokens_per_s"]),
                "tflops_per_device": round(m["tflops_per_device"], 2),
                "mfu_percent": round(m["mfu_percent"], 1),
                "peak_memory_gib": round(m["peak_memory_bytes"] / 2**30, 2),
            }
            results.append(row)
            print(
                f"{preset:<10} ZeRO-{zero}  {row['tokens_per_s']:>10,} tok/s  {row['tflops_per_device']:>8.2f} TFLOP/s  "
                f"MFU {row['mfu_percent']:>5.1f}%  peak {row['peak_memory_gib']:>6.2f} GiB",
                flush=True,
            )
    print(json.dumps({"device": "cpu" if args.cpu else torch.cuda.get_device_name(), "results": results}))


if __name__ == "__main__":
    main()
