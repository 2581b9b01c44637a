"""The phase schedule: lengths in every unit, and the budget scale of a budget sweep."""

from __future__ import annotations

from lfr_ds.lfr.schedule import parse_schedule

SPEC = "learn:1ep,focus:0.5ep@0.5,review,focus:*@0.7"


def _lengths(spec: str, total: int, scale: float = 1.0) -> list[tuple[str, int]]:
    return [(p.kind, p.steps) for p in parse_schedule(spec, total_steps=total, tokens_per_step=100, review_steps=40, scale=scale)]


def test_units_resolve_to_steps():
    assert _lengths("learn:10,focus:2000t@0.5,review,focus:10%@0.5,review:*", 200) == [
        ("learn", 10), ("focus", 20), ("review", 40), ("focus", 20), ("review", 110)]
    assert _lengths(SPEC, 120) == [("learn", 40), ("focus", 20), ("review", 40), ("focus", 20)]


def test_a_budget_scales_every_absolute_length():
    # At half the budget: half the steps, and every pass-, token- and step-length halves with it.
    assert _lengths(SPEC, 60, scale=0.5) == [("learn", 20), ("focus", 10), ("review", 20), ("focus", 10)]
    assert _lengths("learn:10,focus:2000t@0.5,review:*", 30, scale=0.5) == [("learn", 5), ("focus", 10), ("review", 15)]
    assert _lengths("learn:25%,focus:*@0.5", 40, scale=0.5) == [("learn", 10), ("focus", 30)]  # shares follow steps
