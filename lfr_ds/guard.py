"""Training hygiene: non-finite values stop the run, loss spikes are detected, and a spike warns, stops, or
rewinds the run to its last checkpoint and skips the global batches around it (``train.*``,
:class:`~lfr_ds.config.GuardConfig`).

Every decision is made from numbers that are already identical on every rank, so the ranks agree without
a collective of their own:

- the step's loss: the mean of the all-gathered per-block losses (:func:`~lfr_ds.lfr.loss_table.gather_step`
  already brings every rank's rows to every rank, so one rank's NaN is every rank's NaN);
- the global gradient norm: DeepSpeed all-reduces it to clip by it, on every rank.

The loss is checked *before* the step's optimizer update (the boundary ``engine.step()``), so a
non-finite or spiking step is never applied. A non-finite gradient norm can only be seen inside that
update: DeepSpeed 0.19 then skips it itself (ZeRO-2 in fp32, ZeRO-3 in any precision, ZeRO-2 in bf16
with ``bf16.check_grad_overflow``, on by default: each flags the step as an overflow, zeroes the
gradients and reports an infinite norm), and the guard stops the run before any checkpoint.

Cost per step: a sum over the gathered losses (``global_batch`` floats) and an O(``spike_window``)
mean and variance, on the host; no tensor, no kernel, no communication beyond what the step already
does. See ``bench/spikes.py``.

Skipping (``rewind``): after a spike at step s the run reloads checkpoint c < s and marks the steps
``max(c + 1, s - rewind_skip + 1) .. s`` as skipped. A skipped step consumes its global batch's place in
the phase's sample index, the learning-rate schedule and the step count, with no forward, backward or
update; so phase boundaries and the data order stay a function of (phase files, seed, global batch,
steps, skipped steps), and the run ends at ``steps`` with fewer optimizer updates. The skipped steps,
the rewinds and the spike statistics are part of the run state saved with every checkpoint.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from lfr_ds.config import GuardConfig
from lfr_ds.errors import UserError
from lfr_ds.run_state import GuardState


class TrainingStopped(UserError):
    """The run stopped on purpose (a non-finite value, a spike under ``stop``, the rewind cap): one line,
    exit non-zero on every rank, no checkpoint of the bad step."""


@dataclass
class SpikeDetector:
    """Running statistics of one phase's step losses: the last ``window`` non-spiking losses."""

    window: int
    warmup: int
    sigmas: float
    ratio: float
    phase: int = -1
    losses: list[float] = field(default_factory=list)

    def zscore(self, phase: int, loss: float) -> float | None:
        """How many window standard deviations ``loss`` lies above the window mean; ``None`` while the
        phase's window holds fewer than ``warmup`` losses. The first loss of a new phase empties the window."""
        if phase != self.phase:  # a new phase starts its own statistics (a Focus phase raises the level)
            self.phase, self.losses = phase, []
        if len(self.losses) < self.warmup:
            return None
        x = np.asarray(self.losses)
        std = float(x.std())
        mean = float(x.mean())
        # Equal losses (std 0) give an infinite z for any rise; the ratio condition still has to hold.
        return (loss - mean) / std if std > 0 else (math.inf if loss > mean else 0.0)

    def is_spike(self, z: float | None, loss: float) -> bool:
        return z is not None and z > self.sigmas and loss > self.ratio * float(np.mean(self.losses))

    def add(self, loss: float) -> None:
        self.losses = [*self.losses, loss][-self.window :]


@dataclass
class Verdict:
    """What the guard found in one step's losses, before its update."""

    step: int
    """The 1-based step."""
    phase: tuple[int, str]
    """Its phase's index and kind."""
    loss: float
    """The global batch's mean loss."""
    zscore: float | None
    """Window standard deviations above the window mean; ``None`` in a phase's warm-up."""
    spike: bool
    rewind: bool = False
    """A spike under ``train.on_spike=rewind``: the run returns to its last checkpoint."""
    grad_norm: float = 0.0
    """The global gradient norm, once the update has run."""

    @property
    def keep_rows(self) -> bool:
        """Whether the step's per-block losses may enter the loss table."""
        return not self.spike

    @property
    def warning(self) -> str:
        """The console line of a spike under ``train.on_spike=warn``."""
        return (
            f"warning: loss spike at step {self.step} (phase {self.phase[0]} {self.phase[1]}): {self.loss:.4f} is "
            f"{self.zscore:.1f} sigmas above the running mean; its block losses are kept out of the loss table "
            "(train.on_spike=warn)"
        )


