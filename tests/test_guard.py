"""The training guard in isolation: non-finite losses stop, the divergence rule (no warm-up), the spike rules
(the run-wide level across phases, the phase's own statistics after its warm-up), rewind planning, the cap,
a dead run, the run state round trip and a resume deciding as the uninterrupted run; and the loss table
refusing non-finite rows."""

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
from lfr_ds.metrics import console_ppl
from lfr_ds.run_state import GuardState

LEARN = (0, "learn")
FOCUS = (1, "focus")
#: GPT-2's vocabulary: ln V = 10.8, so divergence (above 13.8) stays out of the way of the spike tests' losses.
VOCAB = 50257


def rows(losses, first_id: int = 0) -> np.ndarray:
    """Gathered rows (block id, loss, tokens) for a batch with these per-block losses."""
    losses = np.asarray(losses, dtype=np.float64)
    return np.stack([np.arange(first_id, first_id + len(losses)), losses, np.full(len(losses), 64.0)], axis=1)


def feed(guard: Guard, losses, phase=LEARN, start: int = 1) -> list:
    return [guard.check_loss(start + i, phase, rows([x, x])) for i, x in enumerate(losses)]


def noisy(n: int, level: float = 6.0, seed: int = 0) -> list[float]:
    return list(level + 0.05 * np.random.default_rng(seed).standard_normal(n))


def test_a_non_finite_loss_stops_with_one_line_naming_step_phase_blocks_and_checkpoint():
    guard = Guard(GuardConfig(), VOCAB)
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
    guard = Guard(GuardConfig(), VOCAB)
    guard.check_grad_norm(3, LEARN, 1.5)
    with pytest.raises(TrainingStopped, match=r"gradient norm is non-finite \(inf; DeepSpeed skipped the update"):
        guard.check_grad_norm(4, LEARN, math.inf)


def test_the_phase_rule_waits_for_its_warm_up_and_none_fires_on_noise_or_a_falling_loss():
    guard = Guard(GuardConfig(spike_warmup=10, spike_window=20), VOCAB)
    # A 1.3x rise (under train.jump_ratio) inside the warm-up cannot fire: the phase's statistics are not there yet.
    assert not any(v.spike for v in feed(guard, [6.0, 6.02, 5.98, 6.01, 7.8]))
    guard = Guard(GuardConfig(spike_warmup=10, spike_window=20), VOCAB)
    # The same rise past the warm-up is ~36 sigmas and 1.3x the phase's mean: a spike.
    assert [v.spike for v in feed(guard, [*noisy(10), 7.8])] == [False] * 10 + [True]
    guard = Guard(GuardConfig(spike_warmup=10, spike_window=20), VOCAB)
    falling = list(np.linspace(9.0, 4.0, 60) + 0.05 * np.random.default_rng(1).standard_normal(60))
    assert not any(v.spike for v in feed(guard, falling + noisy(100, 4.0)))


def test_a_spike_needs_both_the_sigmas_and_the_ratio():
    guard = Guard(GuardConfig(spike_warmup=10, spike_window=20, spike_sigmas=6.0, spike_ratio=1.1), VOCAB)
    feed(guard, noisy(20))
    # 6.4 is ~8 sigmas above a 6.0 +- 0.05 window but only 7 % above it: not a spike.
    assert not guard.check_loss(21, LEARN, rows([6.4, 6.4])).spike
    v = guard.check_loss(22, LEARN, rows([8.0, 8.0]))
    assert v.spike and v.zscore > 6 and not v.keep_rows
    # The spiking loss does not enter the statistics: the next spike is measured against the same window.
    assert guard.detector.losses[-1] != 8.0 and guard.check_loss(23, LEARN, rows([8.0, 8.0])).spike
    assert guard.spikes == 2


