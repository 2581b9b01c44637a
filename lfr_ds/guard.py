"""Training hygiene: non-finite values stop the run; a diverged loss (far above ln V, the uniform guess,
from the first step) and a loss spike (against the statistics of the run's recent losses, which survive
phase boundaries, rewinds and resumes) are flagged, and a flagged step warns, stops, or rewinds the run to
its last checkpoint and skips the global batches around it; a run diverged for ``train.diverged_steps`` in
a row stops under any policy (``train.*``, :class:`~lfr_ds.config.GuardConfig`).

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
    """The run stopped on purpose (a non-finite value, a flagged step under ``stop``, the rewind cap, a run
    diverged for ``train.diverged_steps`` in a row): one line, exit non-zero on every rank, no checkpoint of
    the bad step."""


@dataclass
class SpikeDetector:
    """Running statistics of the step losses: the run's last ``window`` unflagged losses, across LFR phase
    boundaries, rewinds and resumes, of which the newest ``in_phase`` belong to the current phase."""

    window: int
    warmup: int
    sigmas: float
    ratio: float
    jump: float
    boundary: float
    phase: int = -1
    losses: list[float] = field(default_factory=list)
    in_phase: int = 0

    def judge(self, phase: int, loss: float) -> tuple[float | None, float | None, bool]:
        """``(zscore, level_ratio, spike)`` of ``loss``. ``level_ratio``: ``loss`` over the level, the mean
        of the phase's last (up to ``warmup``) losses, or at a phase's first step the previous phase's
        (``None`` on the run's first step); a spike above ``jump``, or at a phase's first step above
        ``boundary`` (a Focus on hard blocks moves the level by design). ``zscore``: window standard
        deviations above the phase's window mean, ``None`` in the phase's warm-up."""
        if phase != self.phase:  # the phase's own statistics restart; the previous level judges its first step
            self.phase, self.in_phase = phase, 0
        recent = self.losses[-min(self.in_phase or self.warmup, self.warmup) :]
        level = float(np.mean(recent)) if recent else 0.0
        level_ratio = loss / level if level > 0 else None
        spike = level_ratio is not None and level_ratio > (self.jump if self.in_phase else self.boundary)
        if self.in_phase < self.warmup:
            return None, level_ratio, spike
        x = np.asarray(self.losses[-self.in_phase :])
        std, mean = float(x.std()), float(x.mean())
        # Equal losses (std 0) give an infinite z for any rise; the ratio condition still has to hold.
        z = (loss - mean) / std if std > 0 else (math.inf if loss > mean else 0.0)
        return z, level_ratio, spike or (z > self.sigmas and loss > self.ratio * mean)

    def add(self, loss: float) -> None:
        self.losses = [*self.losses, loss][-self.window :]
        self.in_phase = min(self.in_phase + 1, self.window)


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
    """Phase-window standard deviations above the phase-window mean; ``None`` in a phase's warm-up."""
    spike: bool
    """Flagged by a rule: a loss spike, or (:attr:`diverged`) above the uniform guess."""
    rewind: bool = False
    """A flagged step under ``train.on_spike=rewind``: the run returns to its last checkpoint."""
    grad_norm: float = 0.0
    """The global gradient norm, once the update has run."""
    diverged: bool = False
    """More than ``train.diverge_margin`` nats above ln V."""
    why: str = ""
    """What flagged it, for the console."""
    level_ratio: float | None = None
    """The loss over the level it was judged against (``train.jump_ratio``, ``train.boundary_ratio``)."""

    @property
    def flag(self) -> str:
        """The rule that flagged it: ``diverged`` or ``loss spike``."""
        return "diverged" if self.diverged else "loss spike"

    @property
    def keep_rows(self) -> bool:
        """Whether the step's per-block losses may enter the loss table."""
        return not self.spike

    @property
    def warning(self) -> str:
        """The console line of a flagged step under ``train.on_spike=warn``."""
        return (
            f"warning: {self.flag} at step {self.step} (phase {self.phase[0]} {self.phase[1]}): {self.why}; its block "
            "losses are kept out of the loss table (train.on_spike=warn)"
        )


class Guard:
    """The step loop's hygiene checks and the run state they keep (identical on every rank). ``vocab_size``:
    the data's vocabulary (unpadded), whose uniform guess scores ln V."""

    def __init__(self, cfg: GuardConfig, vocab_size: int, state: GuardState | None = None) -> None:
        self.cfg = cfg
        self.uniform = math.log(vocab_size)  # ln V: the loss of a uniform guess over the vocabulary
        self.vocab_size = vocab_size
        self.detector = SpikeDetector(
            cfg.spike_window, cfg.spike_warmup, cfg.spike_sigmas, cfg.spike_ratio, cfg.jump_ratio, cfg.boundary_ratio
        )
        self.skipped: set[int] = set()  # 1-based steps whose global batch is skipped
        self.rewinds = 0
        self.spikes = 0  # flagged steps seen (warned, or rewound)
        self.diverged = 0  # diverged steps in a row, up to the last step checked
        self.last_checkpoint: tuple[int, str] | None = None  # (step, path) of the newest complete checkpoint
        if state is not None:
            self.load(state)

    # ---- run state: saved in every checkpoint's lfr/state.json (RunState.guard)
    def state(self) -> GuardState:
        d = self.detector
        return GuardState(
            skipped=sorted(self.skipped),
            rewinds=self.rewinds,
            spikes=self.spikes,
            phase=d.phase,
            losses=list(d.losses),
            in_phase=d.in_phase,
            diverged=self.diverged,
        )

    def load(self, state: GuardState) -> None:
        self.skipped = set(state.skipped)
        self.rewinds, self.spikes = state.rewinds, state.spikes
        self.detector.phase, self.detector.losses = state.phase, list(state.losses)
        # A state from before issue 27 held the phase's window only, and no divergence count.
        self.detector.in_phase = len(state.losses) if state.in_phase is None else state.in_phase
        self.diverged = state.diverged or 0

    def skips(self, step: int) -> bool:
        """Whether 1-based ``step``'s global batch was skipped by a rewind."""
        return step in self.skipped

    def saved(self, step: int, path: str) -> None:
        self.last_checkpoint = (step, str(path))

    def distrust(self, step: int, table_has_losses: bool) -> str | None:
        """Why a Focus starting after ``step`` completed steps must not rank blocks by the loss table, or
        ``None``: the run is diverged now (the table lacks every loss since, and the model that would
        train on the selection is not the one that scored it), or the guard kept every loss out of it."""
        if self.diverged:
            return (
                f"the run has diverged since step {step - self.diverged + 1} (its last {self.diverged} step losses "
                f"were more than train.diverge_margin={self.cfg.diverge_margin:g} nats above ln V = "
                f"{self.uniform:.2f}), so the loss table holds no trustworthy losses to rank blocks by"
            )
        if not table_has_losses and self.spikes:
            return f"the guard flagged every step so far ({self.spikes}), so the loss table holds no losses to rank by"
        return None

    # ---- checks
    def check_loss(self, step: int, phase: tuple[int, str], rows: np.ndarray) -> Verdict:
        """Check 1-based ``step``'s gathered rows ``[n, 3+]`` (block id, loss, tokens) before its update.
        Raises :class:`TrainingStopped` on a non-finite loss, on a flagged step under ``stop`` or past the
        rewind cap, and on the ``train.diverged_steps``-th diverged step in a row; otherwise returns the
        verdict (the caller warns or rewinds on ``spike``)."""
        losses = rows[:, 1]
        loss = float(losses.mean())
        if not math.isfinite(loss):
            bad = rows[~np.isfinite(losses), 0].astype(np.int64)
            shown = ", ".join(str(b) for b in bad[:5]) + (f" and {len(bad) - 5} more" if len(bad) > 5 else "")
            raise TrainingStopped(self._stop_line(step, phase, f"the loss is non-finite ({loss}; block(s) {shown})"))
        # Divergence first: it needs no statistics, so it holds from the run's first step, in every phase.
        diverged = loss > self.uniform + self.cfg.diverge_margin
        z, level_ratio, spike = self.detector.judge(phase[0], loss)
        if not (diverged or spike):
            self.diverged = 0
            self.detector.add(loss)
            return Verdict(step, phase, loss, z, False, level_ratio=level_ratio)
        self.spikes += 1
        if diverged:
            self.diverged += 1
            why = (
                f"the loss {loss:.4f} is more than train.diverge_margin={self.cfg.diverge_margin:g} nats "
                f"above ln V = {self.uniform:.2f}, a uniform guess over the {self.vocab_size:,}-token vocabulary"
            )
        else:
            self.diverged = 0
            why = f"{loss:.4f} is " + (
                f"{z:.1f} sigmas above the last {self.detector.in_phase} steps' mean"
                if z is not None and z > self.cfg.spike_sigmas and level_ratio <= self.cfg.jump_ratio
                else self._jump(level_ratio)
            )
        rewind = self.cfg.on_spike == "rewind"
        verdict = Verdict(step, phase, loss, z, True, rewind, diverged=diverged, why=why, level_ratio=level_ratio)
        self._stop_if(verdict)
        return verdict

    def _jump(self, level_ratio: float) -> str:
        d, cfg = self.detector, self.cfg
        if d.in_phase == 0:
            return (
                f"{level_ratio:.2f}x the previous phase's level at this phase's first step "
                f"(train.boundary_ratio={cfg.boundary_ratio:g})"
            )
        n = min(d.in_phase, cfg.spike_warmup)
        return f"{level_ratio:.2f}x the phase's level (its last {n} steps' mean; train.jump_ratio={cfg.jump_ratio:g})"

    def _stop_if(self, verdict: Verdict) -> None:
        """Stop on a flagged step, where ``train.on_spike`` (or a dead run) says so."""
        step, phase, why = verdict.step, verdict.phase, f"{verdict.flag}: {verdict.why}"
        if self.diverged >= self.cfg.diverged_steps:  # a dead run stops whatever on_spike says
            raise TrainingStopped(
                self._stop_line(
                    step,
                    phase,
                    f"{why}, for {self.diverged} steps in a row (train.diverged_steps={self.cfg.diverged_steps}): "
                    "the run is dead",
                    diverged_since=step - self.diverged + 1,
                )
            )
        if self.cfg.on_spike == "stop":
            raise TrainingStopped(self._stop_line(step, phase, why + " (train.on_spike=stop)"))
        if self.cfg.on_spike == "rewind":
            if self.rewinds >= self.cfg.max_rewinds:
                raise TrainingStopped(
                    self._stop_line(
                        step, phase, why + f", after {self.rewinds} rewinds (train.max_rewinds={self.cfg.max_rewinds})"
                    )
                )
            if self.last_checkpoint is None or self.last_checkpoint[0] >= step:
                raise TrainingStopped(
                    self._stop_line(
                        step, phase, why + ", and no checkpoint before it to rewind to (lower checkpoint.interval)"
                    )
                )

    def check_grad_norm(self, step: int, phase: tuple[int, str], grad_norm: float) -> None:
        """After the update: a non-finite global gradient norm (DeepSpeed skipped that update) stops the run."""
        if not math.isfinite(grad_norm):
            raise TrainingStopped(
                self._stop_line(
                    step, phase, f"the gradient norm is non-finite ({grad_norm}; DeepSpeed skipped the update)"
                )
            )

    def rewind(self, step: int) -> tuple[str, range]:
        """Plan the rewind for a flagged step ``step`` (1-based; :meth:`check_loss` made sure a checkpoint
        precedes it): records the skipped steps; returns the checkpoint to reload and the steps skipped."""
        c, path = self.last_checkpoint
        assert c < step, (c, step)
        skip = range(max(c + 1, step - self.cfg.rewind_skip + 1), step + 1)
        self.skipped.update(skip)
        self.rewinds += 1
        return path, skip

    def rewound(self, saved: GuardState | None) -> None:
        """After reloading a checkpoint whose run state holds ``saved`` (``None`` in one from before the
        guard): its statistics, and this run's skips, rewinds and flagged steps (which only grow)."""
        skipped, rewinds, spikes = self.skipped, self.rewinds, self.spikes
        self.load(saved or GuardState(skipped=[], rewinds=0, spikes=0, phase=-1, losses=[]))  # a fresh window
        self.skipped, self.rewinds, self.spikes = skipped | self.skipped, rewinds, spikes

    def _stop_line(self, step: int, phase: tuple[int, str], what: str, diverged_since: int | None = None) -> str:
        if self.last_checkpoint is None:
            last = "no checkpoint was saved before it (rerun starts from scratch)"
        elif diverged_since is not None and self.last_checkpoint[0] >= diverged_since:
            last = (
                f"the last checkpoint {self.last_checkpoint[1]} (step {self.last_checkpoint[0]}) was saved while the "
                f"run was diverged (since step {diverged_since}): fix the cause (e.g. lower optim.lr, set "
                "optim.grad_clip) and resume from a checkpoint before that step, or start over"
            )
        else:
            last = (
                f"last good checkpoint {self.last_checkpoint[1]} (step {self.last_checkpoint[0]}): fix the cause "
                "(e.g. lower optim.lr, set optim.grad_clip, or train.on_spike=rewind) and rerun the same command "
                "to resume from it"
            )
        return f"stopped at step {step} (phase {phase[0]} {phase[1]}): {what}; nothing of this step was applied; {last}"
