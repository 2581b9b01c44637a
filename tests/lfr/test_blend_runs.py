"""Training on a blend of corpora (issue 20), end to end on gloo: exact resume mid-Focus, 2 ranks equal 1,
a blend of one equals its prefix, per-corpus reporting, and a changed blend refused on resume."""

from __future__ import annotations

import json

import numpy as np
import pytest
from corpora import SMALL_MODEL
from launch import copy_run, launch, read_trace
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from lfr_ds import report
from lfr_ds.data import inspect
from lfr_ds.lfr import inspect_index, offline

# 2,111 blocks of 65 tokens (news 793, chat 1,019, wiki 299). Phases: learn 0-8, focus 8-16, review 16-20.
SCHEDULE = "learn:8,focus:8@0.5,review:*"
STEPS = 20


def _blend(prefixes) -> str:
    news, chat, wiki = prefixes
    return f"0.5 {news} 0.3 {chat} 0.2 {wiki}"


def _overrides(data, run_dir, **extra) -> list[str]:
    cfg = {
        "data.path": data,
        "run_dir": run_dir,
        "steps": STEPS,
        "lfr.schedule": SCHEDULE,
        "engine.micro_batch_size": 16,
        "engine.global_batch_size": 32,
        "checkpoint.interval": 4,
        "checkpoint.keep_last": 10,
        "log.trace_blocks": "true",
        **extra,
    }
    return [*SMALL_MODEL, *(f"{k}={v}" for k, v in cfg.items())]


@pytest.fixture(scope="module")
def reference(webmix_blend, tmp_path_factory):
    """A 2-rank run on the blend, checkpointed every 4 steps (the Learn/Focus boundary at 8, mid-Focus at 12),
    with TensorBoard and a held-out blend."""
    run = tmp_path_factory.mktemp("blend2") / "run"
    launch(
        _overrides(
            _blend(webmix_blend),
            run,
            **{"log.tensorboard": "true", "eval.valid_path": _blend(webmix_blend), "eval.valid_blocks": 16},
        ),
        nproc=2,
    )
    return run


def test_resume_mid_focus_on_a_blend_is_exact(reference, webmix_blend, tmp_path):
    resumed = copy_run(reference, tmp_path / "resumed", "step_00000012")
    proc = launch(
        _overrides(
            _blend(webmix_blend),
            resumed,
            **{"log.tensorboard": "true", "eval.valid_path": _blend(webmix_blend), "eval.valid_blocks": 16},
        ),
        nproc=2,
    )
    assert "resumed from" in proc.stderr
    full, again = read_trace(reference), read_trace(resumed)
    assert [t["step"] for t in again] == list(range(1, STEPS + 1))
    # Bit for bit: CPU fp32, the Focus file reused, RNG and LR scheduler restored.
    assert [t["ids"] for t in again] == [t["ids"] for t in full]
    assert [t["losses"] for t in again] == [t["losses"] for t in full]


def test_two_ranks_equal_one_process(reference, webmix_blend, tmp_path):
    one = tmp_path / "one"
    proc = launch(
        _overrides(_blend(webmix_blend), one, **{"engine.micro_batch_size": 32}),
        nproc=1,
        launcher="python",
        extra_env={"LFR_CRASH_AT": "step:9"},
        check=False,
    )  # stop once Learn is over
    assert proc.returncode != 0
    learn = "index/phase_000_learn.npy"
    assert (one / learn).read_bytes() == (reference / learn).read_bytes()
    a, b = read_trace(reference)[:8], read_trace(one)
    assert [t["ids"] for t in a] == [t["ids"] for t in b]
    # Same model and data; only the all-reduce order differs.
    np.testing.assert_allclose([t["losses"] for t in a], [t["losses"] for t in b], rtol=2e-3, atol=2e-3)


def test_per_corpus_shares_drops_and_held_out_loss_are_reported(reference):
    learn = json.loads((reference / "index" / "phase_000_learn.json").read_text())
    focus = json.loads((reference / "index" / "phase_001_focus.json").read_text())
    for manifest in (learn, focus):
        assert set(manifest["corpora"]) == {"news", "chat", "wiki"}
        for c in manifest["corpora"].values():
            assert abs(c["share_minus_weight"]) <= 0.01  # lfr.blend=keep
    assert set(focus["corpus_drop_fraction"]) == {"news", "chat", "wiki"}
    evals = [json.loads(line) for line in (reference / "eval.jsonl").read_text().splitlines()]
    assert set(evals[-1]["valid"]["per_source"]) == {"news", "chat", "wiki"}
    acc = EventAccumulator(str(reference / "tb")).Reload()
    tags = set(acc.Tags()["scalars"])
    for name in ("news", "chat", "wiki"):
        assert {
            f"lfr/corpus share/{name}",
            f"lfr/corpus weight/{name}",
            f"lfr/corpus drop fraction/{name}",
            f"lm loss validation/{name}",
        } <= tags


