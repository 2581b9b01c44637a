"""Checkpoints of the full training state: DeepSpeed's engine files, every rank's RNG state, and lfr-ds's own
state (a JSON document and numpy arrays, no pickle), saved atomically and resumed on the same or another
number of data-parallel ranks.

This module never decides what goes into lfr-ds's state; it persists what the loop hands it.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import shutil
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist

from lfr_ds import atomic
from lfr_ds.config import TrainConfig
from lfr_ds.errors import UserError
from lfr_ds.faults import crash_point
from lfr_ds.identity import check_fits
from lfr_ds.launch import Geometry
from lfr_ds.run_state import ARRAYS_FILE, LFR_DIR, STATE_FILE, RunState, rng_file
from lfr_ds.safe_load import check_checkpoint_files, load_arrays, weights_only_loads

CHECKPOINTS = "checkpoints"
LATEST = "latest"
UNIVERSAL = ".universal"  # scratch space of an elastic resume, under checkpoints/

# RUN_DIR/checkpoints/step_00000500/   DeepSpeed's files (model, ZeRO shards, LR scheduler)
#                                  lfr/state.json, lfr/arrays.npz, lfr/rng_rank*.npz: lfr-ds's own state
#                                  (no pickle; the names and the state's fields: lfr_ds/run_state.py)
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


def _is_finaliser(info: Geometry, shared_fs: bool) -> bool:
    return info.rank == 0 if shared_fs else info.local_rank == 0


def save_checkpoint(
    engine, info: Geometry, cfg: TrainConfig, step: int, state: RunState, arrays: dict[str, np.ndarray]
) -> Path:
    """Save engine + lfr-ds state (``state`` and ``arrays``, written by rank 0) as ``step_{step}``."""
    root = checkpoint_root(cfg.run_dir)
    tag = f"step_{step:08d}"
    partial = f"{tag}.partial"
    if _is_finaliser(info, cfg.checkpoint.shared_fs):
        root.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(root / partial, ignore_errors=True)
    dist.barrier()
    engine.save_checkpoint(str(root), tag=partial, client_state={}, save_latest=False)
    crash_point("save", step)
    (root / partial / LFR_DIR).mkdir(exist_ok=True)
    _save_rng(root / partial / rng_file(info.rank))
    if info.rank == 0 or (not cfg.checkpoint.shared_fs and info.local_rank == 0):
        with atomic.atomic_path(root / partial / ARRAYS_FILE) as tmp, open(tmp, "wb") as f:
            np.savez(f, **arrays)
        atomic.write_json(root / partial / STATE_FILE, state.to_json())
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


def find_checkpoint(cfg: TrainConfig, identity: Mapping[str, object]) -> tuple[Path, RunState] | None:
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
    if not (path / STATE_FILE).is_file():
        raise UserError(
            f"checkpoint.resume: {path} holds no complete lfr-ds checkpoint; give a step_* directory or use auto"
        )
    check_checkpoint_files(path)
    state = RunState.read(path)
    check_fits(path, state, identity, afresh="or train from scratch in a new run_dir")
    return path, state


def load_checkpoint(engine, info: Geometry, cfg: TrainConfig, path: Path, state: RunState) -> dict[str, np.ndarray]:
    """Restore engine and RNG state from ``path`` (found, and its ``state`` read, by :func:`find_checkpoint`);
    returns lfr-ds's arrays. Every ``torch.load`` in DeepSpeed's loaders is made weights-only.

    On the checkpoint's number of data-parallel ranks this is DeepSpeed's own load, exact to the bit. On
    another number it goes through a universal checkpoint (see above); ZeRO-2 and ZeRO-3 alike.
    """
    same_ranks = state.world_size == info.world_size
    with weights_only_loads():
        if same_ranks:
            loaded, _ = engine.load_checkpoint(
                str(path.parent), tag=path.name, load_optimizer_states=True, load_lr_scheduler_states=True
            )
        else:
            loaded = _load_resharded(engine, info, cfg, path, state.world_size)
    if loaded is None:
        raise UserError(f"{path}: DeepSpeed could not load this checkpoint (see the log above); check the ZeRO stage")
    arrays = load_arrays(path / ARRAYS_FILE)
    # Every rank of a job starts from the same seed (setup_megatron), so a new rank count takes rank 0's
    # state on every rank: which rank's dropout stream continues where is undefined across sizes anyway.
    _load_rng(path / rng_file(info.rank if same_ranks else 0))
    return arrays


def _load_resharded(engine, info: Geometry, cfg: TrainConfig, path: Path, saved_ranks: int):
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
