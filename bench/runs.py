"""Shared by the throughput benchmarks: a random-token Megatron dataset and one timed lfr-train launch."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np

import lfr_ds  # noqa: F401 -- silences megatron-core's import-time warnings about TE and Apex
from lfr_ds.launch import killed_by_oom

BIN = Path(sys.executable).parent


def random_token_dataset(prefix: str, vocab_size: int, num_tokens: int, seed: int = 0) -> str:
    """Documents of random tokens written with megatron-core's builder (no sidecar: training takes
    ``model.vocab_size``). Throughput does not depend on what the tokens say, only on the shapes."""
    import torch
    from megatron.core.datasets.indexed_dataset import DType, IndexedDatasetBuilder

    rng = np.random.default_rng(seed)
    builder = IndexedDatasetBuilder(prefix + ".bin", dtype=DType.optimal_dtype(vocab_size))
    written = 0
    while written < num_tokens:
        n = int(rng.integers(200, 2000))
        doc = rng.integers(3, vocab_size, size=n)
        doc[-1] = 2  # <eod>
        builder.add_document(torch.from_numpy(doc), [n])
        written += n
    builder.finalize(prefix + ".idx")
    return prefix


def timed_run(
    run_dir: Path,
    overrides: list[str],
    *,
    nproc: int,
    launcher: str = "deepspeed",
    timeout: int = 900,
    threads_per_rank: int | None = None,
) -> dict:
    """Launch lfr-train, return its ``metrics.json`` (steady-state tokens/s, TFLOP/s, MFU, memory)."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    if threads_per_rank is not None:
        env["OMP_NUM_THREADS"] = str(threads_per_rank)
    if launcher == "deepspeed":
        cmd = [
            str(BIN / "deepspeed"),
            f"--num_gpus={nproc}",
            f"--master_port={_free_port()}",
            "--module",
            "lfr_ds.train",
        ]
    else:
        cmd = [str(BIN / "torchrun"), "--standalone", f"--nproc-per-node={nproc}", "-m", "lfr_ds.train"]
    args = [
        f"run_dir={run_dir}",
        "checkpoint.interval=0",
        "log.tensorboard=false",
        "log.progress_bar=false",
        *overrides,
    ]
    proc = subprocess.run(cmd + args, capture_output=True, text=True, timeout=timeout, env=env)
    if proc.returncode != 0:
        killed = killed_by_oom(proc.returncode, proc.stderr)
        raise RuntimeError(killed or f"{' '.join(cmd + args)} failed:\n{proc.stderr[-6000:]}")
    return json.loads((run_dir / "metrics.json").read_text())


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
