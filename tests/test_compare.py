"""lfr-compare, lfr-report and the demo's data handling."""

from __future__ import annotations

import json

import pytest
from clitools import assert_one_line_error

from lfr_ds import compare, demo, report, synthetic


def test_tokens_to_reach_interpolates_and_says_never():
    curve = [(100, 5.0), (200, 4.0), (300, 3.0)]
    assert compare.tokens_to_reach(curve, 4.5) == 150
    assert compare.tokens_to_reach(curve, 5.5) == 100
    assert compare.tokens_to_reach(curve, 3.0) == 300
    assert compare.tokens_to_reach(curve, 2.9) is None


def test_token_ratio():
    arms = {"random": {"mean": {"valid_loss": 4.0, "tokens": 300, "curve": [(100, 5.0), (300, 4.0)]}},
            "lfr": {"mean": {"valid_loss": 3.8, "tokens": 300, "curve": [(100, 4.5), (200, 3.9), (300, 3.8)]}},
            "lfr_raw": {"mean": {"valid_loss": 4.2, "tokens": 300, "curve": [(100, 5.0), (300, 4.2)]}}}
    assert compare.token_ratio(arms, "lfr") == pytest.approx((100 + 100 * 0.5 / 0.6) / 300)
    assert compare.token_ratio(arms, "lfr_raw") is None


@pytest.fixture(scope="module")
def smoke(tmp_path_factory, webmix_train):
    out = tmp_path_factory.mktemp("compare")
    assert compare.main(["--preset", "smoke", "--seeds", "1", "--arms", "random,lfr", "--out", str(out), "--blimp-pairs", "1",
                         "--evals", "4", "--valid-blocks", "32"]) == 0
    return out


def test_compare_writes_results_table_and_plot(smoke):
    results = json.loads((smoke / "results.json").read_text())
    assert set(results["arms"]) == {"random", "lfr"} and "token_ratio" in results and results["command"].startswith("lfr-compare")
    for arm in results["arms"].values():
        seed = arm["seeds"][0]
        assert seed["tokens"] == results["steps"] * 16 * 64
        assert seed["valid_loss"] > 0 and seed["per_source"] and 0 <= seed["blimp_acc"] <= 1
        # Every 58 // 4 = 14 steps, and after the last: 14, 28, 42, 56, 58.
        assert [t for t, _ in seed["curve"]] == [s * 16 * 64 for s in (14, 28, 42, 56, 58)]
    # Learn is the random arm's order for the first pass (same phase seed): identical curves until Focus.
    assert results["arms"]["random"]["seeds"][0]["curve"][0] == results["arms"]["lfr"]["seeds"][0]["curve"][0]
    table = (smoke / "results.md").read_text()
    assert "| random |" in table and "| lfr |" in table and "held-out loss" in table
    assert (smoke / "heldout.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_report_on_the_lfr_arm(smoke):
    assert report.main([str(smoke / "lfr-seed1")]) == 0
    md = (smoke / "lfr-seed1" / "report" / "report.md").read_text()
    assert "What each phase kept" in md and "phase_001_focus" in md and "Easiest blocks" in md
    r = json.loads((smoke / "lfr-seed1" / "report" / "report.json").read_text())
    assert r["transitions"] and sum(r["transitions"][0][k] for k in report.KINDS) > 0
    assert (smoke / "lfr-seed1" / "report" / "drops.png").is_file()


def test_compare_bad_input(tmp_path, run_cli):
    assert_one_line_error(run_cli(compare.main, ["--out", tmp_path, "--arms", "lfr"]), "--arms", "need random")
    assert_one_line_error(run_cli(compare.main, ["--out", tmp_path, "--seeds", "a,b"]), "--seeds")
    assert_one_line_error(run_cli(compare.main, ["--out", tmp_path, "--train", tmp_path / "nope.jsonl"]), "nope.jsonl")
    assert_one_line_error(run_cli(report.main, [tmp_path]), "no checkpoints/latest")


def test_demo_splits_user_data(tmp_path):
    src = tmp_path / "mine.jsonl"
    synthetic.write_jsonl(src, synthetic.generate(40, seed=3))
    train, valid = demo.split_corpus(str(src), tmp_path)
    n_train, n_valid = (len(p.read_text().splitlines()) for p in (train, valid))
    assert (n_train, n_valid) == (38, 2)


def test_demo_refuses_tiny_data(tmp_path, run_cli):
    src = tmp_path / "tiny.jsonl"
    synthetic.write_jsonl(src, synthetic.generate(5, seed=3))
    assert_one_line_error(run_cli(demo.main, ["--data", src, "--out", tmp_path / "o"]), "tiny.jsonl", "at least 20")
