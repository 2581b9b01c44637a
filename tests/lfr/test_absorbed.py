"""The absorbed test (issue 21) on tables built to a known truth."""

from __future__ import annotations

import math

import numpy as np
import pytest

from lfr_ds.lfr.absorbed import absorbed, window_steps
from lfr_ds.lfr.loss_table import LossTable

STEPS, BATCH, PROBES = 200, 100, 64


def _table(n: int) -> LossTable:
    return LossTable(n, 1, probes=True)


def _record(table: LossTable, step: int, ids: np.ndarray, relative: np.ndarray, probe_relative: np.ndarray) -> None:
    """One step: blocks whose loss is ``3 + offset``, probes ``3 + probe offset`` (the table takes the batch mean)."""
    losses = 3.0 + relative
    rows = np.stack([ids, losses, np.full(len(ids), 64)], axis=1)
    probe_rows = np.stack(
        [-(np.arange(len(probe_relative)) + 1), 3.0 + probe_relative, np.full(len(probe_relative), 64)], axis=1
    )
    table.update(rows, step, probe_rows)


def _spread(step: int) -> float:
    """The spread of relative losses shrinks as training goes on (a mixture the window must follow)."""
    return 2.0 - 1.5 * step / STEPS


@pytest.mark.parametrize("alpha", [0.1, 0.3])
def test_unseen_text_is_flagged_at_rate_alpha(alpha):
    """Every block is unseen text (one visit, its relative loss drawn from the probes' distribution at its
    step): the test flags alpha of them, within the binomial noise of the blocks and of the probes."""
    rng = np.random.default_rng(0)
    n = STEPS * BATCH
    table = _table(n)
    for step in range(STEPS):
        ids = np.arange(step * BATCH, (step + 1) * BATCH)
        table.update(
            np.stack([ids, 3.0 + rng.normal(0, _spread(step), BATCH), np.full(BATCH, 64)], axis=1),
            step,
            np.stack(
                [-np.arange(1, PROBES + 1), 3.0 + rng.normal(0, _spread(step), PROBES), np.full(PROBES, 64)], axis=1
            ),
        )
    result = absorbed(table, alpha)
    rate = result.mask.mean()
    # The batch mean is a sample mean, shared by blocks and probes alike; the noise is the blocks' binomial
    # and the quantiles' (each estimated from the probe records: 12,800 in all).
    sd = math.sqrt(alpha * (1 - alpha) * (1 / n + 1 / (STEPS * PROBES)))
    assert abs(rate - alpha) < 4 * sd, (rate, alpha, sd)
    assert result.one_visit == result.mask.sum() and result.two_visits == 0
    # A single global quantile would not do: early blocks (wide spread) would be flagged far more often.
    early = np.arange(n) < n // 4
    assert abs(result.mask[early].mean() - alpha) < 0.03


def test_copies_whose_twin_was_trained_are_flagged():
    """Planted copies: 3,000 texts, each as an original and a copy, two passes in random order. A visit to a
    text the model has trained on (itself or its twin, at an earlier step) scores 2 probe spreads below unseen
    text, with half its spread. Each visit then falls below the 0.1-quantile (-1.28) with probability
    Phi((2 - 1.28) / 0.5) = 0.925, both visits 0.86: the two-visit rule trades recall for precision."""
    rng = np.random.default_rng(1)
    texts = 3000
    twin = np.concatenate([np.arange(texts, 2 * texts), np.arange(texts)])
    n = 2 * texts
    table = _table(n)
    trained_at = np.full(texts, np.iinfo(np.int64).max)  # per text, the step it was first trained
    first_visit = np.full(n, -1)
    step = 0
    for _ in range(2):
        for ids in np.array_split(rng.permutation(n), n // BATCH):
            text = ids % texts
            seen_before = trained_at[text] < step
            relative = np.where(seen_before, rng.normal(-2.0, 0.5, len(ids)), rng.normal(0, 1, len(ids)))
            _record(table, step, ids.astype(float), relative, rng.normal(0, 1, PROBES))
            trained_at[text] = np.minimum(trained_at[text], step)
            first_visit[ids[first_visit[ids] < 0]] = step
            step += 1
    result = absorbed(table, 0.1)
    # A copy whose twin trained before its own first visit: every visit of it came after.
    twin_first = first_visit[twin]
    absorbed_copies = twin_first < first_visit
    assert absorbed_copies.sum() > 1000
    assert result.mask[absorbed_copies].mean() >= 0.8
    assert result.two_visits == result.mask.sum()  # every block was seen twice
    assert window_steps(table.probe_step) == 1


def test_never_seen_blocks_are_never_absorbed():
    table = _table(50)
    _record(table, 0, np.arange(10.0), np.full(10, -5.0) + np.arange(10) * 0.01, np.zeros(PROBES))
    result = absorbed(table, 0.5)
    assert not result.mask[10:].any()
