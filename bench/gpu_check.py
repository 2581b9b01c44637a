#!/usr/bin/env python3
"""The prepared GPU check: bf16 GPT-2 124M and 1.5B under ZeRO-2 and ZeRO-3, and LFR's cost over random.

    launch_scripts/gpu_check.sh              # on an H100/H200 with lfr-ds installed: under 8 minutes on one GPU
    gpu_kit/launch_scripts/gpu_kit.sh run    # the same on a bare GPU box, from the offline kit
    launch_scripts/gpu_check.sh --cpu        # tiny preset in fp32 on CPU (what the test suite runs)

Fails fast, in one line, without a CUDA GPU, bf16, NCCL or nvcc (DeepSpeed JIT-compiles FusedAdam; it is
built once up front, for this GPU's architecture only, and its build time is reported). Then one row per
run (tokens/s, TFLOP/s per device, MFU, peak memory) and LFR's overhead: the wall time of the same 124M
ZeRO-2 run with an LFR schedule against random sampling, every step after the first (warm-up) and every
phase boundary included (the rewrites, and the per-step loss gather both arms pay). The last line is all
of it as one JSON object.
Transformer Engine is not used: attention is the SDPA path.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

# (preset, zero stage, micro batch per GPU, steps, schedule); global batch = micro × GPUs × 2 accumulation.
# The first two are the overhead pair: the same run with random sampling and with LFR. A rewrite costs a
# roughly fixed fraction of a second at this data size (bench/rewrite.py), so the phases are 100 steps
# (an estimated 8 s each at 124M on one H100) for the comparison to say something about real runs, whose phases
# are thousands of steps.
GPU_RUNS = [
    ("gpt2-124m", 2, 16, 400, "random"),
    ("gpt2-124m", 2, 16, 400, "learn:100,focus:100@0.5,review:100,focus:*@0.7"),
    ("gpt2-124m", 3, 16, 12, "random"),
    ("gpt2-1.5b", 2, 8, 12, "random"),
    ("gpt2-1.5b", 3, 8, 12, "random"),
]
CPU_RUNS = [
    ("tiny", 2, 2, 6, "random"),
    ("tiny", 2, 2, 6, "learn:2,focus:2@0.5,review:1,focus:*@0.7"),
    ("tiny", 3, 2, 3, "random"),
]
OVERHEAD_LIMIT_PERCENT = 2.0


def _estimate(preset: str, zero: int, ranks: int, micro: int, vocab: int, cpu: bool) -> int:
    """lfr-train's memory preflight for one run of the check (bytes a rank)."""
    import dataclasses

    from lfr_ds.config import ModelConfig
    from lfr_ds.engine import DS_CONFIG_DIR
    from lfr_ds.launch import estimate_memory

    model = dataclasses.replace(ModelConfig(preset=preset), vocab_size=vocab)
    ds = json.loads((DS_CONFIG_DIR / f"zero{zero}{'_cpu' if cpu else ''}.json").read_text())
    return estimate_memory(model, zero, ranks, micro, not cpu, ds["zero_optimization"]).total


def preflight() -> None:
    """One line and exit 2 if this machine cannot run the GPU check."""
    import torch

    problem = None
    if not torch.cuda.is_available():
        problem = f"no CUDA GPU visible to torch {torch.__version__}; run on a GPU node (or use --cpu)"
    elif not torch.cuda.is_bf16_supported():
        problem = f"{torch.cuda.get_device_name()} has no bf16 (needs compute capability 8.0+: A100, H100, H200)"
    elif not torch.distributed.is_nccl_available():
        problem = f"torch {torch.__version__} was built without NCCL"
    elif (
        shutil.which("nvcc") is None
        and not Path(os.environ.get("CUDA_HOME", "/usr/local/cuda"), "bin", "nvcc").exists()
    ):
        problem = "nvcc not found (DeepSpeed compiles FusedAdam with it); put it on PATH or set CUDA_HOME"
    if problem:
        print(f"error: {problem}", file=sys.stderr)
        sys.exit(2)


