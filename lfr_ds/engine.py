"""DeepSpeed: the ds_config assembly (checked before any rank starts), the precision, the learning-rate
schedule, and the engine.

This module never decides which blocks to train on; it only runs what the loop hands it. The launch
environment and process group are :mod:`lfr_ds.launch`; checkpoints are :mod:`lfr_ds.checkpoint`.
"""

from __future__ import annotations

import json
import math
import os
import sys
from pathlib import Path

import torch
import torch.distributed as dist

from lfr_ds.config import TrainConfig
from lfr_ds.errors import UserError
from lfr_ds.launch import import_deepspeed

DS_CONFIG_DIR = Path(__file__).resolve().parent / "ds_configs"  # package data: wheels carry it
#: ds_config fields lfr-ds derives from TrainConfig; a JSON may leave them out or set them to "auto".
DERIVED_KEYS = (
    "train_batch_size",
    "train_micro_batch_size_per_gpu",
    "gradient_accumulation_steps",
    "gradient_clipping",
    "optimizer",
    "scheduler",
)


def resolve_bf16(precision: str) -> bool:
    """Whether to train in bf16 for ``engine.precision``: ``auto`` = on a GPU that has it (Ampere and newer)."""
    cuda = torch.cuda.is_available()
    if precision == "auto":
        return cuda and torch.cuda.is_bf16_supported()
    if precision == "bf16" and cuda and not torch.cuda.is_bf16_supported():
        raise UserError(f"engine.precision: bf16, and {torch.cuda.get_device_name()} has no bf16; use fp32 (or auto)")
    if precision == "bf16" and not cuda:
        print("warning: bf16 on CPU runs about 10x slower than fp32 here", file=sys.stderr)
    return precision == "bf16"


def build_ds_config(cfg: TrainConfig, world_size: int, bf16: bool) -> dict:
    """The DeepSpeed config: the JSON file's ZeRO/communication settings plus what lfr-ds derives,
    checked by DeepSpeed's own validation. Needs no process group: call it before starting one."""
    path = cfg.engine.ds_config
    if path == "auto":
        path = str(DS_CONFIG_DIR / f"zero{cfg.engine.zero_stage}{'' if torch.cuda.is_available() else '_cpu'}.json")
    if not os.path.isfile(path):
        raise UserError(f"engine.ds_config: {path} not found; point it at a DeepSpeed JSON or use auto")
    try:
        ds = json.loads(Path(path).read_text())
    except OSError as e:
        raise UserError(f"engine.ds_config: {path} cannot be read ({e.strerror}); check its permissions") from None
    except ValueError as e:
        raise UserError(f"engine.ds_config: {path} is not valid JSON ({e})") from None
    for section in ("", "zero_optimization", "bf16", "checkpoint"):
        value = ds if not section else ds.get(section, {})
        if not isinstance(value, dict):
            raise UserError(f"engine.ds_config: {path}: {section or 'the top level'} must be a JSON object")
    for key in DERIVED_KEYS:
        if key in ds and ds[key] != "auto":
            raise UserError(
                f'{path}: sets {key!r}, which lfr-ds derives from the training config; remove it or set it to "auto"'
            )
    stage = ds.setdefault("zero_optimization", {}).setdefault("stage", cfg.engine.zero_stage)
    if stage != cfg.engine.zero_stage:
        raise UserError(
            f"{path}: zero_optimization.stage is {stage} but engine.zero_stage is {cfg.engine.zero_stage}; "
            "make them agree"
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
    _check_with_deepspeed(ds, path)
    return ds


def _check_with_deepspeed(ds: dict, path: str) -> None:
    """Run DeepSpeed's config validation now, so a field it rejects is one line naming the file, not a
    traceback from ``deepspeed.initialize`` after every rank has started."""
    import_deepspeed()
    from deepspeed.runtime.config import DeepSpeedConfig, DeepSpeedConfigError
    from pydantic import ValidationError

    # DeepSpeed checks the batch against the ranks it counts: the process group's, or one before there is
    # one. lfr-ds's batch arithmetic is its own (EngineConfig), so DeepSpeed is shown what it will count.
    counted = dist.get_world_size() if dist.is_initialized() else 1
    batch = ds["train_micro_batch_size_per_gpu"] * ds["gradient_accumulation_steps"] * counted
    try:
        DeepSpeedConfig({**ds, "train_batch_size": batch})
    except ValidationError as e:
        first = e.errors()[0]
        where = ".".join(str(part) for part in first["loc"])
        raise UserError(
            f"engine.ds_config: {path}: {where}: {first['msg']} (DeepSpeed's {e.title}); fix or remove it"
        ) from None
    except (DeepSpeedConfigError, ValueError, AssertionError, KeyError, TypeError) as e:
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise UserError(
            f"engine.ds_config: {path}: DeepSpeed rejects it ({reason}); fix the file or use auto"
        ) from None


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


def build_engine(model: torch.nn.Module, cfg: TrainConfig, ds_config: dict):
    """Wrap ``model`` in a DeepSpeed engine (ZeRO-2/3, AdamW, warmup + cosine LR) configured by
    ``ds_config`` (from :func:`build_ds_config`)."""
    deepspeed = import_deepspeed()
    # GPT-2 / Megatron convention: no weight decay on biases and LayerNorm parameters.
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        (no_decay if p.ndim < 2 or "norm" in name else decay).append(p)
    groups = [
        {"params": decay, "weight_decay": cfg.optim.weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]
    engine, _, _, _ = deepspeed.initialize(
        model=model,
        model_parameters=groups,
        config=ds_config,
        lr_scheduler=lambda opt: torch.optim.lr_scheduler.LambdaLR(opt, lr_lambda(cfg)),
    )
    return engine
