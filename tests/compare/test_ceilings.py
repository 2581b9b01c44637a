"""The ceilings of lfr-compare on a corpus with copies: dedup trains on no copy, the oracle's Focus drops exactly the
copy blocks; and random's budget sweep is planned."""

from __future__ import annotations

import json

import numpy as np
import pytest

from lfr_ds.compare import ceilings, report
from lfr_ds.compare import cli as compare
from lfr_ds.compare.corpus import prepare
from lfr_ds.data.blocks import BlockView
from lfr_ds.data.dataset import open_dataset
from lfr_ds.data.sample_index import read_manifest
from lfr_ds.lfr.rewriter import read_kept_mask
from lfr_ds.lfr.schedule import parse_schedule
from lfr_ds.run_state import INDEX_DIR

ARGS = [
    "--preset",
    "smoke",
    "--seeds",
    "1",
    "--arms",
    "random,dedup,oracle",
    "--redundancy",
    "0.5",
    "--blimp",
    "",
    "--evals",
    "2",
    "--valid-blocks",
    "32",
]


@pytest.fixture(scope="module")
def ceiling_runs(tmp_path_factory, webmix_train):
    out = tmp_path_factory.mktemp("ceilings")
    assert compare.main([*ARGS, "--out", str(out)]) == 0
    return out


def _corpus(out):
    record = json.loads((out / "data" / "corpus.json").read_text())
    spec = compare.CorpusSpec(
        **{k: v["path"] if isinstance(v, dict) else v for k, v in record["inputs"].items() if k != "builder"}
    )
    return prepare(spec, out)


def _trained(run_dir) -> np.ndarray:
    ids = []
    for p in sorted((run_dir / INDEX_DIR).glob("phase_*.json")):
        m = read_manifest(p.with_suffix(".npy"))
        ids.append(np.load(p.with_suffix(".npy"))[: m.steps * m.global_batch_size])
    return np.concatenate(ids)


def test_dedup_trains_on_the_originals_alone(ceiling_runs):
    corpus = _corpus(ceiling_runs)
    repeats = corpus.repeats()
    train, dedup = open_dataset(corpus.prefix), open_dataset(ceilings.dedup_prefix(corpus))
    # The dedup dataset is the training dataset's non-copies, in order, token for token, and nothing else.
    originals = np.flatnonzero(~repeats)
    assert repeats.any() and dedup.num_documents == len(originals)
    assert all(np.array_equal(dedup.document(j), train.document(i)) for j, i in enumerate(originals))
    run = json.loads((ceiling_runs / "dedup-seed1" / "compare_run.json").read_text())["config"]
    assert (
        run["data"]["path"] == ceilings.dedup_prefix(corpus)
        and run["steps"]
        == json.loads((ceiling_runs / "random-seed1" / "compare_run.json").read_text())["config"]["steps"]
    )
    # Every block it trained lies in that dataset, so no copied document's token was trained on.
    view = BlockView(dedup, run["model"]["seq_length"], run["data"]["seed"])
    ids = _trained(ceiling_runs / "dedup-seed1")
    assert ids.max() < view.num_blocks and len(ids) == run["steps"] * run["engine"]["global_batch_size"]
    arms = json.loads((ceiling_runs / "results.json").read_text())["arms"]
    assert arms["dedup"]["seeds"][0]["repeat_token_share_trained"] == 0.0
    assert arms["random"]["seeds"][0]["repeat_token_share_trained"] > 0.3


def test_the_oracle_s_focus_drops_exactly_the_copy_blocks(ceiling_runs):
    corpus = _corpus(ceiling_runs)
    run = json.loads((ceiling_runs / "oracle-seed1" / "compare_run.json").read_text())["config"]
    view = BlockView(open_dataset(corpus.prefix), run["model"]["seq_length"], run["data"]["seed"])
    copy_blocks = view.token_share(corpus.repeats()) > ceilings.REPEAT_BLOCK
    (focus,) = sorted((ceiling_runs / "oracle-seed1" / INDEX_DIR).glob("phase_*_focus.json"))
    kept = read_kept_mask(focus, read_manifest(focus.with_suffix(".npy")))
    assert 0.3 < copy_blocks.mean() < 0.7 and np.array_equal(kept, ~copy_blocks)
    order = np.load(focus.with_suffix(".npy"))
    assert not copy_blocks[order].any()
    (drops,) = json.loads((ceiling_runs / "results.json").read_text())["arms"]["oracle"]["seeds"][0]["focus"]
    assert drops["dropped_that_repeat"] == 1.0 and drops["repeats_dropped"] == 1.0


def test_with_budgets_every_arm_random_included_runs_at_every_budget():
    args = compare.parse_args(["--out", "x", "--arms", "random,lfr", "--seeds", "1,2", "--budgets", "1.0,0.5"])
    assert [r.name for r in compare.plan(args)] == [
        "random-b0.5-seed1",
        "random-seed1",
        "lfr-b0.5-seed1",
        "lfr-seed1",
        "random-b0.5-seed2",
        "random-seed2",
        "lfr-b0.5-seed2",
        "lfr-seed2",
    ]


def test_the_multipass_preset_has_a_kp_schedule_the_parser_takes_at_every_budget():
    preset = compare.PRESETS["multipass"]
    assert "kp" in preset.schedule and preset.schedule.startswith(compare.RECIPE.rsplit(",", 1)[0])
    seq, batch = 256, 16  # the tiny model's blocks, the common global batch
    blocks = preset.unique_tokens // seq
    steps = round(preset.passes * blocks / batch)
    for budget in (0.5, 0.65, 0.8, 1.0):
        phases = parse_schedule(
            preset.schedule,
            total_steps=round(budget * steps),
            tokens_per_step=seq * batch,
            review_steps=-(-blocks // batch),
            scale=budget,
        )
        assert sum(p.steps for p in phases) == round(budget * steps)
        assert [p.kind for p in phases].count("focus") == 4 and phases[-1].kind == "review"


def test_a_results_json_read_back_renders_again(ceiling_runs):
    """results.json is written with sorted keys (dedup, oracle, random): its tables render from the file as
    they did from the summary."""
    assert (
        report.markdown(json.loads((ceiling_runs / "results.json").read_text()))
        == (ceiling_runs / "results.md").read_text()
    )


def test_a_results_json_from_before_regimes_were_recorded_says_so(ceiling_runs):
    results = json.loads((ceiling_runs / "results.json").read_text())
    del results["regime"]
    assert "Regime: not recorded" in report.markdown(results)
