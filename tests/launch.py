"""Start lfr-train in real separate processes (torchrun or the deepspeed launcher), as users do."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

from lfr_ds.launch import killed_by_oom

BIN = Path(sys.executable).parent


def launch(
    overrides: list[str],
    *,
    nproc: int = 2,
    launcher: str = "torchrun",
    timeout: int = 600,
    check: bool = True,
    extra_env: dict | None = None,
) -> subprocess.CompletedProcess:
    """Run ``python -m lfr_ds.train`` on ``nproc`` gloo ranks with one thread each."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1", **(extra_env or {})}
    if launcher == "torchrun":
        cmd = [str(BIN / "torchrun"), "--standalone", f"--nproc-per-node={nproc}", "-m", "lfr_ds.train"]
    elif launcher == "deepspeed":
        cmd = [
            str(BIN / "deepspeed"),
            f"--num_gpus={nproc}",
            f"--master_port={free_port()}",
            "--module",
            "lfr_ds.train",
        ]
    elif launcher == "python":
        cmd = [sys.executable, "-m", "lfr_ds.train"]
    else:
        raise ValueError(launcher)
    proc = subprocess.run(cmd + overrides, capture_output=True, text=True, timeout=timeout, env=env)
    if check and proc.returncode != 0:
        killed = killed_by_oom(proc.returncode, proc.stderr)  # a SIGKILLed rank: say so first, with the estimate
        raise AssertionError(
            f"{killed or ''}\n{' '.join(cmd + overrides)} failed ({proc.returncode}):\n{proc.stdout[-4000:]}\n"
            f"{proc.stderr[-8000:]}"
        )
    return proc


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def read_trace(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (Path(run_dir) / "trace" / "steps.jsonl").read_text().splitlines()]


def copy_run(src: Path, dst: Path, resume_tag: str) -> Path:
    """A copy of a finished run rewound to checkpoint ``resume_tag`` (later checkpoints removed)."""
    shutil.copytree(src, dst)
    ckpts = dst / "checkpoints"
    for p in ckpts.iterdir():
        if p.is_dir() and p.name > resume_tag:
            shutil.rmtree(p)
    (ckpts / "latest").write_text(resume_tag)
    return dst


STEPS = 12


def base_overrides(dataset, run_dir, **extra) -> list[str]:
    cfg = {
        "data.path": dataset,
        "run_dir": run_dir,
        "steps": STEPS,
        "model.preset": "tiny",
        "engine.micro_batch_size": 2,
        "engine.global_batch_size": 8,
        "optim.lr": 2e-3,
        "optim.warmup_steps": 2,
        "checkpoint.interval": 6,
        "log.interval": 3,
        "log.trace_blocks": "true",
        **extra,
    }
    return [f"{k}={v}" for k, v in cfg.items()]
