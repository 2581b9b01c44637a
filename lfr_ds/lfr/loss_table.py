"""The loss table: every block's training loss, gathered across data-parallel ranks at every step.

Each rank computes the mean loss of each block it trained on in the ordinary training forward pass
(no extra pass). :func:`gather_step` all-gathers those records as one float64 tensor
(:func:`step_rows`): 3 numbers a block (id, loss, tokens), plus the sketch when on. Ranks hold
consecutive slices of the global batch, so the gathered rows come back in global-batch order and every
rank ends up with the same table. Cost at GPT-2 1.5B scale, global batch 512: 512 × 24 B = 12 KiB per step,
or with the default
16-wide sketch 512 × 152 B = 78 KB, next to a ~3 GB bf16 gradient reduce-scatter per step: far below
0.1 % of the step's communication.

The table keeps, per block: the latest loss, the reference loss it is compared against (the mean
loss of the global batch it was recorded in: same model, same step), their difference at its previous
visit (so how much it improved since, relative to everything else), how often it was seen, the
step it was last seen, its loss at the end of every completed phase (its trajectory), and optionally
its latest hidden-state sketch. It is saved with every checkpoint as plain numpy arrays.

With probes (``lfr.probe_path``, issue 21) it also keeps every block's step at its previous visit and,
per probe block scored, ``(step, probe id, loss − the step's batch mean)``: the records the absorbed test
(:mod:`lfr_ds.lfr.absorbed`) calibrates against. Probe rows travel in the same gather as the blocks',
with negative ids (:func:`lfr_ds.lfr.probes.probe_row_ids`).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.distributed as dist

NAN = np.float32("nan")
#: The arrays a table with probes adds (issue 21).
PROBE_ARRAYS = ("prev_step", "probe_step", "probe_id", "probe_relative")


def step_rows(ids: np.ndarray, losses: torch.Tensor, tokens: torch.Tensor, sketch: torch.Tensor | None) -> torch.Tensor:
    """This rank's records of one step as the float64 rows :func:`gather_step` sends: ``[n, 3(+k)]``, one
    ``(block id, mean loss, tokens[, sketch])`` row per block, on the losses' device. float64 holds block
    ids exactly up to 2^53 and the float32 losses and sketches without rounding."""
    cols = [
        torch.as_tensor(ids, dtype=torch.float64, device=losses.device)[:, None],
        losses.double()[:, None],
        tokens.double()[:, None],
    ]
    if sketch is not None:
        cols.append(sketch.double())
    return torch.cat(cols, dim=1).contiguous()


def gather_step(mine: torch.Tensor) -> np.ndarray:
    """All-gather every rank's :func:`step_rows`; returns ``[global batch, 3(+k)]`` in global-batch order."""
    if not dist.is_initialized() or dist.get_world_size() == 1:
        return mine.cpu().numpy()
    parts = [torch.empty_like(mine) for _ in range(dist.get_world_size())]
    dist.all_gather(parts, mine)
    return torch.cat(parts).cpu().numpy()


