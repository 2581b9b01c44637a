"""The phase schedule: lengths in every unit, and the budget scale of a budget sweep."""

from __future__ import annotations

import re

import pytest

from lfr_ds.errors import UserError
from lfr_ds.lfr.schedule import kept_pass_steps, parse_schedule, resolve_length, resumed_schedule

SPEC = "learn:1ep,focus:0.5ep@0.5,review,focus:*@0.7"


def _lengths(spec: str, total: int, scale: float = 1.0) -> list[tuple[str, int]]:
    return [
        (p.kind, p.steps)
        for p in parse_schedule(spec, total_steps=total, tokens_per_step=100, review_steps=40, scale=scale)
    ]


def test_units_resolve_to_steps():
    assert _lengths("learn:10,focus:2000t@0.5,review,focus:10%@0.5,review:*", 200) == [
        ("learn", 10),
        ("focus", 20),
        ("review", 40),
        ("focus", 20),
        ("review", 110),
    ]
    assert _lengths(SPEC, 120) == [("learn", 40), ("focus", 20), ("review", 40), ("focus", 20)]
    # The recipe's preset: a pass, the provisional kept pass over half of the 40 steps' blocks, the rest uniform.
    assert _lengths("recipe", 120) == [("learn", 40), ("focus", 20), ("review", 60)]


def test_a_budget_scales_every_absolute_length():
    # At half the budget: half the steps, and every pass-, token- and step-length halves with it.
    assert _lengths(SPEC, 60, scale=0.5) == [("learn", 20), ("focus", 10), ("review", 20), ("focus", 10)]
    assert _lengths("learn:10,focus:2000t@0.5,review:*", 30, scale=0.5) == [("learn", 5), ("focus", 10), ("review", 15)]
    assert _lengths("learn:25%,focus:*@0.5", 40, scale=0.5) == [("learn", 10), ("focus", 30)]  # shares follow steps


def _phases(spec: str, total: int, scale: float = 1.0):
    return parse_schedule(spec, total_steps=total, tokens_per_step=100, review_steps=40, scale=scale)


def test_kept_passes_are_provisional_until_the_boundary():
    # Provisional: the expected kept set, (1 - 0.5) of 40 steps' blocks; @auto assumes every block is kept.
    assert _lengths("learn:1ep,focus:1kp@0.5,review:*", 200) == [("learn", 40), ("focus", 20), ("review", 140)]
    assert _lengths("learn:1ep,focus:2kp@auto,review:*", 200) == [("learn", 40), ("focus", 80), ("review", 80)]
    assert _lengths("learn:1ep,focus:1kp@0.5,review:*", 100, scale=0.5) == [
        ("learn", 20),
        ("focus", 10),
        ("review", 70),
    ]
    assert (
        _phases("learn:1ep,focus:1kp@0.5,review:*", 100, scale=0.5)[1].kept_passes == 0.5
    )  # resolves at half a pass too
    focus = _phases("learn:1ep,focus:1kp@auto,review:*", 200)[1]
    assert (focus.kept_passes, focus.auto_drop, focus.drop) == (1.0, True, 0.0)


def test_a_resolved_kp_phase_hands_its_difference_to_the_later_star_phase():
    phases = _phases("learn:1ep,focus:1kp@0.5,review:1ep,focus:*@0.7,review:10", 300)
    assert (
        kept_pass_steps(1.0, 1000, 64) == 16
        and kept_pass_steps(0.5, 1000, 64) == 8
        and kept_pass_steps(0.01, 5, 64) == 1
    )
    resolved = resolve_length(phases, 1, 27)
    assert [(p.start, p.steps) for p in resolved] == [(0, 40), (40, 27), (67, 40), (107, 183), (290, 10)]
    assert sum(p.steps for p in resolved) == 300
    assert resolve_length(resolved, 1, 27) == resolved  # resolving again is a no-op


def test_a_resumed_run_keeps_its_checkpoints_resolved_schedule():
    spec = "learn:1ep,focus:1kp@0.5,review:*"
    phases = _phases(spec, 200)
    saved = resolve_length(phases, 1, 25)
    assert [p.steps for p in resumed_schedule(phases, saved)] == [40, 25, 135]
    with pytest.raises(UserError, match="not the schedule the checkpoint was trained with"):
        resumed_schedule(_phases("learn:1ep,focus:1kp@0.6,review:*", 200), saved)
    fixed = _phases("learn:1ep,focus:*@0.5", 200)  # no kp phase: the config's schedule, as before
    assert resumed_schedule(fixed, phases) == fixed


@pytest.mark.parametrize(
    ("spec", "needle"),
    [
        ("learn:1ep,focus:1kp@0.5,review:1ep", "a later phase of length '*' must absorb"),
        (
            "learn:1ep,focus:*@0.5,review:1kp",
            "kp (passes over the blocks a Focus keeps) is a Focus length; use ep for review",
        ),
        ("learn:1kp,focus:*@0.5", "is a Focus length; use ep for learn"),
        ("learn:1ep,focus:2xp@0.5,review:*", "unknown length unit 'xp'"),
        ("learn:1ep,review:*@auto", "@auto chooses a Focus drop fraction; only focus phases take it"),
        ("learn:1ep,focus:4kp@0.9,review:*", "if Focus kept every block, the kp phases would take 144 more steps"),
    ],
)
def test_bad_kept_pass_and_auto_schedules(spec, needle):
    with pytest.raises(UserError, match=re.escape(needle)):
        _phases(spec, 200)
