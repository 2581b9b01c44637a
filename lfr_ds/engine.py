"""DeepSpeed: process group, ds_config assembly, the engine, and checkpoints of the full training state.

This module never decides which blocks to train on; it only runs and persists what the loop hands it.
"""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
import socket
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist

from lfr_ds import atomic
from lfr_ds.config import TrainConfig
from lfr_ds.errors import UserError
from lfr_ds.faults import crash_point

DS_CONFIG_DIR = Path(__file__).resolve().parents[1] / "ds_configs"
#: ds_config fields lfr-ds derives from TrainConfig; a JSON may leave them out or set them to "auto".
DERIVED_KEYS = (
    "train_batch_size",
    "train_micro_batch_size_per_gpu",
    "gradient_accumulation_steps",
    "gradient_clipping",
    "optimizer",
    "scheduler",
)
CHECKPOINTS = "checkpoints"
LATEST = "latest"


@dataclass(frozen=True)
class DistInfo:
    rank: int
    world_size: int
    local_rank: int
    device: torch.device


def init_distributed(backend: str = "auto") -> DistInfo:
    """Join (or, run as a plain script, create) the job's process group through DeepSpeed.

    Works under ``deepspeed`` (single- or multi-node, which also passes ``--local_rank``), ``torchrun`` and
    plain ``python`` (a one-process group on a free loopback port).
    """
    if not torch.cuda.is_available():
        os.environ.setdefault(
            "DS_ACCELERATOR", "cpu"
        )  # say it, rather than have DeepSpeed warn that it guessed
    import deepspeed

    logging.getLogger("DeepSpeed").setLevel(logging.WARNING)
    if "RANK" not in os.environ:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        os.environ.update(
            RANK="0",
            LOCAL_RANK="0",
            WORLD_SIZE="1",
            LOCAL_WORLD_SIZE="1",
            MASTER_ADDR="127.0.0.1",
            MASTER_PORT=str(port),
        )
    cuda = torch.cuda.is_available()
    if backend == "auto":
        backend = "nccl" if cuda else "gloo"
    if backend == "nccl" and not cuda:
        raise UserError("engine.backend: nccl needs CUDA GPUs, and none is visible; use auto or gloo")
    if not cuda:
        # DeepSpeed JIT-compiles a shared-memory op (~60 s) at startup that only serves inference
        # all-reduce; training on CPU never uses it.
        sys.modules["deepspeed.comm.torch"].build_shm_op = lambda: None
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if cuda:
        torch.cuda.set_device(local_rank)
    if not dist.is_initialized():
        deepspeed.init_distributed(dist_backend=backend)
    return DistInfo(
        dist.get_rank(),
        dist.get_world_size(),
        local_rank,
        torch.device("cuda", local_rank) if cuda else torch.device("cpu"),
    )


def resolve_bf16(precision: str) -> bool:
    if precision == "auto":
        return torch.cuda.is_available()
    if precision == "bf16" and not torch.cuda.is_available():
        print("warning: bf16 on CPU runs about 10x slower than fp32 here", file=sys.stderr)
    return precision == "bf16"


def build_ds_config(cfg: TrainConfig, world_size: int, bf16: bool) -> dict:
    """The DeepSpeed config: the JSON file's ZeRO/communication settings plus what lfr-ds derives."""
    path = cfg.engine.ds_config
    if path == "auto":
        path = str(
            DS_CONFIG_DIR / f"zero{cfg.engine.zero_stage}{'' if torch.cuda.is_available() else '_cpu'}.json"
        )
    if not os.path.isfile(path):
        raise UserError(f"engine.ds_config: {path} not found; point it at a DeepSpeed JSON or use auto")
    try:
        ds = json.loads(Path(path).read_text())
    except ValueError as e:
        raise UserError(f"engine.ds_config: {path} is not valid JSON ({e})") from None
    for key in DERIVED_KEYS:
        if key in ds and ds[key] != "auto":
            raise UserError(
                f'{path}: sets {key!r}, which lfr-ds derives from the training config; remove it or set it to "auto"'
            )
    stage = ds.setdefault("zero_optimization", {}).setdefault("stage", cfg.engine.zero_stage)
    if stage != cfg.engine.zero_stage:
        raise UserError(
            f"{path}: zero_optimization.stage is {stage} but engine.zero_stage is {cfg.engine.zero_stage}; make them agree"
        )
    o = cfg.optim
    ds.update(
        train_batch_size=cfg.engine.global_batch_size,
        train_micro_batch_size_per_gpu=cfg.engine.micro_batch_size,
        gradient_accumulation_steps=cfg.engine.accumulation_steps(world_size),
        gradient_clipping=o.grad_clip,
        optimizer={
            "type": "AdamW",
            "params": {
                "lr": o.lr,
                "betas": [o.beta1, o.beta2],
                "eps": o.eps,
                "weight_decay": o.weight_decay,
                # torch's AdamW on CPU: DeepSpeed's FusedAdam would JIT-compile CUDA code.
                **({} if torch.cuda.is_available() else {"torch_adam": True}),
            },
        },
    )
    ds.pop("scheduler", None)
    ds["bf16"] = {**ds.get("bf16", {}), "enabled": bf16}
    ds["fp16"] = {"enabled": False}
    ds.setdefault("steps_per_print", 10**9)  # lfr-ds logs; keep DeepSpeed's own step log quiet
    ds.setdefault("checkpoint", {})["use_node_local_storage"] = not cfg.checkpoint.shared_fs
    return ds


