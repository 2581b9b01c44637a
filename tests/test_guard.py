"""The training guard in isolation: non-finite losses stop, the spike rule and its warm-up, phase resets,
rewind planning, the cap, and the run state round trip; and the loss table refusing non-finite rows."""

from __future__ import annotations

import dataclasses
import json
import math

import numpy as np
import pytest

from lfr_ds.config import GuardConfig, load_config
from lfr_ds.errors import UserError
from lfr_ds.guard import Guard, TrainingStopped
from lfr_ds.lfr.loss_table import LossTable
from lfr_ds.run_state import GuardState

LEARN = (0, "learn")


def rows(losses, first_id: int = 0) -> np.ndarray:
    """Gathered rows (block id, loss, tokens) for a batch with these per-block losses."""
    losses = np.asarray(losses, dtype=np.float64)
    return np.stack([np.arange(first_id, first_id + len(losses)), losses, np.full(len(losses), 64.0)], axis=1)


def feed(guard: Guard, losses, phase=LEARN, start: int = 1) -> list:
    return [guard.check_loss(start + i, phase, rows([x, x])) for i, x in enumerate(losses)]


def noisy(n: int, level: float = 6.0, seed: int = 0) -> list[float]:
    return list(level + 0.05 * np.random.default_rng(seed).standard_normal(n))


def test_a_non_finite_loss_stops_with_one_line_naming_step_phase_blocks_and_checkpoint():
    guard = Guard(GuardConfig())
    guard.saved(10, "runs/x/checkpoints/step_00000010")
    with pytest.raises(TrainingStopped) as e:
        guard.check_loss(12, (1, "focus"), rows([5.0, float("nan"), 5.0], first_id=40))
    msg = str(e.value)
    assert "\n" not in msg
    assert "step 12" in msg and "phase 1 focus" in msg and "loss is non-finite" in msg and "block(s) 41" in msg
    assert "runs/x/checkpoints/step_00000010 (step 10)" in msg and "resume" in msg
    with pytest.raises(TrainingStopped, match="loss is non-finite"):
        guard.check_loss(13, LEARN, rows([float("inf")]))


def test_a_non_finite_gradient_norm_stops_and_a_finite_one_passes():
    guard = Guard(GuardConfig())
    guard.check_grad_norm(3, LEARN, 1.5)
    with pytest.raises(TrainingStopped, match=r"gradient norm is non-finite \(inf; DeepSpeed skipped the update"):
        guard.check_grad_norm(4, LEARN, math.inf)


def test_no_spike_before_warm_up_and_none_on_noise_or_a_falling_loss():
    guard = Guard(GuardConfig(spike_warmup=10, spike_window=20))
    # A huge jump inside the warm-up cannot fire: the statistics are not there yet.
    assert not any(v.spike for v in feed(guard, [9.0, 8.0, 7.5, 7.0, 30.0]))
    guard = Guard(GuardConfig(spike_warmup=10, spike_window=20))
    falling = list(np.linspace(9.0, 4.0, 60) + 0.05 * np.random.default_rng(1).standard_normal(60))
    assert not any(v.spike for v in feed(guard, falling + noisy(100, 4.0)))


def test_a_spike_needs_both_the_sigmas_and_the_ratio():
    guard = Guard(GuardConfig(spike_warmup=10, spike_window=20, spike_sigmas=6.0, spike_ratio=1.1))
    feed(guard, noisy(20))
    # 6.4 is ~8 sigmas above a 6.0 +- 0.05 window but only 7 % above it: not a spike.
    assert not guard.check_loss(21, LEARN, rows([6.4, 6.4])).spike
    v = guard.check_loss(22, LEARN, rows([8.0, 8.0]))
    assert v.spike and v.zscore > 6 and not v.keep_rows
    # The spiking loss does not enter the statistics: the next spike is measured against the same window.
    assert guard.detector.losses[-1] != 8.0 and guard.check_loss(23, LEARN, rows([8.0, 8.0])).spike
    assert guard.spikes == 2


def test_a_new_phase_restarts_the_statistics():
    guard = Guard(GuardConfig(spike_warmup=10, spike_window=20))
    feed(guard, noisy(30, 5.0))
    # A Focus phase on hard blocks starts 40 % higher: a fresh warm-up, not a spike.
    assert not any(v.spike for v in feed(guard, noisy(15, 7.0, seed=2), phase=(1, "focus"), start=31))
    assert guard.check_loss(46, (1, "focus"), rows([12.0, 12.0])).spike