class Guard:
    """The step loop's hygiene checks and the run state they keep (identical on every rank)."""

    def __init__(self, cfg: GuardConfig, state: GuardState | None = None) -> None:
        self.cfg = cfg
        self.detector = SpikeDetector(cfg.spike_window, cfg.spike_warmup, cfg.spike_sigmas, cfg.spike_ratio)
        self.skipped: set[int] = set()  # 1-based steps whose global batch is skipped
        self.rewinds = 0
        self.spikes = 0  # spikes seen (warned, or rewound)
        self.last_checkpoint: tuple[int, str] | None = None  # (step, path) of the newest complete checkpoint
        if state is not None:
            self.load(state)

    # ---- run state: saved in every checkpoint's lfr/state.json (RunState.guard)
    def state(self) -> GuardState:
        return GuardState(
            skipped=sorted(self.skipped),
            rewinds=self.rewinds,
            spikes=self.spikes,
            phase=self.detector.phase,
            losses=list(self.detector.losses),
        )

    def load(self, state: GuardState) -> None:
        self.skipped = set(state.skipped)
        self.rewinds, self.spikes = state.rewinds, state.spikes
        self.detector.phase, self.detector.losses = state.phase, list(state.losses)

    def skips(self, step: int) -> bool:
        """Whether 1-based ``step``'s global batch was skipped by a rewind."""
        return step in self.skipped

    def saved(self, step: int, path: str) -> None:
        self.last_checkpoint = (step, str(path))

    # ---- checks
    def check_loss(self, step: int, phase: tuple[int, str], rows: np.ndarray) -> Verdict:
        """Check 1-based ``step``'s gathered rows ``[n, 3+]`` (block id, loss, tokens) before its update.
        Raises :class:`TrainingStopped` on a non-finite loss, and on a spike under ``stop`` or past the
        rewind cap; otherwise returns the verdict (the caller warns or rewinds on ``spike``)."""
        losses = rows[:, 1]
        loss = float(losses.mean())
        if not math.isfinite(loss):
            bad = rows[~np.isfinite(losses), 0].astype(np.int64)
            shown = ", ".join(str(b) for b in bad[:5]) + (f" and {len(bad) - 5} more" if len(bad) > 5 else "")
            raise TrainingStopped(self._stop_line(step, phase, f"the loss is non-finite ({loss}; block(s) {shown})"))
        z = self.detector.zscore(phase[0], loss)
        spike = self.detector.is_spike(z, loss)
        if not spike:
            self.detector.add(loss)
            return Verdict(step, phase, loss, z, False)
        self.spikes += 1
        what = f"loss spike: {loss:.4f} is {z:.1f} sigmas above the last {len(self.detector.losses)} steps' mean"
        if self.cfg.on_spike == "stop":
            raise TrainingStopped(self._stop_line(step, phase, what + " (train.on_spike=stop)"))
        if self.cfg.on_spike == "rewind":
            if self.rewinds >= self.cfg.max_rewinds:
                raise TrainingStopped(
                    self._stop_line(
                        step, phase, what + f", after {self.rewinds} rewinds (train.max_rewinds={self.cfg.max_rewinds})"
                    )
                )
            if self.last_checkpoint is None or self.last_checkpoint[0] >= step:
                raise TrainingStopped(
                    self._stop_line(
                        step, phase, what + ", and no checkpoint before it to rewind to (lower checkpoint.interval)"
                    )
                )
        return Verdict(step, phase, loss, z, True, rewind=self.cfg.on_spike == "rewind")

    def check_grad_norm(self, step: int, phase: tuple[int, str], grad_norm: float) -> None:
        """After the update: a non-finite global gradient norm (DeepSpeed skipped that update) stops the run."""
        if not math.isfinite(grad_norm):
            raise TrainingStopped(
                self._stop_line(
                    step, phase, f"the gradient norm is non-finite ({grad_norm}; DeepSpeed skipped the update)"
                )
            )

    def rewind(self, step: int) -> tuple[str, range]:
        """Plan the rewind for a spike at 1-based ``step`` (:meth:`check_loss` made sure a checkpoint
        precedes it): records the skipped steps; returns the checkpoint to reload and the steps skipped."""
        c, path = self.last_checkpoint
        assert c < step, (c, step)
        skip = range(max(c + 1, step - self.cfg.rewind_skip + 1), step + 1)
        self.skipped.update(skip)
        self.rewinds += 1
        return path, skip

    def rewound(self, saved: GuardState | None) -> None:
        """After reloading a checkpoint whose run state holds ``saved`` (``None`` in one from before the
        guard): its spike statistics, and this run's skips and rewinds (which only grow)."""
        skipped, rewinds, spikes = self.skipped, self.rewinds, self.spikes
        self.load(saved or GuardState(skipped=[], rewinds=0, spikes=0, phase=-1, losses=[]))  # a fresh window
        self.skipped, self.rewinds, self.spikes = skipped | self.skipped, rewinds, spikes

    def _stop_line(self, step: int, phase: tuple[int, str], what: str) -> str:
        if self.last_checkpoint is None:
            last = "no checkpoint was saved before it (rerun starts from scratch)"
        else:
            last = (
                f"last good checkpoint {self.last_checkpoint[1]} (step {self.last_checkpoint[0]}): fix the cause "
                "(e.g. lower optim.lr, set optim.grad_clip, or train.on_spike=rewind) and rerun the same command "
                "to resume from it"
            )
        return f"stopped at step {step} (phase {phase[0]} {phase[1]}): {what}; nothing of this step was applied; {last}"
