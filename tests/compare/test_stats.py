"""The comparison's definitions, pinned on hand-made numbers."""

from __future__ import annotations

import math

import pytest

from lfr_ds.compare import stats


def test_in_run_proxy_needs_the_curve_to_stay_below():
    target = 4.0
    # Touches the target once at 200, comes back up, and stays below only from between 400 and 500.
    curve = [(100, 5.0), (200, 3.9), (300, 4.2), (400, 4.4), (500, 3.8), (600, 3.7)]
    assert stats.stays_below_from(curve, target) == pytest.approx(400 + 100 * 0.4 / 0.6)
    assert stats.stays_below_from([(100, 3.0), (200, 2.5)], target) == 100  # below from the first evaluation
    assert stats.stays_below_from([(100, 3.0), (200, 4.1)], target) is None  # ends above: never
    assert stats.stays_below_from([(100, 5.0), (200, 4.0)], target) == 200  # at the target counts


def test_budget_ratio_is_the_smallest_budget_from_which_all_reach_the_target():
    target = 4.0
    assert stats.budget_ratio({0.5: 4.4, 0.65: 4.2, 0.8: 3.9, 1.0: 3.8}, target) == pytest.approx(
        0.65 + 0.15 * 0.2 / 0.3
    )
    # 0.5 dips under by luck, 0.65 does not: the ratio starts above 0.65.
    assert stats.budget_ratio({0.5: 3.95, 0.65: 4.1, 0.8: 3.9, 1.0: 3.8}, target) == pytest.approx(
        0.65 + 0.15 * 0.1 / 0.2
    )
    assert stats.budget_ratio({0.5: 3.9, 1.0: 3.8}, target) == 0.5  # already at the smallest budget
    assert stats.budget_ratio({0.5: 3.9, 0.8: 3.9, 1.0: 4.1}, target) is None  # the full budget misses: never


def test_summaries_count_never_as_one():
    r = stats.ratio_summary([0.6, None, 0.8], "budget sweep")
    assert r["mean"] == pytest.approx((0.6 + 1.0 + 0.8) / 3) and r["reached"] == 2 and "2 of 3" in r["reason"]
    none = stats.ratio_summary([None, None], "budget sweep")
    assert none["mean"] is None and "never" in none["reason"]
    m = stats.mean_se([1.0, 2.0, 3.0])
    assert m["mean"] == 2.0 and m["se"] == pytest.approx(1.0 / math.sqrt(3))
    assert stats.mean_se([1.5])["se"] is None


def _run(loss: float, curve: list[float], chat: float) -> dict:
    return {
        "valid_loss": loss,
        "valid_ppl": math.exp(loss),
        "per_source": {"chat": chat},
        "blimp_acc": None,
        "tokens": 300,
        "curve": list(zip((100, 200, 300), curve, strict=True)),
        "unique_blocks_trained": 10,
        "repeat_token_share_trained": 0.0,
    }


def test_summarise_pairs_each_seed_with_its_own_random_run():
    results = {
        ("random", 1, 1.0): _run(4.0, [5.0, 4.5, 4.0], 4.0),
        ("random", 2, 1.0): _run(4.4, [5.2, 4.8, 4.4], 4.4),
        ("lfr", 1, 1.0): _run(3.9, [5.0, 4.4, 3.9], 4.2),
        ("lfr", 2, 1.0): _run(4.2, [5.2, 4.6, 4.2], 4.4),
    }
    arms = stats.summarise(results, ["random", "lfr"], [1, 2], [1.0])
    paired = arms["lfr"]["paired"]
    assert paired["valid_loss"]["values"] == pytest.approx([-0.1, -0.2]) and paired["valid_loss"][
        "mean"
    ] == pytest.approx(-0.15)
    assert paired["relative"] == pytest.approx(-0.15 / 4.2)
    assert [p[1]["mean"] for p in paired["curve"]] == pytest.approx([0.0, -0.15, -0.15])
    assert paired["per_source_relative"]["chat"] == pytest.approx(0.1 / 4.2)
    assert arms["random"]["spread"]["std"] == pytest.approx(math.sqrt(0.08))
    # In-run proxy per seed: seed 1 reaches 4.0 between 200 and 300 tokens, seed 2 reaches 4.4 at 250.
    assert arms["lfr"]["token_ratio"]["per_seed"] == pytest.approx([(200 + 100 * 0.4 / 0.5) / 300, 250 / 300])


def test_the_budget_sweep_ratio_is_against_random_s_best_budget():
    # Random overfits on seed 1 (its 0.8 budget ends lowest) and not on seed 2 (its full budget does).
    random = {1: {0.5: 4.30, 0.8: 4.00, 1.0: 4.10}, 2: {0.5: 4.60, 0.8: 4.45, 1.0: 4.40}}
    lfr = {1: {0.5: 4.20, 0.8: 3.95, 1.0: 3.90}, 2: {0.5: 4.50, 0.8: 4.42, 1.0: 4.35}}
    results = {
        (arm, s, b): _run(loss, [5.0, 4.8, loss], loss)
        for arm, table in (("random", random), ("lfr", lfr))
        for s, finals in table.items()
        for b, loss in finals.items()
    }
    arms = stats.summarise(results, ["random", "lfr"], [1, 2], [0.5, 0.8, 1.0])
    best = arms["random"]["best_budget"]
    assert best["budget"] == [0.8, 1.0] and best["valid_loss"] == [random[1][0.8], random[2][1.0]]
    ratio = arms["lfr"]["token_ratio"]
    # Per seed: the smallest LFR budget reaching random's best loss, over random's best budget.
    expected = [stats.budget_ratio(lfr[1], random[1][0.8]) / 0.8, stats.budget_ratio(lfr[2], random[2][1.0]) / 1.0]
    assert ratio["per_seed"] == pytest.approx(expected) and ratio["baseline"] == "random's best budget"
    assert ratio["random_budget"] == [0.8, 1.0]
    # Against random's full budget instead, seed 1 would look cheaper: the overfit random run flatters LFR.
    assert stats.budget_ratio(lfr[1], random[1][1.0]) < expected[0]
    # The paired difference stays against random at the full budget; random's own sweep is tabled.
    assert arms["lfr"]["paired"]["valid_loss"]["values"] == pytest.approx([3.90 - 4.10, 4.35 - 4.40])
    assert arms["random"]["budgets"]["0.8"]["values"] == [4.00, 4.45]


def test_results_without_a_random_sweep_keep_random_at_the_full_budget_as_the_baseline():
    lfr = {0.5: 4.3, 1.0: 3.9}
    results = {
        ("random", 1, 1.0): _run(4.0, [5.0, 4.5, 4.0], 4.0),
        **{("lfr", 1, b): _run(loss, [5.0, 4.5, loss], loss) for b, loss in lfr.items()},
    }
    ratio = stats.summarise(results, ["random", "lfr"], [1], [0.5, 1.0])["lfr"]["token_ratio"]
    assert ratio["per_seed"] == pytest.approx([stats.budget_ratio(lfr, 4.0)]) and ratio["baseline"].startswith(
        "random at 1.0"
    )
