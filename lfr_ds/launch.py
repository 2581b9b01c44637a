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

from lfr_ds.config import EngineConfig, ModelConfig
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


#: Host memory of a CPU rank before its model: Python with torch, DeepSpeed and megatron-core imported, the process
#: group, the data views (0.5 GiB measured after the imports; see bench/memory.py). A GPU rank's CUDA context is
#: already out of the free memory the check compares with.
CPU_RUNTIME = 0.6 * 2**30
#: Line that every run prints before any process group starts; :func:`killed_by_oom` reads the estimate back.
PREFLIGHT = "lfr-ds: memory preflight:"


@dataclass(frozen=True)
class MemoryEstimate:
    """One rank's predicted peak memory in bytes, by what holds it at the peak (bench/memory.py measures it)."""

    runtime: int
    """The process before its model (:data:`CPU_RUNTIME` on CPU, 0 on a GPU)."""
    states: int
    """Weights (whole under ZeRO-2, this rank's partition under ZeRO-3), DeepSpeed's fp32 master partition, its fp32
    gradient partition(s) and Adam's two moments, plus the optimizer step's temporaries."""
    buffers: int
    """DeepSpeed's reduce bucket, its allgather bucket (ZeRO-2) or prefetch bucket and the largest module gathered
    whole with its gradient (ZeRO-3)."""
    activations: int
    """What the forward keeps for the backward at the configured micro batch and sequence length (no activation
    recomputation), and the logits with their softmax and gradient."""

    @property
    def total(self) -> int:
        return self.runtime + self.states + self.buffers + self.activations


