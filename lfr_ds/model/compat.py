"""megatron-core setup, and the one place where it is made to run without CUDA.

megatron-core's GPTModel runs on CPU with ``use_cpu_initialization=True`` and fusions off, except for
a few spots that hard-code CUDA. This module replaces exactly those, and only when CUDA is unavailable
(the GPU path is stock megatron-core):

* the RNG tracker (``get_cuda_rng_tracker``): ``add``/``fork`` read and write the CUDA generator;
* ``DotProductAttention``'s global memory buffer, allocated on ``torch.cuda.current_device()``;
* the default causal mask, built with ``device="cuda"``.

Our SDPA core attention needs none of the last two; they are patched so that megatron's stock
``DotProductAttention`` also runs on CPU, which is how the tests check the SDPA module against it.
RoPE also moves tensors to CUDA, but GPT-2 uses learned positions, so it is left alone.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
import torch.distributed as dist
from megatron.core import parallel_state
from megatron.core.fusions import fused_softmax
from megatron.core.tensor_parallel import random as mp_random
from megatron.core.utils import GlobalMemoryBuffer


def setup_megatron(seed: int) -> None:
    """Initialise megatron-core for TP = PP = 1 (every rank is a data-parallel replica) and seed all RNGs.

    Call it on every rank after ``deepspeed.init_distributed`` (gloo on CPU, NCCL on GPU) and before
    building the model. Without a process group it makes a single-process one. Calling it again
    rebuilds megatron's groups, so it is safe to call once per model build.
    """
    init_parallel_state()
    torch.manual_seed(seed)  # every default generator: weight init on CPU, dropout outside the tracker
    if not torch.cuda.is_available():
        # Same tracker API and named streams as megatron, on the CPU generator; installed before
        # model_parallel_cuda_manual_seed, which then only resets it and adds its streams.
        mp_random._CUDA_RNG_STATE_TRACKER = _CpuRNGStatesTracker()
        mp_random._CUDA_RNG_STATE_TRACKER_INITIALIZED = True
    mp_random.model_parallel_cuda_manual_seed(seed)


def init_parallel_state() -> None:
    """(Re)initialise megatron's ``parallel_state`` with TP = PP = 1 on the current process group.

    A collective over all ranks when torch.distributed has several. Without a process group, it
    creates a single-process one (NCCL on GPU, gloo on CPU) on an in-memory store: no port to pick.
    """
    if not dist.is_initialized():
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        dist.init_process_group(backend, store=dist.HashStore(), rank=0, world_size=1)
    if parallel_state.model_parallel_is_initialized():
        parallel_state.destroy_model_parallel()
    parallel_state.initialize_model_parallel(tensor_model_parallel_size=1, pipeline_model_parallel_size=1)
    if not torch.cuda.is_available():
        # initialize_model_parallel creates a fresh buffer every time, so this follows it.
        parallel_state._GLOBAL_MEMORY_BUFFER = _CpuMemoryBuffer()
        fused_softmax.get_default_causal_mask = _cpu_causal_mask


class _CpuRNGStatesTracker(mp_random.CudaRNGStatesTracker):
    """megatron's RNG tracker with the CPU generator in place of the CUDA one.

    Replaces ``CudaRNGStatesTracker.add``/``fork``, which call ``torch.cuda.get_rng_state`` and fail
    on CPU-only torch. Each named stream is a CPU generator state; ``fork`` swaps it in and out.
    """

    def add(self, name: str, seed: int) -> None:
        if seed in self.seeds_ or name in self.states_:
            raise ValueError(f"RNG stream {name!r} or seed {seed} already exists")
        self._is_initialized = True
        self.seeds_.add(seed)
        self.states_[name] = torch.Generator().manual_seed(seed).get_state()

    @contextlib.contextmanager
    def fork(self, name: str = mp_random._MODEL_PARALLEL_RNG_TRACKER_NAME) -> Iterator[None]:
        outer = torch.get_rng_state()
        torch.set_rng_state(self.states_[name])
        try:
            yield
        finally:
            self.states_[name] = torch.get_rng_state()
            torch.set_rng_state(outer)


class _CpuMemoryBuffer(GlobalMemoryBuffer):
    """Replaces the global buffer that DotProductAttention allocates on ``torch.cuda.current_device()``.

    Its only use there is the output of ``baddbmm(beta=0)``, which needs a tensor of the right shape
    and nothing else; reusing memory buys nothing on CPU, so this allocates each time.
    """

    def get_tensor(self, tensor_shape, dtype, name, mem_alloc_context=None):
        return torch.empty(tensor_shape, dtype=dtype)


def _cpu_causal_mask(sq: int) -> torch.Tensor:
    """megatron's ``get_default_causal_mask`` (True = masked), built on CPU instead of ``device="cuda"``."""
    return torch.triu(torch.ones(sq, sq, dtype=torch.bool), diagonal=1)
