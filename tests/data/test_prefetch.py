"""The prefetcher (issue 28): a step's batches read ahead are the ones the step would read itself."""

from __future__ import annotations

import threading

import numpy as np
import pytest

from lfr_ds.data.prefetch import Prefetcher
from lfr_ds.data.sampler import DataParallelSampler


def _sampler() -> DataParallelSampler:
    return DataParallelSampler(np.arange(40), global_batch_size=8, micro_batch_size=4, rank=0, world_size=1)


class Reads:
    """A read that records which thread read which step."""

    def __init__(self) -> None:
        self.calls: list[tuple[int, bool]] = []

    def __call__(self, sampler: DataParallelSampler, step: int) -> list[np.ndarray]:
        self.calls.append((step, threading.current_thread() is threading.main_thread()))
        return sampler.micro_batches(step)


def test_read_ahead_is_used_by_the_step_it_was_for():
    reads, sampler = Reads(), _sampler()
    prefetch = Prefetcher(reads, enabled=True)
    prefetch.ahead(sampler, 1)
    got = prefetch.get(sampler, 1)
    assert [m.tolist() for m in got] == [[8, 9, 10, 11], [12, 13, 14, 15]]
    assert reads.calls == [(1, False)]  # read once, on the background thread
    prefetch.close()


def test_another_step_or_sampler_reads_in_the_foreground():
    reads, a, b = Reads(), _sampler(), _sampler()
    prefetch = Prefetcher(reads, enabled=True)
    prefetch.ahead(a, 2)
    assert [m.tolist() for m in prefetch.get(a, 3)] == [m.tolist() for m in a.micro_batches(3)]  # a skip
    prefetch.ahead(a, 4)
    assert [m.tolist() for m in prefetch.get(b, 4)] == [m.tolist() for m in b.micro_batches(4)]  # a new phase
    assert [c for c in reads.calls if c[1]] == [(3, True), (4, True)]
    prefetch.close()


def test_off_reads_every_step_in_the_foreground_and_past_the_order_reads_nothing():
    reads, sampler = Reads(), _sampler()
    off = Prefetcher(reads, enabled=False)
    off.ahead(sampler, 1)
    off.get(sampler, 1)
    on = Prefetcher(reads, enabled=True)
    on.ahead(sampler, sampler.steps)  # past the phase's order: nothing to read
    on.close()
    assert reads.calls == [(1, True)]


def test_a_failed_read_raises_at_the_step_that_needs_it():
    def bad(sampler, step):
        raise ValueError(f"block of step {step} is damaged")

    sampler = _sampler()
    prefetch = Prefetcher(bad, enabled=True)
    prefetch.ahead(sampler, 1)  # no error yet
    with pytest.raises(ValueError, match="step 1"):
        prefetch.get(sampler, 1)
    prefetch.close()
