"""DeepSpeed: process group, ds_config assembly, the engine, and checkpoints of the full training state.

This module never decides which blocks to train on; it only runs and persists what the loop hands it.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import logging
import math
import os
import shutil
import socket
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist

from lfr_ds import atomic
from lfr_ds.config import ModelConfig, TrainConfig
from lfr_ds.errors import UserError
from lfr_ds.faults import crash_point
from lfr_ds.identity import check_fits, read_state
from lfr_ds.resources import OutOfResource
from lfr_ds.safe_load import check_checkpoint_files, load_arrays, weights_only_loads

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
CHECKPOINTS = "checkpoints"
LATEST = "latest"
UNIVERSAL = ".universal"  # scratch space of an elastic resume, under checkpoints/


@dataclass(frozen=True)
class LaunchEnv:
    """The job geometry a launcher (deepspeed, torchrun) puts in the environment; one process without one."""

    rank: int
    world_size: int
    local_rank: int
    local_world_size: int
    """Ranks on this node (they share its host memory)."""


def launch_env() -> LaunchEnv:
    """Read and check the launcher's environment before any process group exists, so a bad value is one
    line naming the variable rather than a hang or a traceback from inside torch.distributed."""

    def read(name: str, default: str, low: int, high: int,
             fix: str = "it is set by the launcher (deepspeed, torchrun): unset it to run one process") -> int:
        text = os.environ.get(name, default)
        try:
            value = int(text)
        except ValueError:
            value = None
        if value is None or not low <= value <= high:
            raise UserError(f"{name}={text!r}: must be an integer in [{low}, {high}]; {fix}")
        return value

    world_size = read("WORLD_SIZE", "1", 1, 2**20)
    rank = read("RANK", "0", 0, world_size - 1)
    if torch.cuda.is_available():
        gpus = torch.cuda.device_count()
        local_rank = read("LOCAL_RANK", "0", 0, min(gpus, world_size) - 1,
                          f"this node shows {gpus} GPU(s) (CUDA_VISIBLE_DEVICES): start one rank per GPU")
    else:
        local_rank = read("LOCAL_RANK", "0", 0, world_size - 1)
    # torchrun names the ranks on this node LOCAL_WORLD_SIZE, the deepspeed launcher LOCAL_SIZE. The deepspeed
    # launcher never sets LOCAL_WORLD_SIZE, so beside LOCAL_SIZE one is inherited (a one-process run in the
    # launching shell sets it to 1) and LOCAL_SIZE is the launcher's word.
    local_name = "LOCAL_SIZE" if "LOCAL_SIZE" in os.environ else "LOCAL_WORLD_SIZE"
    local_world_size = read(local_name, str(world_size), local_rank + 1, world_size)
    if "MASTER_PORT" in os.environ:
        read("MASTER_PORT", "", 1, 65535)
    if "MASTER_ADDR" in os.environ:
        # torch's rendezvous retries an address that does not resolve until its timeout (30 min), silently.
        try:
            socket.getaddrinfo(os.environ["MASTER_ADDR"], None)
        except (socket.gaierror, UnicodeError) as e:
            raise UserError(
                f"MASTER_ADDR={os.environ['MASTER_ADDR']!r}: does not resolve ({e}); give the first node's host name or IP"
            ) from None
    return LaunchEnv(rank, world_size, local_rank, local_world_size)


def check_memory(model: ModelConfig, zero_stage: int, env: LaunchEnv, bf16: bool) -> None:
    """Refuse, before any process starts, a model whose weights, gradients and Adam state alone cannot fit
    in one rank's share of memory. It is a lower bound (activations and buffers come on top), so it never
    refuses a run that could fit; on CPU it is what stands between an oversized model and the kernel's
    OOM killer, which ends the process without a word."""
    n, w = model.num_parameters, env.world_size
    weight = 2 if bf16 else 4
    # Each rank: Adam's two fp32 moments, the fp32 master copy (bf16 only) and the gradients, sharded
    # across ranks; the weights whole under ZeRO-2, sharded under ZeRO-3.
    sharded = 8 + (4 if bf16 else 0) + weight + (weight if zero_stage == 3 else 0)
    need = n * sharded / w + (n * weight if zero_stage == 2 else 0)
    if torch.cuda.is_available():
        resource, have = f"GPU {env.local_rank} memory", torch.cuda.mem_get_info(env.local_rank)[0]
    else:
        available = _available_host_memory()
        if available is None:
            return
        resource, have = "host memory", available // env.local_world_size
    if need > have:
        raise OutOfResource(
            f"model: {n / 1e6:,.0f}M parameters need at least {need / 2**30:,.1f} GiB of {resource} per rank for "
            f"weights, gradients and Adam state (ZeRO-{zero_stage}, {w} rank(s)), and {have / 2**30:,.1f} GiB is free; "
            "use a smaller model.preset or model.*, engine.zero_stage=3, or more ranks"
        )


def _available_host_memory() -> int | None:
    """``MemAvailable`` from /proc/meminfo in bytes (Linux), else ``None`` (no check)."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def import_deepspeed():
    """DeepSpeed, imported with its accelerator named as torch sees this machine (``cuda`` or ``cpu``), so
    that it neither guesses nor warns. A ``DS_ACCELERATOR`` the user set to anything else is refused:
    DeepSpeed would fail on an unknown name at import, and on another device's name later."""
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    chosen = os.environ.setdefault("DS_ACCELERATOR", expected)
    if chosen != expected:
        hint = "hide the GPUs with CUDA_VISIBLE_DEVICES= to run on CPU" if expected == "cuda" else "unset it"
        raise UserError(f"DS_ACCELERATOR={chosen!r}: lfr-ds runs on {expected} on this machine; {hint}")
    import deepspeed

    return deepspeed


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
    deepspeed = import_deepspeed()
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
        try:
            deepspeed.init_distributed(dist_backend=backend)
        except dist.DistError as e:  # the rendezvous: a wrong address, a port in use, a rank that never came
            where = f"MASTER_ADDR={os.environ.get('MASTER_ADDR')} MASTER_PORT={os.environ.get('MASTER_PORT')}"
            reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise UserError(
                f"{where}: torch.distributed could not start ({reason}); check the launcher's address and port, "
                "and that every rank was started"
            ) from None
    return DistInfo(
        dist.get_rank(),
        dist.get_world_size(),
        local_rank,
        torch.device("cuda", local_rank) if cuda else torch.device("cpu"),
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
        path = str(
            DS_CONFIG_DIR / f"zero{cfg.engine.zero_stage}{'' if torch.cuda.is_available() else '_cpu'}.json"
        )
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
        raise UserError(f"engine.ds_config: {path}: DeepSpeed rejects it ({reason}); fix the file or use auto") from None


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


# ---- checkpoints -----------------------------------------------------------------------------------
#
# RUN_DIR/checkpoints/step_00000500/   DeepSpeed's files (model, ZeRO shards, LR scheduler)
#                                  lfr/state.json, lfr/rng_rank*.npz, lfr/*.npz: lfr-ds's own state (no pickle)
# RUN_DIR/checkpoints/latest          the tag of the newest *complete* checkpoint
#
# A save writes everything into ``step_X.partial``; once every rank has finished, the finaliser renames
# it to ``step_X`` and only then rewrites ``latest``. A crash at any point leaves ``latest`` pointing at
# the previous complete checkpoint and, at worst, a ``.partial`` directory that is never loaded and is
# removed by the next save. Old checkpoints are renamed to ``*.partial`` before they are deleted, so a
# crash mid-delete never leaves a half-deleted ``step_X`` behind.
#
# Resuming on another number of data-parallel ranks (elastic resume) goes through DeepSpeed's universal
# checkpoint format: the ZeRO shards are converted (``ds_to_universal``) into per-parameter fp32 weights
# and Adam moments in ``checkpoints/.universal/``, which DeepSpeed re-partitions over the new ranks.

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
        atomic.fsync_tree(root / partial)
        if (root / tag).exists():  # a re-save of the same step after a resume: move the old one aside first
            shutil.rmtree(root / f"{tag}.replaced.partial", ignore_errors=True)
            os.rename(root / tag, root / f"{tag}.replaced.partial")
        os.rename(root / partial, root / tag)
        atomic.fsync_dir(root)
        crash_point("publish", step)
        atomic.write_bytes(root / LATEST, tag.encode())
        _prune(root, tag, cfg.checkpoint.keep_last)
    dist.barrier()
    return root / tag


def _prune(root: Path, latest: str, keep_last: int) -> None:
    """Delete crash leftovers, and all but the newest ``keep_last`` checkpoints up to ``latest``. Later
    ones are left alone: they are from before a crash that kept ``latest`` behind them, and the resumed
    run overwrites them as it gets there. A doomed checkpoint becomes a ``.partial`` before it is deleted."""
    for p in [*root.glob("*.partial"), root / UNIVERSAL]:  # no save is in progress: all are leftovers
        shutil.rmtree(p, ignore_errors=True)
    tags = sorted(
        p.name
        for p in root.iterdir()
        if p.is_dir() and p.name.startswith("step_") and not p.name.endswith(".partial") and p.name <= latest
    )
    for name in tags[:-keep_last]:
        os.rename(root / name, root / f"{name}.partial")
        shutil.rmtree(root / f"{name}.partial")


def find_checkpoint(cfg: TrainConfig, identity: Mapping[str, object]) -> tuple[Path, dict] | None:
    """The checkpoint to resume from per ``checkpoint.resume`` and its ``state.json``, or ``None`` to start
    fresh. Refused, in one line, if it does not fit ``identity`` (this run's
    :func:`~lfr_ds.identity.run_identity`): called before any process group exists, so that a checkpoint
    that cannot be resumed fails fast, on every rank, before DeepSpeed loads anything."""
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
    check_checkpoint_files(path)
    state = read_state(path)
    check_fits(path, state, identity, afresh="or train from scratch in a new run_dir")
    return path, state


def load_checkpoint(engine, info: DistInfo, cfg: TrainConfig, path: Path) -> tuple[dict, dict[str, np.ndarray]]:
    """Restore engine, RNG and lfr-ds state from ``path`` (found by :func:`find_checkpoint`); returns
    ``(state, arrays)``. Every ``torch.load`` in DeepSpeed's loaders is made weights-only.

    On the checkpoint's number of data-parallel ranks this is DeepSpeed's own load, exact to the bit. On
    another number it goes through a universal checkpoint (see above); ZeRO-2 and ZeRO-3 alike.
    """
    lfr_dir = path / "lfr"
    state = json.loads((lfr_dir / "state.json").read_text())
    same_ranks = state["world_size"] == info.world_size
    with weights_only_loads():
        if same_ranks:
            loaded, _ = engine.load_checkpoint(
                str(path.parent), tag=path.name, load_optimizer_states=True, load_lr_scheduler_states=True
            )
        else:
            loaded = _load_resharded(engine, info, cfg, path, state["world_size"])
    if loaded is None:
        raise UserError(
            f"{path}: DeepSpeed could not load this checkpoint (see the log above); check the ZeRO stage"
        )
    arrays = load_arrays(lfr_dir / "arrays.npz")
    # Every rank of a job starts from the same seed (setup_megatron), so a new rank count takes rank 0's
    # state on every rank: which rank's dropout stream continues where is undefined across sizes anyway.
    _load_rng(lfr_dir / f"rng_rank{info.rank if same_ranks else 0:05d}.npz")
    return state, arrays


def _load_resharded(engine, info: DistInfo, cfg: TrainConfig, path: Path, saved_ranks: int):
    """Load ``path``, saved by ``saved_ranks`` data-parallel ranks, into ``engine`` on ``info.world_size``."""
    if not cfg.checkpoint.shared_fs:
        raise UserError(
            f"{path}: written by {saved_ranks} ranks on node-local disks, and resuming on {info.world_size} needs "
            "every rank's ZeRO shards in one place; resume on the same number of ranks, or gather the step "
            "directories onto a shared filesystem and set checkpoint.shared_fs=true"
        )
    scratch = checkpoint_root(cfg.run_dir) / UNIVERSAL
    if info.rank == 0:
        shutil.rmtree(scratch, ignore_errors=True)
        _to_universal(path, scratch / path.name)
    dist.barrier()
    # Two slips of ZeRO-3's universal load are undone below: it copies parameter group 0's hyperparameters
    # onto every group (lfr-ds's groups differ in weight decay, none on biases and norms: config, put
    # back), and it hands every group the same Adam step tensor, which torch's AdamW then advances once
    # per group per step (each gets its own copy).
    decay = [g["weight_decay"] for g in engine.optimizer.param_groups]
    # The engine was built for a regular load; this one load reads the universal layout instead.
    engine._config.load_universal_checkpoint = True
    try:
        loaded, _ = engine.load_checkpoint(
            str(scratch), tag=path.name, load_optimizer_states=True, load_lr_scheduler_states=True
        )
    finally:
        engine._config.load_universal_checkpoint = False
    for group, wd in zip(engine.optimizer.param_groups, decay, strict=True):
        group["weight_decay"] = wd
    for st in engine.optimizer.optimizer.state.values():
        if torch.is_tensor(st.get("step")):
            st["step"] = st["step"].clone()
    dist.barrier()
    if info.rank == 0:
        shutil.rmtree(scratch)
    return loaded


def _to_universal(src: Path, dst: Path) -> None:
    """``ds_to_universal`` from ``src`` into ``dst``, in this process (one worker: no pool to fork).

    Its step that fills in weights without optimizer fragments calls ``.float()`` on every ``module``
    entry, and megatron's modules also save ``_extra_state`` entries that are ``None``, so it reads a view of
    ``src`` whose model-states files hold only tensors; the ZeRO shards are symlinked, not copied.
    """
    from deepspeed.checkpoint import ds_to_universal

    view = dst.parent / f"{dst.name}.input"
    view.mkdir(parents=True)
    for f in src.glob("*.pt"):
        if f.name.endswith("model_states.pt"):
            sd = torch.load(f, map_location="cpu", weights_only=True)
            if isinstance(sd.get("module"), dict):
                sd["module"] = {k: v for k, v in sd["module"].items() if torch.is_tensor(v)}
            torch.save(sd, view / f.name)
        else:
            (view / f.name).symlink_to(f.resolve())
    args = argparse.Namespace(
        input_folder=str(view),
        output_folder=str(dst),
        num_extract_workers=1,
        num_merge_workers=1,
        keep_temp_folder=False,
        strict=True,
        inject_missing_state=True,  # the info block models wrapped by Megatron-DeepSpeed carry; ours has none
    )
    # It narrates with print() and progress bars.
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        ds_to_universal.main(args)
    shutil.rmtree(view)


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

    z = load_arrays(path)
    torch.set_rng_state(torch.from_numpy(z["torch_cpu"]))
    if torch.cuda.is_available() and "torch_cuda" in z:
        torch.cuda.set_rng_state(torch.from_numpy(z["torch_cuda"]))
    tracker = {k.split("/", 1)[1]: torch.from_numpy(v) for k, v in z.items() if k.startswith("tracker/")}
    if tracker:
        get_cuda_rng_tracker().set_states(tracker)