def build_fused_adam() -> float:
    """Compile DeepSpeed's FusedAdam for this GPU's architecture only; every run then loads it from the cache."""
    import torch
    from deepspeed.ops.op_builder import FusedAdamBuilder

    major, minor = torch.cuda.get_device_capability()
    os.environ.setdefault("TORCH_CUDA_ARCH_LIST", f"{major}.{minor}")  # the launched runs inherit it
    t0 = time.perf_counter()
    FusedAdamBuilder().load()
    return time.perf_counter() - t0


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--cpu", action="store_true", help="tiny preset, fp32, on CPU (for tests)")
    p.add_argument("--preflight", action="store_true", help="only check the GPU, bf16, NCCL and nvcc, then exit")
    p.add_argument("--gpus", type=int, default=None, help="GPUs per run (default: all visible)")
    args = p.parse_args()
    if not args.cpu:
        preflight()
    if args.preflight:
        return
    import torch
    from runs import random_token_dataset, timed_run

    summary = {"device": "cpu" if args.cpu else torch.cuda.get_device_name(), "torch": torch.__version__}
    if not args.cpu:
        summary["fused_adam_build_s"] = round(build_fused_adam(), 1)
    nproc = 1 if args.cpu else (args.gpus or torch.cuda.device_count())
    vocab = 1024 if args.cpu else 50257
    results, run_seconds = [], []
    with tempfile.TemporaryDirectory() as tmp:
        # About one pass of the overhead pair's 400 steps on one GPU (32 × 1024 tokens a step).
        data = random_token_dataset(f"{tmp}/tokens", vocab, 200_000 if args.cpu else 14_000_000)
        for i, (preset, zero, micro, steps, schedule) in enumerate(CPU_RUNS if args.cpu else GPU_RUNS):
            overrides = [
                f"data.path={data}",
                f"model.vocab_size={vocab}",
                f"model.preset={preset}",
                f"engine.zero_stage={zero}",
                f"engine.micro_batch_size={micro}",
                f"engine.global_batch_size={micro * nproc * 2}",
                f"steps={steps}",
                f"lfr.schedule={schedule}",
                f"log.interval={1 if args.cpu else 4}",
                "optim.warmup_steps=1",
                f"engine.precision={'fp32' if args.cpu else 'bf16'}",
            ]
            m = timed_run(Path(tmp) / f"run{i}", overrides, nproc=nproc)
            row = {
                "preset": preset,
                "zero": zero,
                "sampling": "random" if schedule == "random" else "lfr",
                "ranks": nproc,
                "micro_batch": micro,
                "steps": steps,
                "tokens_per_s": round(m["tokens_per_s"]),
                "tflops_per_device": round(m["tflops_per_device"], 4),  # a CPU run does ~0.001
                "mfu_percent": None if m["mfu_percent"] is None else round(m["mfu_percent"], 1),  # no peak on CPU
                "peak_memory_gib": round(m["peak_memory_bytes"] / 2**30, 2),
                # The preflight's prediction for this run (ZeRO-3 builds partitioned: issue 26), against the peak.
                "estimate_gib": round(_estimate(preset, zero, nproc, micro, vocab, args.cpu) / 2**30, 2),
            }
            row["estimate_ratio"] = round(row["estimate_gib"] / max(row["peak_memory_gib"], 1e-9), 2)
            results.append(row)
            run_seconds.append(m["run_seconds"])
            mfu = "n/a" if row["mfu_percent"] is None else f"{row['mfu_percent']:.1f}%"
            print(
                f"{preset:<10} ZeRO-{zero} {row['sampling']:<6} {row['tokens_per_s']:>10,} tok/s  "
                f"{row['tflops_per_device']:>8.2f} TFLOP/s  MFU {mfu:>6}  peak {row['peak_memory_gib']:>6.2f} GiB "
                f"(preflight {row['estimate_gib']:.2f})",
                flush=True,
            )
    # Rounded first, so the JSON's overhead is the one its own seconds give (short CPU runs last ~1 s).
    random_s, lfr_s = round(run_seconds[0], 3), round(run_seconds[1], 3)
    overhead = 100.0 * (lfr_s / random_s - 1.0)
    summary["results"] = results
    summary["lfr_overhead"] = {
        "preset": results[0]["preset"],
        "steps": results[0]["steps"],
        "schedule": (CPU_RUNS if args.cpu else GPU_RUNS)[1][4],
        "random_run_s": random_s,
        "lfr_run_s": lfr_s,
        "overhead_percent": round(overhead, 2),
        "within_limit": overhead <= OVERHEAD_LIMIT_PERCENT,
    }
    print(
        f"LFR over random, whole run with phase boundaries: {lfr_s:.2f} s vs {random_s:.2f} s = {overhead:+.2f}% "
        f"(limit {OVERHEAD_LIMIT_PERCENT:.0f}%)",
        flush=True,
    )
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
