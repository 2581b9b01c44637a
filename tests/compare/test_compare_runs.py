"""lfr-compare, lfr-report and the demo's data handling."""

from __future__ import annotations

import json
import shutil

import pytest
from clitools import assert_one_line_error

from lfr_ds import demo, report, synthetic
from lfr_ds.compare import cli as compare
from lfr_ds.compare import regime, runs
from lfr_ds.config import GuardConfig, load_config
from lfr_ds.data.dataset import open_dataset
from lfr_ds.data.tokenizer import Tokenizer

ARGS = [
    "--preset",
    "smoke",
    "--seeds",
    "1",
    "--arms",
    "random,lfr",
    "--blimp-pairs",
    "1",
    "--evals",
    "4",
    "--valid-blocks",
    "32",
]


@pytest.fixture(scope="module")
def test_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("testset") / "mine.txt"
    path.write_text("A plain text test set.\n\nTwo paragraphs of it, each a document, scored once per run.\n" * 20)
    return path


@pytest.fixture(scope="module")
def smoke(tmp_path_factory, webmix_train, test_file):
    out = tmp_path_factory.mktemp("compare")
    assert compare.main([*ARGS, "--out", str(out), "--test", str(test_file), "--jobs", "1"]) == 0
    return out


def _losses(out):
    r = json.loads((out / "results.json").read_text())
    return {arm: [(s["valid_loss"], s["curve"], s["test"]) for s in a["seeds"]] for arm, a in r["arms"].items()}


def test_compare_writes_results_table_and_plot(smoke, test_file):
    results = json.loads((smoke / "results.json").read_text())
    assert set(results["arms"]) == {"random", "lfr"} and results["command"].startswith("lfr-compare --preset smoke")
    for arm in results["arms"].values():
        seed = arm["seeds"][0]
        assert seed["tokens"] == results["steps"] * 16 * 64
        assert seed["valid_loss"] > 0 and seed["per_source"] and 0 <= seed["blimp_acc"] <= 1
        assert seed["test"][str(test_file)]["loss"] > 0
        # Every ceil(58 / 4) = 15 steps, the last at the end: 15, 30, 45, 58.
        assert [t for t, _ in seed["curve"]] == [s * 16 * 64 for s in (15, 30, 45, 58)]
    # Every source of the dev split is in the fixed held-out set.
    assert set(results["arms"]["random"]["seeds"][0]["per_source"]) == {"chat", "news", "reviews", "speeches", "wiki"}
    lfr = results["arms"]["lfr"]
    assert lfr["paired"]["valid_loss"]["values"] == [
        lfr["seeds"][0]["valid_loss"] - results["arms"]["random"]["seeds"][0]["valid_loss"]
    ]
    assert lfr["token_ratio"]["kind"].startswith("in-run proxy")
    # Learn is the random arm's order for the first pass (same phase seed): identical curves until Focus.
    assert results["arms"]["random"]["seeds"][0]["curve"][0] == lfr["seeds"][0]["curve"][0]
    # The regime: the smoke preset's model (2 x 64, seq 64) at the corpus tokenizer's vocabulary, over every
    # training block once a pass, for the full budget's steps.
    r = results["regime"]
    ds = open_dataset(str(smoke / "data" / "train"))
    vocab = Tokenizer(str(smoke / "data" / "tokenizer.model")).vocab_size
    assert r["parameters"] == vocab * 64 + 64 * 64 + 2 * (12 * 64 * 64 + 13 * 64) + 2 * 64
    assert r["tokens_per_pass"] == (ds.num_tokens - 1) // 64 * 64
    assert r["passes"] * r["tokens_per_pass"] == pytest.approx(results["steps"] * 16 * 64)
    assert r["tokens_per_parameter"] == pytest.approx(r["passes"] * r["tokens_per_parameter_pass"])
    table = (smoke / "results.md").read_text()
    assert f"Regime: {r['parameters']:,} parameters; {r['tokens_per_pass']:,} tokens a pass" in table
    assert "| random |" in table and "| lfr |" in table and "paired" in table and "never used for any choice" in table
    assert (smoke / "heldout.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_the_same_comparison_gives_the_same_losses_one_run_at_a_time_or_two_side_by_side(
    smoke, tmp_path, test_file, capfd
):
    assert compare.main([*ARGS, "--out", str(tmp_path), "--test", str(test_file), "--jobs", "2"]) == 0
    assert _losses(tmp_path) == _losses(smoke)
    # Both runs were under way at once: the second started before the first finished.
    err = capfd.readouterr().err
    assert err.index("] lfr-seed1: ") < err.index("] random-seed1: done")


