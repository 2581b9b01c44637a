"""Probe blocks (issue 21): the model's loss on text from the same corpus that no run ever trains on.

A probe set (``lfr.probe_path``) is a dataset prefix of documents split off the training corpus before
training (``lfr-preprocess --probe-fraction``, or ``lfr-compare``'s corpus), and not the dev split. Inside
every training step, before the optimizer moves, each rank scores its share of the step's probe blocks
forward-only (``no_grad``, RNG forked so dropout draws nothing from the training stream), with the very
weights that score the step's training blocks. Their rows ride the loss table's gather with negative ids
(:func:`probe_row_ids`), and the table records each probe's loss minus the step's batch mean: the
distribution of "relative loss of text the model has never seen", step by step, that the absorbed test
(:mod:`lfr_ds.lfr.absorbed`) calibrates ``@auto`` against.

Which probes a step scores is a function of ``(data.seed, step)`` alone, so a resumed run scores the
same ones. They never change training: no gradient, no RNG draw, no optimizer state (a test checks the
weights bit for bit on CPU fp32).

**Cost.** A forward is about 1/3 of a training step's FLOPs per block (forward 2N, backward 4N FLOPs
per token for N parameters). With ``p`` probe blocks per step and a global batch of ``G``, the extra
compute is p / (3G) of the step. GPT-2 1.5B, G = 512, p = 8 (one per rank on 8 GPUs): 8 / 1536 = 0.52%
(a one-block forward per rank, ~8 ms at 400 TFLOP/s, in a step of ~4 s); the gather grows by p rows of
24 B. At the small preset (G = 16, one rank) p = 1 costs 1/48 = 2.1%: ``bench/probes.py`` measures it.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from lfr_ds.data.blocks import BlockView
from lfr_ds.data.dataset import open_dataset
from lfr_ds.errors import UserError
from lfr_ds.lfr.loss_table import step_rows

#: The fewest blocks a probe set may hold: a quantile window needs a spread of unseen text to draw from.
MIN_PROBE_BLOCKS = 64

#: Keeps the probes' draw apart from every other seeded stream of the run.
_PROBE_STREAM = 0x9B0B


def probe_set_blocks(path: str, seq_length: int) -> int:
    """Blocks of ``seq_length + 1`` tokens the probe dataset at ``path`` holds."""
    return (open_dataset(path).num_tokens - 1) // seq_length


def check_probe_set(path: str, seq_length: int, train_blocks: int) -> None:
    """``lfr.probe_path`` holds at least :data:`MIN_PROBE_BLOCKS` blocks and at most half as many as the
    training data (a probe set that large is a training set left unused)."""
    n = probe_set_blocks(path, seq_length)
    if n < MIN_PROBE_BLOCKS:
        raise UserError(
            f"lfr.probe_path: {path} holds {n} blocks of {seq_length + 1} tokens, fewer than "
            f"{MIN_PROBE_BLOCKS}; split off more documents (lfr-preprocess --probe-fraction)"
        )
    if 2 * n > train_blocks:
        raise UserError(
            f"lfr.probe_path: {path} holds {n:,} blocks, more than half the training data's "
            f"{train_blocks:,}; split off a smaller fraction (lfr-preprocess --probe-fraction)"
        )


def probe_ids(seed: int, step: int, num_probe_blocks: int, count: int) -> np.ndarray:
    """The probe blocks step ``step`` scores: ``count`` distinct ids (at most all of them), a function of
    ``(seed, step)`` alone."""
    rng = np.random.default_rng([seed, _PROBE_STREAM, step])
    return np.sort(rng.choice(num_probe_blocks, size=min(count, num_probe_blocks), replace=False))


def probe_row_ids(ids: np.ndarray) -> np.ndarray:
    """Probe ids as they travel in the gathered rows: ``-(id + 1)``, so they never collide with blocks."""
    return -(ids.astype(np.int64) + 1)


def split_probe_rows(rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Gathered rows → ``(training rows in global-batch order, probe rows)``."""
    is_probe = rows[:, 0] < 0
    return rows[~is_probe], rows[is_probe]


@dataclass
class Probes:
    """A run's probe set and its share of each step's probe blocks on this rank."""

    blocks: BlockView
    per_step: int
    """Probe blocks per step over all ranks (``lfr.probe_blocks`` rounded up to a multiple of them)."""
    seed: int
    rank: int
    world_size: int

    @classmethod
    def for_run(cls, cfg, seq_length: int, rank: int, world_size: int, barrier: Callable[[], None]) -> Probes | None:
        """The probes of run ``cfg`` (a :class:`~lfr_ds.config.TrainConfig`), or ``None`` without ``lfr.probe_path``."""
        if cfg.lfr.probe_path is None:
            return None
        view = BlockView(open_dataset(cfg.lfr.probe_path), seq_length, cfg.data.seed, rank=rank, barrier=barrier)
        per_rank = -(-min(cfg.lfr.probe_blocks, view.num_blocks) // world_size)
        return cls(view, per_rank * world_size, cfg.data.seed, rank, world_size)

    def my_ids(self, step: int) -> np.ndarray:
        """This rank's slice of step ``step``'s probe ids (ranks hold consecutive slices, as for blocks)."""
        ids = probe_ids(self.seed, step, self.blocks.num_blocks, self.per_step)
        k = -(-len(ids) // self.world_size)
        return ids[self.rank * k : (self.rank + 1) * k]

    def score(self, model, step: int, device: torch.device) -> torch.Tensor:
        """This rank's probe rows for step ``step`` (:func:`~lfr_ds.lfr.loss_table.step_rows`, negative ids):
        one forward, no gradient, the RNG as it was."""
        from lfr_ds.model.gpt import per_block_loss

        ids = self.my_ids(step)
        batch = torch.from_numpy(self.blocks.batch(ids)).to(device)
        with torch.no_grad(), forked_rng(device):
            out = per_block_loss(model, batch[:, :-1], batch[:, 1:], torch.ones_like(batch[:, 1:], dtype=torch.float32))
        return step_rows(probe_row_ids(ids), out.per_block, out.tokens, out.sketch)


@contextlib.contextmanager
def forked_rng(device: torch.device):
    """Every generator a forward may draw from (dropout) restored on exit: torch's CPU and CUDA default
    generators and, on a GPU, megatron's CUDA RNG tracker states."""
    tracker, states = None, None
    if device.type == "cuda":
        from megatron.core.tensor_parallel.random import get_cuda_rng_tracker

        tracker = get_cuda_rng_tracker()
        states = {k: v.clone() if isinstance(v, torch.Tensor) else v for k, v in tracker.get_states().items()}
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        yield
    if tracker is not None:
        tracker.set_states(states)