def test_stop_policy_raises_and_warn_does_not():
    cfg = dict(spike_warmup=5, spike_window=10)
    for policy, raises in (("warn", False), ("stop", True), ("rewind", False)):
        guard = Guard(GuardConfig(on_spike=policy, **cfg))
        guard.saved(3, "ck3")
        feed(guard, noisy(10))
        if raises:
            with pytest.raises(TrainingStopped, match=r"loss spike.*train.on_spike=stop.*ck3"):
                guard.check_loss(11, LEARN, rows([60.0]))
        else:
            assert guard.check_loss(11, LEARN, rows([60.0])).spike


def test_rewind_skips_the_batches_up_to_the_spike_after_the_checkpoint_and_caps():
    guard = Guard(GuardConfig(on_spike="rewind", rewind_skip=4, max_rewinds=2, spike_warmup=5, spike_window=10))
    guard.saved(10, "ck10")
    path, skip = guard.rewind(17)
    assert path == "ck10" and list(skip) == [14, 15, 16, 17] and guard.rewinds == 1
    # Never a step at or before the checkpoint: those batches are in it already.
    path, skip = guard.rewind(12)
    assert list(skip) == [11, 12] and guard.skipped == {11, 12, 14, 15, 16, 17}
    assert all(guard.skips(s) for s in (11, 17)) and not guard.skips(13)
    feed(guard, noisy(10), start=20)
    with pytest.raises(TrainingStopped, match=r"after 2 rewinds \(train.max_rewinds=2\)"):
        guard.check_loss(31, LEARN, rows([60.0]))


def test_a_spike_to_rewind_without_a_checkpoint_before_it_stops_before_the_update():
    guard = Guard(GuardConfig(on_spike="rewind", spike_warmup=5, spike_window=10))
    feed(guard, noisy(10))
    with pytest.raises(TrainingStopped, match=r"loss spike.*no checkpoint before it to rewind to"):
        guard.check_loss(11, LEARN, rows([60.0]))


def test_run_state_round_trips_through_json_exactly_and_rewound_keeps_the_skips():
    guard = Guard(GuardConfig(on_spike="rewind", rewind_skip=3, spike_warmup=5, spike_window=8))
    feed(guard, noisy(12, seed=3))
    guard.saved(12, "ck12")
    state = GuardState.from_json(json.loads(json.dumps(dataclasses.asdict(guard.state()))), "state.json")
    again = Guard(GuardConfig(on_spike="rewind", rewind_skip=3, spike_warmup=5, spike_window=8), state)
    assert again.state() == guard.state()
    # Both decide the same on the same next loss: the statistics are exact across a resume.
    assert again.check_loss(13, LEARN, rows([6.2])).zscore == guard.check_loss(13, LEARN, rows([6.2])).zscore
    guard.rewind(20)
    guard.rewound(state)
    assert guard.skipped == {18, 19, 20} and guard.rewinds == 1 and guard.detector.losses == state.losses


def test_config_validates_the_guard_settings():
    assert load_config(None, ["data.path=x"]).train.on_spike == "warn"
    with pytest.raises(UserError, match=r"train\.on_spike: 'skip'; use warn, stop or rewind"):
        load_config(None, ["data.path=x", "train.on_spike=skip"])
    with pytest.raises(UserError, match=r"train.spike_warmup: must be an integer in \[2, 50\]"):
        load_config(None, ["data.path=x", "train.spike_warmup=60"])
    with pytest.raises(UserError, match=r"train\.spike_ratio"):
        load_config(None, ["data.path=x", "train.spike_ratio=0.5"])
    with pytest.raises(UserError, match=r"train\.on_spike: rewind returns to the last checkpoint"):
        load_config(None, ["data.path=x", "train.on_spike=rewind", "checkpoint.interval=0"])


def test_loss_table_never_takes_a_non_finite_loss():
    table = LossTable(8, 1)
    table.update(rows([2.0, float("nan"), 3.0, float("inf")]), step=0)
    assert np.isfinite(table.loss[[0, 2]]).all() and np.isnan(table.loss[[1, 3]]).all()
    assert table.seen.tolist() == [1, 0, 1, 0, 0, 0, 0, 0]
    assert table.ref[0] == np.float32(2.5)  # the batch mean over the finite rows
    table.update(rows([float("nan")] * 2, first_id=4), step=1)
    assert table.seen[4:6].sum() == 0 and np.isnan(table.loss[4:6]).all()
