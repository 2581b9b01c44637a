"""The absorbed test (issue 21): has the model trained on this block, or on a copy of it?

From one block's loss alone the table cannot tell "easy because it is simple" from "easy because the
model has trained on it or its twin". The probes (:mod:`lfr_ds.lfr.probes`) can: they are text of the
same corpus that the model has never trained on, scored at the same steps, with the same weights, and
recorded relative to the same batch means. So a seen block counts as **absorbed** when its relative
loss at a visit is below the α-quantile of the probes' relative losses over a window of steps around
that visit; where it has had two visits, it must be below at both (one visit's loss is a noisy sample).

- A block at its first visit is itself unseen text, drawn from the probes' distribution: it is flagged
  with probability α, whatever the mixture (a unit test checks α ± noise). Its false-drop rate is α.
- A copy whose twin was already trained sits below the probes: it is flagged.
- The window (at least :data:`MIN_WINDOW_RECORDS` probe records, steps on both sides) follows the
  probes' distribution as training moves it; a global quantile would flag early blocks too rarely
  and late ones too often, or the reverse.

A pure function of the loss table (its probe records included), so ``lfr-rewrite`` replays it offline.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from lfr_ds.lfr.loss_table import LossTable

#: Probe records a window holds at least: with 128, the α = 0.1 quantile's own error is about
#: sqrt(α(1 − α) / 128) = 2.7 points of α for that window; neighbouring windows share most of it.
MIN_WINDOW_RECORDS = 128


@dataclass(frozen=True)
class Absorbed:
    """What the test decided."""

    mask: np.ndarray
    """bool per block: absorbed (never-seen blocks never are)."""
    quantile: float
    """The α-quantile of all the probes' relative losses (for the manifest; each visit is compared
    against its own window's)."""
    one_visit: int
    """Blocks flagged on their one visit."""
    two_visits: int
    """Blocks flagged below the window's quantile at both of their last two visits."""

    def fields(self, alpha: float) -> dict:
        """The ``auto_drop`` manifest entries."""
        return {
            "criterion": f"relative loss below the probes' {alpha}-quantile around the visit, "
            "at both visits where seen twice",
            "alpha": alpha,
            "probe_quantile": round(self.quantile, 4),
            "absorbed_one_visit": self.one_visit,
            "absorbed_two_visits": self.two_visits,
        }


def window_steps(probe_step: np.ndarray) -> int:
    """Half-width, in steps, of a window holding at least :data:`MIN_WINDOW_RECORDS` probe records."""
    per_step = len(probe_step) / max(1, len(np.unique(probe_step)))
    return max(1, math.ceil(MIN_WINDOW_RECORDS / (2 * per_step)))


def step_quantiles(table: LossTable, alpha: float, last_step: int) -> np.ndarray:
    """Per step 0..``last_step``, the α-quantile of the probes' relative losses recorded within
    :func:`window_steps` of it (float32; NaN where the window holds no record)."""
    order = np.argsort(table.probe_step, kind="stable")
    steps, rel = table.probe_step[order], table.probe_relative[order]
    half = window_steps(steps)
    centre = np.arange(last_step + 1)
    lo = np.searchsorted(steps, centre - half, side="left")
    hi = np.searchsorted(steps, centre + half, side="right")
    out = np.full(last_step + 1, np.nan, dtype=np.float32)
    for s in np.flatnonzero(hi > lo):
        out[s] = np.quantile(rel[lo[s] : hi[s]], alpha)
    return out


def absorbed(table: LossTable, alpha: float) -> Absorbed:
    """The absorbed blocks of ``table`` (which must hold probe records) at level ``alpha``."""
    seen = table.seen > 0
    last = int(max(table.last_step.max(), table.probe_step.max(), 0))
    q = step_quantiles(table, alpha, last)
    relative = np.subtract(table.loss, table.ref)
    mask = seen & (relative < q[np.clip(table.last_step, 0, last)])  # NaN (no window) compares False
    twice = seen & (table.prev_step >= 0) & np.isfinite(table.prev_relative)
    mask &= ~twice | (table.prev_relative < q[np.clip(table.prev_step, 0, last)])
    return Absorbed(
        mask, float(np.quantile(table.probe_relative, alpha)), int((mask & ~twice).sum()), int((mask & twice).sum())
    )