def estimate_memory(
    model: ModelConfig, zero_stage: int, world_size: int, micro_batch: int, bf16: bool, zero_config: dict
) -> MemoryEstimate:
    """One rank's peak memory training ``model`` on ``world_size`` ranks (``zero_config``: the ds_config's
    ``zero_optimization``). Saving a checkpoint adds nothing: ``torch.save`` writes each tensor's storage as it is,
    and DeepSpeed copies none of ZeRO-2's or ZeRO-3's for it (only MoE experts')."""
    n, w = model.num_parameters, world_size
    part = -(-n // w)  # ZeRO partitions are padded to divide evenly
    weight = 2 if bf16 else 4
    cpu = not torch.cuda.is_available()
    # DeepSpeed keeps an fp32 master partition even when the weights are fp32 (a clone), two fp32 gradient
    # partitions (ZeRO-2: the one the optimizer reads and a contiguous buffer the gradients are reduced into;
    # ZeRO-3: the reduced partition and the flat copy the optimizer reads), and Adam's moments; torch's foreach
    # AdamW step adds one partition-sized temporary (bench/memory.py measures the sum).
    partitioned = (4 + 8 + 8 + 4) * part
    held = n * weight if zero_stage == 2 else part * weight
    embedding = model.padded_vocab_size * model.hidden_size * weight
    reduce_bucket = int(zero_config.get("reduce_bucket_size", 5e8)) * weight
    if zero_stage == 2:
        buffers = reduce_bucket + int(zero_config.get("allgather_bucket_size", 5e8)) * weight
    else:
        # One module gathered whole at a time, the largest being the tied embedding (its weight and gradient),
        # plus the parameters prefetched for the next modules.
        prefetch = int(zero_config.get("stage3_prefetch_bucket_size", 5e7)) * weight
        buffers = reduce_bucket + prefetch + 2 * embedding
    L, h, s = model.num_layers, model.hidden_size, model.seq_length
    # Korthikanti et al. 2022: 34·s·b·h bytes a layer in 16 bits (fp32 doubles it), without their 5·a·s²·b of
    # attention scores: SDPA's flash and memory-efficient kernels never keep them.
    per_layer = micro_batch * s * 34 * h * weight // 2
    logits = 3 * micro_batch * s * model.padded_vocab_size * 4  # fp32 logits, softmax and gradient
    return MemoryEstimate(
        runtime=int(CPU_RUNTIME) if cpu else 0,
        states=held + partitioned,
        buffers=buffers,
        activations=L * per_layer + logits,
    )


def check_memory(
    model: ModelConfig, engine: EngineConfig, env: Geometry, bf16: bool, zero_config: dict
) -> MemoryEstimate:
    """Print one rank's predicted peak (:func:`estimate_memory`), and refuse, before any process starts, a run whose
    prediction exceeds the rank's share of the free memory (host memory is shared by this node's ranks), with
    one line naming the fix. The prediction is measured to be within 30% of the real peak on CPU (bench/memory.py);
    it stands between an oversized model and the kernel's OOM killer, which ends a process without a word."""
    estimate = estimate_memory(model, engine.zero_stage, env.world_size, engine.micro_batch_size, bf16, zero_config)
    if torch.cuda.is_available():
        resource, have = f"GPU {env.local_rank} memory", torch.cuda.mem_get_info(env.local_rank)[0]
    else:
        resource, have = "host memory", _available_host_memory()
        have = None if have is None else have // env.local_world_size
    free = f", {have / 2**30:,.1f} GiB free" if have is not None else ""
    if have is not None and estimate.total > have:
        raise OutOfResource(
            f"model: {model.num_parameters / 1e6:,.0f}M parameters need about {_gib(estimate.total)} GiB of {resource} "
            f"per rank ({_parts(estimate)}; ZeRO-{engine.zero_stage}, {env.world_size} rank(s), micro batch "
            f"{engine.micro_batch_size}), and {have / 2**30:,.1f} GiB is free; "
            + _memory_fix(model, engine, env, bf16, zero_config)
        )
    if env.rank == 0:
        print(f"{PREFLIGHT} {_gib(estimate.total)} GiB a rank{free} ({_parts(estimate)})", file=sys.stderr)
    return estimate


def _memory_fix(model: ModelConfig, engine: EngineConfig, env: Geometry, bf16: bool, zero_config: dict) -> str:
    """The settings that need less memory a rank, the biggest saving first."""
    fixes = []
    if engine.zero_stage == 2:
        zero3 = estimate_memory(model, 3, env.world_size, engine.micro_batch_size, bf16, zero_config).total
        fixes.append(f"engine.zero_stage=3 (about {_gib(zero3)} GiB a rank)")
    fixes.append("more ranks (ZeRO-3 divides the model among them)")
    if engine.micro_batch_size > 1:
        micro = engine.micro_batch_size
        fixes.append(f"a smaller engine.micro_batch_size (now {micro}; the data order stays the same)")
    return "use " + ", ".join(fixes) + ", or a smaller model.preset or model.*"


def _parts(e: MemoryEstimate) -> str:
    return (
        f"runtime {_gib(e.runtime)}, weights and optimizer {_gib(e.states)}, DeepSpeed buffers {_gib(e.buffers)}, "
        f"activations {_gib(e.activations)} GiB"
    )


def _gib(n: int) -> str:
    return f"{n / 2**30:,.1f}"


def killed_by_oom(returncode: int, output: str) -> str | None:
    """The one line a launching process shows when a rank it started was killed by signal 9, else ``None``.

    ``returncode`` and ``output`` are the launch's: ``python -m lfr_ds.train`` itself dies with -9; torchrun
    exits 1 and names the signal in its traceback; the deepspeed launcher exits with the rank's code. The
    estimate is read back from the :data:`PREFLIGHT` line the run printed.
    """
    killed = returncode in (-9, 128 + 9) or any(
        mark in output for mark in ("Signal 9 (SIGKILL)", "exits with return code = -9")
    )
    if not killed:
        return None
    said = [line for line in output.splitlines() if line.startswith(PREFLIGHT)]
    estimate = said[-1][len(PREFLIGHT) :].strip() if said else "no estimate printed"
    return (
        "a rank was killed by signal 9 (SIGKILL), which usually means the kernel's OOM killer: out of host memory; "
        f"the preflight estimated {estimate}; use engine.zero_stage=3, more ranks or a smaller engine.micro_batch_size"
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
