"""Turning a phase's sample order into each data-parallel rank's micro-batches.

Global batch ``k`` of a phase is ``order[k·G : (k+1)·G]`` (G = global batch size). Rank ``r`` of ``W`` takes
the contiguous slice ``[r·G/W, (r+1)·G/W)`` and splits it into ``G / (W·m)`` micro-batches of ``m``
blocks, one per gradient-accumulation step. So the *set* of blocks in every optimizer step depends only
on (order file, G, steps consumed): the same on 1 rank or 64, and unchanged when a job resumes on a
different number of ranks.
"""

from __future__ import annotations

import numpy as np


def shuffled_order(num_blocks: int, length: int, seed: int | list[int]) -> np.ndarray:
    """``length`` block ids: a fresh seeded permutation of all blocks per epoch, concatenated.

    Each epoch's permutation is ``default_rng([*seed, epoch])``, so any epoch can be rebuilt alone.
    """
    seed = [seed] if isinstance(seed, int) else list(seed)
    epochs = -(-length // num_blocks)
    dtype = np.uint32 if num_blocks < 2**32 else np.int64
    out = np.empty(epochs * num_blocks, dtype=dtype)
    for e in range(epochs):
        out[e * num_blocks : (e + 1) * num_blocks] = np.random.default_rng([*seed, e]).permutation(num_blocks)
    return out[:length]


class DataParallelSampler:
    """This rank's micro-batches of a phase order."""

    def __init__(
        self, order: np.ndarray, global_batch_size: int, micro_batch_size: int, rank: int, world_size: int
    ) -> None:
        per_rank, rem = divmod(global_batch_size, world_size)
        if rem or per_rank % micro_batch_size:
            raise ValueError(
                f"global batch {global_batch_size} does not split into {world_size} ranks "
                f"× micro batches of {micro_batch_size}"
            )
        self.order = order
        self.global_batch_size = global_batch_size
        self.micro_batch_size = micro_batch_size
        self.rank = rank
        self.per_rank = per_rank

    @property
    def steps(self) -> int:
        """Whole global batches the order holds."""
        return len(self.order) // self.global_batch_size

    def global_batch(self, step: int) -> np.ndarray:
        if not 0 <= step < self.steps:
            raise IndexError(f"step {step} beyond the phase order's {self.steps} steps")
        start = step * self.global_batch_size
        return np.asarray(self.order[start : start + self.global_batch_size], dtype=np.int64)

    def micro_batches(self, step: int) -> list[np.ndarray]:
        """The block ids this rank trains on at ``step`` of the phase, one array per accumulation step."""
        mine = self.global_batch(step)[self.rank * self.per_rank : (self.rank + 1) * self.per_rank]
        return np.split(mine, self.per_rank // self.micro_batch_size)