def lr_lambda(cfg: TrainConfig):
    """Multiplier of ``optim.lr`` at optimizer step t (0-based): linear warmup over ``warmup_steps``
    (the first step already trains, at lr/warmup), then cosine decay to ``min_lr_ratio`` at the last step."""
    warmup, total, floor = cfg.optim.warmup_steps, cfg.steps, cfg.optim.min_lr_ratio

    def f(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = min(1.0, (step - warmup) / max(1, total - warmup - 1))
        return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress))

    return f


def build_engine(model: torch.nn.Module, cfg: TrainConfig, world_size: int, bf16: bool):
    """Wrap ``model`` in a DeepSpeed engine (ZeRO-2/3, AdamW, warmup + cosine LR)."""
    import deepspeed

    # GPT-2 / Megatron convention: no weight decay on biases and LayerNorm parameters.
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        (no_decay if p.ndim < 2 or "norm" in name else decay).append(p)
    groups = [
        {"params": decay, "weight_decay": cfg.optim.weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]
    ds_config = build_ds_config(cfg, world_size, bf16)
    engine, _, _, _ = deepspeed.initialize(
        model=model,
        model_parameters=groups,
        config=ds_config,
        lr_scheduler=lambda opt: torch.optim.lr_scheduler.LambdaLR(opt, lr_lambda(cfg)),
    )
    return engine


# ---- checkpoints -----------------------------------------------------------------------------------
#
# RUN_DIR/checkpoints/step_00000500/   DeepSpeed's files (model, ZeRO shards, LR scheduler)
#                                  lfr/state.json, lfr/rng_rank*.npz, lfr/*.npz: lfr-ds's own state (no pickle)
# RUN_DIR/checkpoints/latest          the tag of the newest *complete* checkpoint
#
# A save writes everything into ``step_X.partial``; once every rank has finished, the finaliser renames
# it to ``step_X`` and only then rewrites ``latest``. A crash at any point leaves ``latest`` pointing at
# the previous complete checkpoint and, at worst, a ``.partial`` directory that is never loaded and is
# removed by the next save.


def checkpoint_root(run_dir: str) -> Path:
    return Path(run_dir) / CHECKPOINTS


def _is_finaliser(info: DistInfo, shared_fs: bool) -> bool:
    return info.rank == 0 if shared_fs else info.local_rank == 0


def save_checkpoint(
    engine, info: DistInfo, cfg: TrainConfig, step: int, state: dict, arrays: dict[str, np.ndarray]
) -> Path:
    """Save engine + lfr-ds state (``state`` JSON-able, ``arrays`` numpy, written by rank 0) as ``step_{step}``."""
    root = checkpoint_root(cfg.run_dir)
    tag = f"step_{step:08d}"
    partial = f"{tag}.partial"
    if _is_finaliser(info, cfg.checkpoint.shared_fs):
        root.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(root / partial, ignore_errors=True)
    dist.barrier()
    engine.save_checkpoint(str(root), tag=partial, client_state={}, save_latest=False)
    crash_point("save", step)
    lfr_dir = root / partial / "lfr"
    lfr_dir.mkdir(exist_ok=True)
    _save_rng(lfr_dir / f"rng_rank{info.rank:05d}.npz")
    if info.rank == 0 or (not cfg.checkpoint.shared_fs and info.local_rank == 0):
        with atomic.atomic_path(lfr_dir / "arrays.npz") as tmp, open(tmp, "wb") as f:
            np.savez(f, **arrays)
        atomic.write_json(lfr_dir / "state.json", state)
    dist.barrier()
    if _is_finaliser(info, cfg.checkpoint.shared_fs):
        atomic._fsync_tree(root / partial)
        if (root / tag).exists():  # a re-save of the same step after a resume
            shutil.rmtree(root / tag)
        os.rename(root / partial, root / tag)
        atomic.fsync_dir(root)
        atomic.write_bytes(root / LATEST, tag.encode())
        _prune(root, cfg.checkpoint.keep_last)
    dist.barrier()
    return root / tag


def _prune(root: Path, keep_last: int) -> None:
    tags = sorted(
        p.name
        for p in root.iterdir()
        if p.is_dir() and p.name.startswith("step_") and not p.name.endswith(".partial")
    )
    for name in tags[:-keep_last]:
        shutil.rmtree(root / name, ignore_errors=True)
    for p in root.glob("*.partial"):
        shutil.rmtree(p, ignore_errors=True)


def find_checkpoint(cfg: TrainConfig) -> Path | None:
    """The checkpoint to resume from per ``checkpoint.resume``, or ``None`` to start fresh."""
    mode = cfg.checkpoint.resume
    if mode == "never":
        return None
    if mode == "auto":
        latest = checkpoint_root(cfg.run_dir) / LATEST
        if not latest.is_file():
            return None
        path = latest.parent / latest.read_text().strip()
    else:
        path = Path(mode)
        if (path / LATEST).is_file():  # a checkpoints directory rather than one checkpoint
            path = path / (path / LATEST).read_text().strip()
    if not (path / "lfr" / "state.json").is_file():
        raise UserError(
            f"checkpoint.resume: {path} holds no complete lfr-ds checkpoint; give a step_* directory or use auto"
        )
    return path


def load_checkpoint(engine, info: DistInfo, path: Path) -> tuple[dict, dict[str, np.ndarray]]:
    """Restore engine, RNG and lfr-ds state from ``path``; returns ``(state, arrays)``."""
    loaded, _ = engine.load_checkpoint(
        str(path.parent), tag=path.name, load_optimizer_states=True, load_lr_scheduler_states=True
    )
    if loaded is None:
        raise UserError(
            f"{path}: DeepSpeed could not load this checkpoint (see the log above); check the ZeRO stage and rank count"
        )
    lfr_dir = path / "lfr"
    state = json.loads((lfr_dir / "state.json").read_text())
    with np.load(lfr_dir / "arrays.npz", allow_pickle=False) as z:
        arrays = {k: z[k] for k in z.files}
    rng = lfr_dir / f"rng_rank{info.rank:05d}.npz"
    _load_rng(rng if rng.is_file() else lfr_dir / "rng_rank00000.npz")
    return state, arrays


def _save_rng(path: Path) -> None:
    from megatron.core.tensor_parallel.random import get_cuda_rng_tracker

    tensors = {"torch_cpu": torch.get_rng_state()}
    if torch.cuda.is_available():
        tensors["torch_cuda"] = torch.cuda.get_rng_state()
    for name, st in get_cuda_rng_tracker().get_states().items():
        tensors[f"tracker/{name}"] = st
    with atomic.atomic_path(path) as tmp, open(tmp, "wb") as f:
        np.savez(f, **{k: v.cpu().numpy() for k, v in tensors.items()})


def _load_rng(path: Path) -> None:
    from megatron.core.tensor_parallel.random import get_cuda_rng_tracker

    with np.load(path, allow_pickle=False) as z:
        torch.set_rng_state(torch.from_numpy(z["torch_cpu"]))
        if torch.cuda.is_available() and "torch_cuda" in z.files:
            torch.cuda.set_rng_state(torch.from_numpy(z["torch_cuda"]))
        tracker = {k.split("/", 1)[1]: torch.from_numpy(z[k]) for k in z.files if k.startswith("tracker/")}
    if tracker:
        get_cuda_rng_tracker().set_states(tracker)
