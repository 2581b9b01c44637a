"""Reading the next step's batches while this one trains (``data.prefetch``)."""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Generic, TypeVar

from lfr_ds.data.sampler import DataParallelSampler

T = TypeVar("T")


class Prefetcher(Generic[T]):
    """One step's batches read ahead on a background thread: the block reads (megatron-core's index lookups and
    memory-mapped copies) overlap the step before, whose torch ops release the GIL.

    A read ahead is keyed by the sampler and the step it was asked for. Anything else (a new phase, a skipped
    step, a rewind) is read in the foreground, so what a step trains on never depends on the prefetch."""

    def __init__(self, read: Callable[[DataParallelSampler, int], T], enabled: bool) -> None:
        self._read = read
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="lfr-prefetch") if enabled else None
        self._ahead: tuple[DataParallelSampler, int, Future] | None = None

    def get(self, sampler: DataParallelSampler, step: int) -> T:
        """Step ``step`` of ``sampler``'s phase: read ahead if it was, else read now."""
        ahead, self._ahead = self._ahead, None
        if ahead is not None and ahead[0] is sampler and ahead[1] == step:
            return ahead[2].result()  # a read that failed raises here, at the step that needs it
        return self._read(sampler, step)

    def ahead(self, sampler: DataParallelSampler, step: int) -> None:
        """Start reading step ``step`` of ``sampler``'s phase (nothing with the prefetch off, or past the phase)."""
        if self._pool is not None and step < sampler.steps:
            self._ahead = (sampler, step, self._pool.submit(self._read, sampler, step))

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