def test_rerun_reuses_or_refuses_never_mixes(smoke, run_cli, webmix_train, test_file, tmp_path):
    again = run_cli(compare.main, [*ARGS, "--out", smoke, "--test", test_file])
    assert again.code == 0 and again.err.count("already done, reusing") == 2
    assert_one_line_error(
        run_cli(compare.main, [*ARGS, "--out", smoke, "--schedule", "learn:1ep,focus:*@0.3"]),
        "lfr-seed1",
        "lfr.schedule",
        "new --out",
    )
    assert_one_line_error(
        run_cli(compare.main, [*ARGS, "--out", smoke, "lfr.temperature=2"]), "lfr.temperature", "new --out"
    )
    assert_one_line_error(
        run_cli(compare.main, [*ARGS, "--out", smoke, "--redundancy", "0.2"]), "redundancy: 0.0 -> 0.2"
    )
    other = tmp_path / "other.jsonl"
    other.write_text(webmix_train.read_text()[:2_000_000].rsplit("\n", 1)[0] + "\n")
    assert_one_line_error(run_cli(compare.main, [*ARGS, "--out", smoke, "--train", other]), "train.path", "new --out")


def test_a_run_recorded_before_a_setting_that_defaults_to_off_existed_is_reused(smoke, run_cli, test_file):
    """Records made before lfr.drop_mask (default None, off) lack it: they are the same settings."""
    path = smoke / "lfr-seed1" / "compare_run.json"
    rec = json.loads(path.read_text())
    assert rec["config"]["lfr"].pop("drop_mask") is None
    path.write_text(json.dumps(rec))
    again = run_cli(compare.main, [*ARGS, "--out", smoke, "--test", test_file])
    assert again.code == 0 and again.err.count("already done, reusing") == 2


def test_a_run_recorded_before_the_guards_divergence_and_jump_rules_is_reused(smoke, run_cli, test_file):
    """Issue 27's guard settings are absent from records made before them: the runs are still reused."""
    path = smoke / "random-seed1" / "compare_run.json"
    rec = json.loads(path.read_text())
    for key in runs.GUARD_SINCE:
        assert rec["config"]["train"].pop(key) == runs.GUARD_SINCE[key] == getattr(GuardConfig(), key)
    path.write_text(json.dumps(rec))
    again = run_cli(compare.main, [*ARGS, "--out", smoke, "--test", test_file])
    assert again.code == 0 and again.err.count("already done, reusing") == 2


def test_random_runs_copied_into_a_comparison_of_other_lfr_settings_are_reused(smoke, run_cli, tmp_path):
    # The random arm ignores lfr.* settings, and paths are taken relative to --out: a study of LFR
    # variants pays for each random run once.
    shutil.copytree(smoke / "random-seed1", tmp_path / "random-seed1")
    variant = run_cli(
        compare.main,
        [*ARGS, "--out", tmp_path, "--schedule", "learn:1ep,focus:*@0.3", "lfr.temperature=2", "model.sketch_dim=0"],
    )
    assert variant.code == 0, variant.err
    assert "random-seed1: already done, reusing" in variant.err and "lfr-seed1: already done" not in variant.err

    def random_seed(out):
        seed = json.loads((out / "results.json").read_text())["arms"]["random"]["seeds"][0]
        return seed["valid_loss"], seed["curve"]

    assert random_seed(tmp_path) == random_seed(smoke)
    config = json.loads((tmp_path / "lfr-seed1" / "compare_run.json").read_text())["config"]
    assert config["lfr"]["temperature"] == 2 and config["model"]["sketch_dim"] == 0


def test_report_on_the_lfr_arm(smoke):
    assert report.main([str(smoke / "lfr-seed1")]) == 0
    md = (smoke / "lfr-seed1" / "report" / "report.md").read_text()
    assert "What each phase kept" in md and "phase_001_focus" in md and "Easiest blocks" in md
    r = json.loads((smoke / "lfr-seed1" / "report" / "report.json").read_text())
    assert r["transitions"] and sum(r["transitions"][0][k] for k in report.KINDS) > 0
    assert (smoke / "lfr-seed1" / "report" / "drops.png").is_file()