def test_a_new_phase_restarts_its_own_statistics_but_not_the_runs_level():
    guard = Guard(GuardConfig(spike_warmup=10, spike_window=20), VOCAB)
    feed(guard, noisy(30, 5.0))
    # A Focus phase on hard blocks starts 40 % higher: under train.boundary_ratio, and the phase's own
    # statistics start over, so not a spike.
    assert not any(v.spike for v in feed(guard, noisy(15, 7.0, seed=2), phase=FOCUS, start=31))
    assert guard.detector.in_phase == 15 and len(guard.detector.losses) == 20
    assert guard.check_loss(46, FOCUS, rows([12.0, 12.0])).spike


def test_a_doubled_loss_in_the_first_steps_after_a_boundary_fires_with_the_defaults():
    guard = Guard(GuardConfig(), VOCAB)
    feed(guard, noisy(40, 5.0))
    # The phase's own z-scores need 20 steps; its level is there from its second step.
    verdicts = feed(guard, [5.1, 5.0, 10.0], phase=FOCUS, start=41)
    assert [v.spike for v in verdicts] == [False, False, True]
    assert verdicts[2].zscore is None and not verdicts[2].diverged
    assert "1.98x the phase's level (its last 2 steps' mean; train.jump_ratio=1.75)" in verdicts[2].warning
    # At the phase's very first step a Focus may move the level (1.7x on the demo's planted corpus), not 3x.
    guard = Guard(GuardConfig(diverge_margin=100), VOCAB)  # no divergence here: the boundary rule alone
    feed(guard, noisy(40, 5.0))
    assert not feed(guard, [8.5], phase=FOCUS, start=41)[0].spike  # 1.7x
    v = feed(guard, [16.0], phase=(2, "review"), start=42)[0]  # 3.1x the last 20 steps' mean (19 x 5, 8.5)
    assert v.spike and "at this phase's first step (train.boundary_ratio=3)" in v.warning


