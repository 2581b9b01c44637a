"""The launch environment: the job's geometry as the launcher (deepspeed, torchrun) gives it, checked before
any process group exists; the memory preflight; and the process group itself, started through DeepSpeed.

Nothing here knows about the model's training or its checkpoints (:mod:`lfr_ds.engine`, :mod:`lfr_ds.checkpoint`).
"""

from __future__ import annotations

import logging
import os
import socket
import sys
from dataclasses import dataclass

import torch
import torch.distributed as dist

from lfr_ds.config import ModelConfig
from lfr_ds.errors import UserError
from lfr_ds.resources import OutOfResource


@dataclass(frozen=True)
class Geometry:
    """The job's geometry: what a launcher (deepspeed, torchrun) puts in the environment, or one process
    without one. :func:`launch_env` reads it before any process group exists, :func:`init_distributed`
    after joining one; the two agree."""

    rank: int
    world_size: int
    local_rank: int
    local_world_size: int
    """Ranks on this node (they share its host memory)."""

    @property
    def device(self) -> torch.device:
        """This rank's device: GPU ``local_rank`` where CUDA is visible, else the CPU."""
        return torch.device("cuda", self.local_rank) if torch.cuda.is_available() else torch.device("cpu")


def launch_env() -> Geometry:
    """Read and check the launcher's environment before any process group exists, so a bad value is one
    line naming the variable rather than a hang or a traceback from inside torch.distributed."""

    def read(
        name: str,
        default: str,
        low: int,
        high: int,
        fix: str = "it is set by the launcher (deepspeed, torchrun): unset it to run one process",
    ) -> int:
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
        local_rank = read(
            "LOCAL_RANK",
            "0",
            0,
            min(gpus, world_size) - 1,
            f"this node shows {gpus} GPU(s) (CUDA_VISIBLE_DEVICES): start one rank per GPU",
        )
    else:
        local_rank = read("LOCAL_RANK", "0", 0, world_size - 1)
    # One process cannot count the processes launched beside it; what it can check is that the launcher
    # told it which of them it is. torchrun and the deepspeed launcher always set RANK and LOCAL_RANK, so a
    # multi-rank WORLD_SIZE without them is one left in the shell, and the process would start a group
    # of its own (and DeepSpeed then fail on a batch counted for WORLD_SIZE ranks).
    if world_size > 1 and (missing := [n for n in ("RANK", "LOCAL_RANK") if n not in os.environ]):
        raise UserError(
            f"WORLD_SIZE={world_size} but {' and '.join(missing)} {'is' if len(missing) == 1 else 'are'} unset: this "
            f"process cannot tell which of the {world_size} ranks it is; start it under a launcher (deepspeed, "
            "torchrun), which sets them, or unset WORLD_SIZE to run one process"
        )
    # torchrun names the ranks on this node LOCAL_WORLD_SIZE, the deepspeed launcher LOCAL_SIZE. The deepspeed
    # launcher never sets LOCAL_WORLD_SIZE, so beside LOCAL_SIZE one is inherited (a one-process run in the
    # launching shell sets it to 1) and LOCAL_SIZE is the launcher's word.
    local_name = "LOCAL_SIZE" if "LOCAL_SIZE" in os.environ else "LOCAL_WORLD_SIZE"
    local_world_size = read(local_name, str(world_size), local_rank + 1, world_size)
    # Both launchers number ranks node by node, so this node's ranks are RANK - LOCAL_RANK onwards, and
    # all of them are in the world.
    first = rank - local_rank
    if first < 0 or first + local_world_size > world_size:
        raise UserError(
            f"RANK={rank}, LOCAL_RANK={local_rank}, {local_name}={local_world_size}, WORLD_SIZE={world_size}: this "
            f"node's ranks would run from {first} to {first + local_world_size - 1}, outside [0, {world_size - 1}]; "
            "they are set by the launcher (deepspeed, torchrun): unset them to run one process"
        )
    if "MASTER_PORT" in os.environ:
        read("MASTER_PORT", "", 1, 65535)
    if "MASTER_ADDR" in os.environ:
        # torch's rendezvous retries an address that does not resolve until its timeout (30 min), silently.
        try:
            socket.getaddrinfo(os.environ["MASTER_ADDR"], None)
        except (socket.gaierror, UnicodeError) as e:
            raise UserError(
                f"MASTER_ADDR={os.environ['MASTER_ADDR']!r}: does not resolve ({e}); "
                "give the first node's host name or IP"
            ) from None
    return Geometry(rank, world_size, local_rank, local_world_size)


def check_memory(model: ModelConfig, zero_stage: int, env: Geometry, bf16: bool) -> None:
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


def init_distributed(backend: str = "auto") -> Geometry:
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
    geometry = launch_env()  # as the process group was started from it (one process: as set above)
    assert (dist.get_rank(), dist.get_world_size()) == (geometry.rank, geometry.world_size), geometry
    return geometry