@pytest.mark.parametrize(
    ("argv", "needle"),
    [
        (["--arms", "lfr"], "need random"),
        (["--arms", "random,lfr,lfr"], "repeated"),
        (["--arms", "random,nope"], "need random"),
        (["--seeds", "a,b"], "--seeds"),
        (["--seeds", ","], "empty"),
        (["--seeds", "1,2,1"], "repeated"),
        (["--redundancy", "1"], "[0, 1)"),
        (["--redundancy", "-0.1"], "[0, 1)"),
        (["--budgets", "0.5,0.8"], "including 1.0"),
        (["--budgets", "0,1"], "(0, 1]"),
        (["--budgets", "1.0,1.5"], "(0, 1]"),
        (["--test", "nope.jsonl"], "nope.jsonl"),
        (["--train", "nope.jsonl"], "nope.jsonl"),
        (["--jobs", "0"], "--jobs"),
        (["--threads", "0"], "--threads"),
        (["steps=5"], "set by lfr-compare"),
        (["eval.valid_blocks=5"], "set by lfr-compare"),
    ],
)
def test_compare_bad_input(tmp_path, run_cli, argv, needle):
    assert_one_line_error(run_cli(compare.main, ["--out", tmp_path, *argv]), needle)
    assert not (tmp_path / "data").exists()


def test_compare_refuses_an_empty_test_set(tmp_path, run_cli):
    (tmp_path / "empty.jsonl").write_text('{"text": ""}\n')
    assert_one_line_error(
        run_cli(compare.main, ["--out", tmp_path / "o", "--test", tmp_path / "empty.jsonl"]), "empty.jsonl", "no text"
    )
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


def test_demo_verdict_names_the_ratio_and_the_least_helped_source():
    def results(reached):
        lfr = {
            "mean": {"valid_loss": 0.9},
            "paired": {"relative": -0.1, "per_source_relative": {"a": -0.2, "b": 0.01}},
            "token_ratio": {"reached": reached, "mean": 0.7 if reached else None},
        }
        return {"arms": {"lfr": lfr, "random": {"mean": {"valid_loss": 1.0}}}}

    text = demo.verdict(results(1))
    assert (
        "0.9000 vs 1.0000 (-10.00%)" in text and "token ratio 0.70" in text and "least helped source: b +1.00%" in text
    )
    assert "token ratio: never" in demo.verdict(results(0))
    swept = results(1)
    swept["arms"]["lfr"]["token_ratio"]["baseline"] = "random's best budget"
    assert "reaches the held-out loss of random's best budget with 70%" in demo.verdict(swept)


def test_demo_compares_the_corpus_as_it_is_and_with_copies(tmp_path, monkeypatch, capsys):
    """The demo's plan, without training: lfr-compare twice on the same files, at R = 0 and R = COPIES, random
    and LFR at every budget; a verdict printed for each."""
    calls = []

    def fake_compare(argv):
        calls.append(argv)
        out = tmp_path / argv[argv.index("--out") + 1]
        out.mkdir(parents=True)
        r = float(argv[argv.index("--redundancy") + 1])
        lfr = {
            "mean": {"valid_loss": 1.0 - r},
            "paired": {"relative": 0.005 - r, "per_source_relative": {"a": 0.0}},
            "token_ratio": {"reached": 0, "mean": None},
        }
        (out / "results.json").write_text(json.dumps({"arms": {"lfr": lfr, "random": {"mean": {"valid_loss": 1.0}}}}))
        return 0

    monkeypatch.setattr(demo.compare, "main", fake_compare)
    monkeypatch.setattr(demo.report, "main", lambda argv: 0)
    assert demo.main(["--out", str(tmp_path / "d")]) == 0
    assert [c[c.index("--redundancy") + 1] for c in calls] == ["0.0", str(demo.COPIES)]
    for c in calls:
        assert c[c.index("--arms") + 1] == "random,lfr" and c[c.index("--budgets") + 1] == ",".join(demo.BUDGETS)
        assert c[c.index("--train") + 1] == calls[0][calls[0].index("--train") + 1]
    printed = capsys.readouterr().out
    assert "The corpus as it is" in printed and "(+0.50%)" in printed
    assert f"The corpus with {demo.COPIES:.0%} copies" in printed and f"({0.005 - demo.COPIES:+.2%})" in printed


def test_the_data_rich_preset_gives_the_model_at_least_15_tokens_per_parameter_a_pass_for_3_passes():
    """Issue 25: the regime where the model finishes with the easy blocks, every parameter counted (embedding too)."""
    preset = compare.PRESETS["data-rich"]
    model = load_config(None, [*preset.overrides, "data.path=unused"]).model
    r = regime.of(model, preset.vocab_size, preset.unique_tokens, preset.passes)
    assert r["tokens_per_parameter_pass"] >= 15 and r["passes"] >= 3