def test_five_step_phases_with_a_climb_from_step_2_fire_in_the_first_phase():
    """Issue 27: a climb that starts in a phase's warm-up; the vocabulary is the issue's (ln 1024 = 6.93)."""
    guard = Guard(GuardConfig(), 1024)
    climb = [6.95, 7.6, 8.7, 10.2, 12.0, 15.0, 19.0, 25.0, 33.0, 45.0]
    fired = []
    for i, loss in enumerate(climb):
        v = guard.check_loss(i + 1, (i // 5, ("learn", "focus")[i // 5]), rows([loss, loss]))
        fired += [(v.step, v.phase[0], v.diverged)] if v.spike else []
    assert fired[0] == (4, 0, True), fired  # 10.2 > ln 1024 + 3 = 9.93, in phase 0 (steps 1-5)
    assert all(d for _, _, d in fired) and len(fired) == 7
    # Under stop: one line naming the step, the loss and ln V.
    guard = Guard(GuardConfig(on_spike="stop"), 1024)
    feed(guard, climb[:3])
    with pytest.raises(TrainingStopped) as e:
        guard.check_loss(4, LEARN, rows([10.2, 10.2]))
    msg = str(e.value)
    assert (
        msg.startswith("stopped at step 4 (phase 0 learn): diverged: the loss 10.2000 is more than ")
        and "\n" not in msg
    )
    assert "ln V = 6.93, a uniform guess over the 1,024-token vocabulary (train.on_spike=stop)" in msg


def test_divergence_needs_no_statistics_and_spares_a_healthy_start():
    # A first step near ln V (an untrained model; the padding rows add a little) is not divergence ...
    assert not Guard(GuardConfig(), 1024).check_loss(1, LEARN, rows([math.log(1024) + 2.9] * 2)).spike
    # ... 3 nats above it is, on the run's very first step.
    v = Guard(GuardConfig(), 1024).check_loss(1, LEARN, rows([math.log(1024) + 3.1] * 2))
    assert v.spike and v.diverged and not v.keep_rows and v.warning.startswith("warning: diverged at step 1 (phase 0")


def test_a_run_diverged_for_diverged_steps_in_a_row_is_dead_even_under_warn():
    guard = Guard(GuardConfig(diverged_steps=4), 1024)
    guard.saved(2, "ck2")
    feed(guard, [6.9, 6.8])
    # Three diverged steps, then one that recovers: the count starts over.
    assert all(v.diverged for v in feed(guard, [50.0, 60.0, 70.0], start=3)) and guard.diverged == 3
    assert not feed(guard, [6.7], start=6)[0].spike and guard.diverged == 0
    feed(guard, [50.0, 60.0, 70.0], start=7)
    assert guard.distrust(9, True).startswith("the run has diverged since step 7 (its last 3 step losses")
    with pytest.raises(TrainingStopped) as e:
        guard.check_loss(10, FOCUS, rows([80.0]))
    msg = str(e.value)
    assert "stopped at step 10 (phase 1 focus): diverged: the loss 80.0000" in msg
    assert "for 4 steps in a row (train.diverged_steps=4): the run is dead" in msg and "ck2 (step 2)" in msg
    # A checkpoint saved while diverged is named as such: resuming from it resumes a dead run.
    guard.saved(8, "ck8")
    with pytest.raises(TrainingStopped, match=r"ck8 \(step 8\) was saved while the run was diverged \(since step 7\)"):
        guard.check_loss(11, FOCUS, rows([80.0]))


def test_a_focus_distrusts_the_table_only_when_diverged_or_left_empty_by_the_guard():
    guard = Guard(GuardConfig(), 1024)
    assert guard.distrust(0, False) is None  # nothing flagged: an empty table is the schedule's own error
    feed(guard, [6.9, 6.5, 6.1])
    assert guard.distrust(3, True) is None
    guard = Guard(GuardConfig(), 1024)
    feed(guard, [50.0, 60.0])
    assert "since step 1" in guard.distrust(2, False)
    guard.check_loss(3, LEARN, rows([6.9]))
    assert guard.distrust(3, True) is None  # recovered, and the table holds step 3's losses
    assert "flagged every step so far (2)" in guard.distrust(3, False)


def test_stop_policy_raises_and_warn_does_not():
    cfg = dict(spike_warmup=5, spike_window=10)
    for policy, raises in (("warn", False), ("stop", True), ("rewind", False)):
        guard = Guard(GuardConfig(on_spike=policy, **cfg), VOCAB)
        guard.saved(3, "ck3")
        feed(guard, noisy(10))
        if raises:
            with pytest.raises(TrainingStopped, match=r"loss spike.*train.on_spike=stop.*ck3"):
                guard.check_loss(11, LEARN, rows([12.0]))
        else:
            assert guard.check_loss(11, LEARN, rows([12.0])).spike


def test_rewind_skips_the_batches_up_to_the_spike_after_the_checkpoint_and_caps():
    guard = Guard(GuardConfig(on_spike="rewind", rewind_skip=4, max_rewinds=2, spike_warmup=5, spike_window=10), VOCAB)
    guard.saved(10, "ck10")
    path, skip = guard.rewind(17)
    assert path == "ck10" and list(skip) == [14, 15, 16, 17] and guard.rewinds == 1
    # Never a step at or before the checkpoint: those batches are in it already.
    path, skip = guard.rewind(12)
    assert list(skip) == [11, 12] and guard.skipped == {11, 12, 14, 15, 16, 17}
    assert all(guard.skips(s) for s in (11, 17)) and not guard.skips(13)
    feed(guard, noisy(10), start=20)
    with pytest.raises(TrainingStopped, match=r"after 2 rewinds \(train.max_rewinds=2\)"):
        guard.check_loss(31, LEARN, rows([12.0]))


def test_a_spike_to_rewind_without_a_checkpoint_before_it_stops_before_the_update():
    guard = Guard(GuardConfig(on_spike="rewind", spike_warmup=5, spike_window=10), VOCAB)
    feed(guard, noisy(10))
    with pytest.raises(TrainingStopped, match=r"loss spike.*no checkpoint before it to rewind to"):
        guard.check_loss(11, LEARN, rows([12.0]))


def test_run_state_round_trips_through_json_exactly_and_rewound_keeps_the_skips():
    guard = Guard(GuardConfig(on_spike="rewind", rewind_skip=3, spike_warmup=5, spike_window=8), VOCAB)
    feed(guard, noisy(12, seed=3))
    guard.saved(12, "ck12")
    state = GuardState.from_json(json.loads(json.dumps(dataclasses.asdict(guard.state()))), "state.json")
    again = Guard(GuardConfig(on_spike="rewind", rewind_skip=3, spike_warmup=5, spike_window=8), VOCAB, state)
    assert again.state() == guard.state()
    guard.rewind(20)
    guard.rewound(state)
    assert guard.skipped == {18, 19, 20} and guard.rewinds == 1 and guard.detector.losses == state.losses


def test_a_run_resumed_mid_phase_decides_every_later_step_as_the_uninterrupted_run():
    cfg = GuardConfig(spike_warmup=5, spike_window=8, diverged_steps=3)
    phases = [LEARN] * 12 + [FOCUS] * 12 + [(2, "review")] * 6
    losses = noisy(12, 6.0, seed=4) + noisy(12, 6.8, seed=5) + noisy(6, 6.3, seed=6)
    losses[14], losses[20], losses[26:28] = 13.0, 9.0, [80.0, 90.0]  # a jump, a phase-rule spike, a divergence
    cut = 9  # the resumed run restarts after step 9, mid-Learn

    def check(guard: Guard, i: int) -> tuple:
        v = guard.check_loss(i + 1, phases[i], rows([losses[i]] * 2))
        return v.spike, v.diverged, v.zscore

    whole = Guard(cfg, VOCAB)
    uninterrupted = [check(whole, i) for i in range(len(losses))]
    assert [i + 1 for i, (spike, _, _) in enumerate(uninterrupted) if spike] == [15, 21, 27, 28]
    first = Guard(cfg, VOCAB)
    [check(first, i) for i in range(cut)]
    saved = json.loads(json.dumps(dataclasses.asdict(first.state())))  # the checkpoint after step 9
    resumed = Guard(cfg, VOCAB, GuardState.from_json(saved, "state.json"))
    assert [check(resumed, i) for i in range(cut, len(losses))] == uninterrupted[cut:]
    assert resumed.state() == whole.state()


def test_a_state_from_before_issue_27_reads_as_the_phases_window():
    old = GuardState(skipped=[], rewinds=0, spikes=0, phase=1, losses=[6.0, 6.1, 5.9, 6.0, 6.05])
    guard = Guard(GuardConfig(spike_warmup=5, spike_window=8), VOCAB, old)
    assert guard.detector.in_phase == 5 and guard.diverged == 0
    assert guard.check_loss(10, FOCUS, rows([7.0])).spike  # the phase's statistics carried on


def test_config_validates_the_guard_settings():
    assert load_config(None, ["data.path=x"]).train.on_spike == "warn"
    with pytest.raises(UserError, match=r"train\.on_spike: 'skip'; use warn, stop or rewind"):
        load_config(None, ["data.path=x", "train.on_spike=skip"])
    with pytest.raises(UserError, match=r"train.spike_warmup: must be an integer in \[2, 50\]"):
        load_config(None, ["data.path=x", "train.spike_warmup=60"])
    with pytest.raises(UserError, match=r"train\.spike_ratio"):
        load_config(None, ["data.path=x", "train.spike_ratio=0.5"])
    with pytest.raises(UserError, match=r"train\.jump_ratio: must be a finite number in \(1.0, "):
        load_config(None, ["data.path=x", "train.jump_ratio=1"])
    with pytest.raises(UserError, match=r"train\.boundary_ratio"):
        load_config(None, ["data.path=x", "train.boundary_ratio=0.5"])
    with pytest.raises(UserError, match=r"train\.diverge_margin"):
        load_config(None, ["data.path=x", "train.diverge_margin=0"])
    with pytest.raises(UserError, match=r"train\.diverged_steps"):
        load_config(None, ["data.path=x", "train.diverged_steps=0"])
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


def test_the_console_prints_a_diverged_perplexity_as_over_1e6_in_the_same_columns():
    assert console_ppl(211.7) == "  211.70" and console_ppl(999_999.0) == "999999.00"
    assert console_ppl(1e6 + 1) == "    >1e6" and console_ppl(math.exp(50.0)) == "    >1e6"