class LossTable:
    """Per-block statistics, identical on every rank."""

    def __init__(self, num_blocks: int, num_phases: int, sketch_dim: int = 0, probes: bool = False) -> None:
        self.loss = np.full(num_blocks, NAN, dtype=np.float32)
        self.ref = np.full(num_blocks, NAN, dtype=np.float32)
        self.prev_relative = np.full(num_blocks, NAN, dtype=np.float32)
        self.seen = np.zeros(num_blocks, dtype=np.int32)
        self.last_step = np.full(num_blocks, -1, dtype=np.int32)
        # float16 keeps a 100M-block, 6-phase trajectory at 1.2 GB; its 3 significant digits are plenty
        # for losses of 0.01-20 nats.
        self.phase_loss = np.full((num_phases, num_blocks), np.float16("nan"), dtype=np.float16)
        self.sketch = np.zeros((num_blocks, sketch_dim), dtype=np.float16) if sketch_dim else None
        # probes (issue 21): absent (None) without probes, so a probe-less table, its checkpoint and its
        # digests stay as they were.
        self.prev_step = np.full(num_blocks, -1, dtype=np.int32) if probes else None
        self.probe_step = np.zeros(0, dtype=np.int32) if probes else None
        self.probe_id = np.zeros(0, dtype=np.int32) if probes else None
        self.probe_relative = np.zeros(0, dtype=np.float32) if probes else None

    @property
    def num_blocks(self) -> int:
        return len(self.loss)

    @property
    def has_probes(self) -> bool:
        return self.probe_step is not None and len(self.probe_step) > 0

    def update(self, rows: np.ndarray, step: int, probe_rows: np.ndarray | None = None) -> None:
        """Record one step's gathered rows (see :func:`gather_step`), and its probes' rows, if any, relative
        to the batch's mean loss. Rows with a non-finite loss are left out (their blocks stay as they were,
        unseen if never seen): the training guard stops the run on them before this, and the table keeps
        that invariant itself."""
        rows = rows[np.isfinite(rows[:, 1])]
        if probe_rows is not None:
            probe_rows = probe_rows[np.isfinite(probe_rows[:, 1])]
        if not len(rows):
            return
        ids = rows[:, 0].astype(np.int64)
        losses = rows[:, 1].astype(np.float32)
        batch_mean = np.float32(rows[:, 1].mean())
        # A focus phase samples with replacement, so a block can appear twice in one batch: its last
        # row wins, and each appearance counts as a visit.
        self.prev_relative[ids] = self.loss[ids] - self.ref[ids]
        self.loss[ids] = losses
        self.ref[ids] = batch_mean
        if self.prev_step is not None:
            self.prev_step[ids] = self.last_step[ids]
        if probe_rows is not None and len(probe_rows):
            self._record_probes(probe_rows, step, batch_mean)
        np.add.at(self.seen, ids, 1)
        self.last_step[ids] = step
        if self.sketch is not None:
            # Relative to the batch, like the loss: the representation drifts as the model trains, and a
            # sketch kept raw would cluster blocks by when they were seen rather than by what they say.
            sketch = rows[:, 3:]
            self.sketch[ids] = (sketch - sketch.mean(axis=0)).astype(np.float16)

    def _record_probes(self, probe_rows: np.ndarray, step: int, batch_mean: np.float32) -> None:
        """Append one step's probe records (growing arrays: a few per step, ~12 bytes each)."""
        if self.probe_step is None:  # probes switched on at a resume: earlier visits' steps are unknown (-1)
            self.prev_step = np.full(self.num_blocks, -1, dtype=np.int32)
            self.probe_step, self.probe_id = np.zeros(0, dtype=np.int32), np.zeros(0, dtype=np.int32)
            self.probe_relative = np.zeros(0, dtype=np.float32)
        n = len(probe_rows)
        self.probe_step = np.concatenate([self.probe_step, np.full(n, step, dtype=np.int32)])
        self.probe_id = np.concatenate([self.probe_id, (-probe_rows[:, 0] - 1).astype(np.int32)])
        self.probe_relative = np.concatenate([self.probe_relative, probe_rows[:, 1].astype(np.float32) - batch_mean])

    def end_phase(self, index: int) -> None:
        """Snapshot every block's latest loss as its loss at the end of phase ``index``."""
        self.phase_loss[index] = self.loss

    def arrays(self) -> dict[str, np.ndarray]:
        out = {
            "loss": self.loss,
            "ref": self.ref,
            "prev_relative": self.prev_relative,
            "seen": self.seen,
            "last_step": self.last_step,
            "phase_loss": self.phase_loss,
        }
        if self.sketch is not None:
            out["sketch"] = self.sketch
        for name in PROBE_ARRAYS:
            if getattr(self, name) is not None:
                out[name] = getattr(self, name)
        return out

    @classmethod
    def from_arrays(cls, arrays: dict[str, np.ndarray], num_phases: int = 0) -> LossTable:
        """The table :meth:`arrays` saved, with room for at least ``num_phases`` phases (a resumed run
        may have added phases to its schedule)."""
        table = cls.__new__(cls)
        table.loss, table.ref, table.seen = arrays["loss"], arrays["ref"], arrays["seen"]
        table.prev_relative = arrays["prev_relative"]
        table.last_step, table.phase_loss = arrays["last_step"], arrays["phase_loss"]
        if num_phases > len(table.phase_loss):
            more = np.full((num_phases - len(table.phase_loss), table.num_blocks), np.float16("nan"), dtype=np.float16)
            table.phase_loss = np.concatenate([table.phase_loss, more])
        table.sketch = arrays.get("sketch")
        for name in PROBE_ARRAYS:
            setattr(table, name, arrays.get(name))
        return table