def test_resume_refuses_a_changed_blend(reference, webmix_blend, tmp_path):
    news, chat, wiki = webmix_blend
    resumed = copy_run(reference, tmp_path / "changed", "step_00000012")
    proc = launch(_overrides(f"0.4 {news} 0.4 {chat} 0.2 {wiki}", resumed), nproc=1, launcher="python", check=False)
    assert proc.returncode == 2
    lines = [line for line in proc.stderr.strip().splitlines() if "lfr-train" in line or "data.path" in line]
    assert len(lines) == 1 and "the checkpoint has dataset 0.5 " in lines[0] and "this run dataset 0.4 " in lines[0], (
        proc.stderr
    )


def test_a_blend_of_one_trains_exactly_as_its_prefix(webmix_blend, tmp_path):
    news = webmix_blend[0]
    runs = {}
    for name, path in (("prefix", news), ("blend", f"1.0 {news}")):
        runs[name] = tmp_path / name
        launch(
            _overrides(
                path,
                runs[name],
                **{
                    "engine.micro_batch_size": 32,
                    "steps": 10,
                    "lfr.schedule": "learn:6,focus:4@0.5",
                    "checkpoint.interval": 0,
                },
            ),
            nproc=1,
            launcher="python",
        )
    a, b = runs["prefix"], runs["blend"]
    assert [t["losses"] for t in read_trace(a)] == [t["losses"] for t in read_trace(b)]
    for p in sorted((a / "index").glob("phase_*")):
        assert (b / "index" / p.name).read_bytes() == p.read_bytes(), p.name
    ckpt = "checkpoints/step_00000010/lfr/arrays.npz"
    with np.load(a / ckpt) as x, np.load(b / ckpt) as y:
        for k in x.files:
            np.testing.assert_array_equal(x[k], y[k])


def test_tools_describe_the_blend_by_corpus(reference, webmix_blend, tmp_path, run_cli):
    focus = reference / "index" / "phase_001_focus.npy"
    # lfr-rewrite replays the Focus boundary from its checkpoint: the bytes training wrote.
    r = run_cli(offline.main, [reference / "checkpoints" / "step_00000008", "--out", tmp_path / "focus.npy"])
    assert r.code == 0, r.err
    assert (tmp_path / "focus.npy").read_bytes() == focus.read_bytes()
    # lfr-inspect-index: drops and draws per corpus, against the weights.
    r = run_cli(inspect_index.main, [focus, "--json"])
    assert r.code == 0, r.err
    corpora = json.loads(r.out)["corpora"]
    assert list(corpora) == ["news", "chat", "wiki"] and [c["weight"] for c in corpora.values()] == [0.5, 0.3, 0.2]
    for c in corpora.values():
        assert abs(c["draw_share"] - c["weight"]) <= 0.01 and 0 < c["dropped"] < c["blocks"]
    assert "corpus" in run_cli(inspect_index.main, [focus]).out
    # lfr-report: a table of the corpora's shares and drops per phase.
    assert report.main([str(reference)]) == 0
    md = (reference / "report" / "report.md").read_text()
    assert "## Corpora of the blend" in md and "news share (weight)" in md
    # lfr-inspect-data describes the blend itself.
    r = run_cli(inspect.main, [_blend(webmix_blend), "--json"])
    assert r.code == 0, r.err
    described = json.loads(r.out)
    assert list(described["corpora"]) == ["news", "chat", "wiki"]
    assert [c["weight"] for c in described["corpora"].values()] == [0.5, 0.3, 0.2]
    assert described["tokens"] == sum(c["tokens"] for c in described["corpora"].values())
    r = run_cli(inspect.main, [_blend(webmix_blend), "--block", "800", "--seq-length", "64"])
    assert r.code == 0 and "corpus chat" in r.err  # news holds blocks 0-792
