"""``lfr.drop_mask``, the experiment hook behind lfr-compare's oracle arm: Focus drops exactly the masked blocks."""

from __future__ import annotations

import numpy as np
import pytest

from lfr_ds.config import LFRConfig
from lfr_ds.errors import UserError
from lfr_ds.lfr import reporter
from lfr_ds.lfr.drop_mask import read_drop_mask, write_drop_mask
from lfr_ds.lfr.focus import focus_selection
from lfr_ds.lfr.loss_table import LossTable
from lfr_ds.lfr.schedule import Phase


def _table(n: int, seed: int = 0) -> LossTable:
    """Every block seen once, losses around their batch's mean."""
    rng = np.random.default_rng(seed)
    table = LossTable(n, 2)
    rows = np.column_stack([np.arange(n), 5.0 + rng.normal(0, 0.5, n), np.full(n, 64.0)])
    for step, batch in enumerate(np.split(rows, n // 20)):
        table.update(batch, step)
    return table


@pytest.mark.parametrize(
    "phase",
    [
        Phase(1, "focus", 100, 40, 0.5),
        Phase(1, "focus", 100, 40, 0.0, auto_drop=True),
        Phase(1, "focus", 100, 40, 0.5, kept_passes=1.0),
    ],
)
def test_focus_drops_exactly_the_masked_blocks_and_draws_the_rest_as_lfr_does(tmp_path, phase):
    n = 2000
    table = _table(n)
    # The mask is not the easiest blocks: a plain drop at @0.5 would take others.
    drop = np.random.default_rng(1).random(n) < 0.3
    drop[:7] = True  # and a few past the last whole byte of the packing
    path = tmp_path / "drop.npy"
    write_drop_mask(path, drop)
    options = LFRConfig(drop_mask=str(path))
    sel = focus_selection(table, phase, global_batch=20, seed=[1, 1], options=options)
    assert np.array_equal(sel.keep, ~drop)
    assert not drop[sel.order].any() and len(sel.order) == sel.steps * 20
    fields = reporter.focus_fields(sel, table.seen, np.zeros(n, dtype=int), ["all"], options, phase.drop)
    assert fields["dropped"] == drop.sum() and fields["drop_fraction"] == round(drop.mean(), 4)
    if phase.kept_passes is not None:  # one pass over what the mask keeps
        assert sel.steps == round(-(-(~drop).sum() // 20))
    # Without the hook, the same phase drops by difficulty: not the mask.
    plain = focus_selection(table, phase, global_batch=20, seed=[1, 1], options=LFRConfig()).keep
    assert not np.array_equal(plain, ~drop)


def test_a_mask_of_another_length_or_a_missing_one_is_refused(tmp_path):
    path = tmp_path / "drop.npy"
    write_drop_mask(path, np.ones(17, dtype=bool))
    assert read_drop_mask(path, 17).all()
    with pytest.raises(UserError, match="is not a packed mask of this run's 40 blocks"):
        read_drop_mask(path, 40)
    write_drop_mask(path, np.ones(20, dtype=bool))  # the same 3 bytes as 17 blocks'
    with pytest.raises(UserError, match="names blocks past this run's 17"):
        read_drop_mask(path, 17)
    with pytest.raises(UserError, match=r"nope\.npy: unreadable"):
        read_drop_mask(tmp_path / "nope.npy", 17)
