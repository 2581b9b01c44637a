"""lfr-rewrite and lfr-inspect-index: same bytes as training, readable summaries, one-line errors."""

from __future__ import annotations

import dataclasses
import json
import shutil

import pytest
from clitools import assert_one_line_error
from corpora import SMALL_MODEL
from launch import launch

from lfr_ds import train
from lfr_ds.eval import cli as eval_cli
from lfr_ds.lfr import inspect_index, offline
from lfr_ds.run_state import RunState


@pytest.fixture(scope="module")
def learned(planted_small, tmp_path_factory):
    run = tmp_path_factory.mktemp("tools") / "run"
    launch(
        [
            f"data.path={planted_small}",
            f"run_dir={run}",
            *SMALL_MODEL,
            "engine.micro_batch_size=32",
            "engine.global_batch_size=32",
            "steps=31",
            "lfr.schedule=learn:27,focus:*@0.5",
            "checkpoint.interval=27",
        ],
        nproc=1,
        launcher="python",
    )
    return run


def test_offline_rewrite_matches_training_bytes(learned, tmp_path, run_cli):
    r = run_cli(offline.main, [learned / "checkpoints" / "step_00000027", "--out", tmp_path / "focus.npy"])
    assert r.code == 0, r.err
    assert (tmp_path / "focus.npy").read_bytes() == (learned / "index" / "phase_001_focus.npy").read_bytes()
    ours, theirs = (
        json.loads(p.read_text()) for p in (tmp_path / "focus.json", learned / "index" / "phase_001_focus.json")
    )
    assert ours["sha256"] == theirs["sha256"] and ours["source_drop_fraction"] == theirs["source_drop_fraction"]


def test_offline_rewrite_with_other_settings(learned, tmp_path, run_cli):
    r = run_cli(
        offline.main,
        [
            learned / "checkpoints" / "step_00000027",
            "--out",
            tmp_path / "p.npy",
            "--drop",
            "0.7",
            "lfr.selection=paper",
            "lfr.score=raw",
        ],
    )
    assert r.code == 0, r.err
    m = json.loads((tmp_path / "p.json").read_text())
    assert m["drop_fraction"] == 0.7 and m["selection"] == "paper" and m["score"] == "raw"
    assert m["dropped"] == round(0.7 * m["eligible"])


def test_inspect_index_summary(learned, run_cli):
    r = run_cli(inspect_index.main, [learned / "index" / "phase_001_focus.npy", "--json", "--examples", "2"])
    assert r.code == 0, r.err
    s = json.loads(r.out)
    assert s["kind"] == "focus" and s["kept"] + s["dropped"] == sum(c["blocks"] for c in s["sources"].values())
    assert set(s["sources"]) == {"trivial", "learnable", "noise"}
    assert len(s["examples_dropped"]) == 2 and all(e["text"] for e in s["examples_dropped"])
    text = run_cli(inspect_index.main, [learned / "index" / "phase_001_focus.npy"]).out
    assert "drop fraction by difficulty decile" in text and "trivial" in text


@pytest.mark.parametrize(
    ("argv", "needles"),
    [
        (["{tmp}/nothing", "--out", "{tmp}/x.npy"], ["not an lfr-ds checkpoint"]),
        (["{ckpt}", "--out", "{tmp}/x.npy", "--phase", "9"], ["--phase 9", "phases 0..1"]),
        (["{ckpt}", "--out", "{tmp}/x.npy", "engine.zero_stage=3"], ["only lfr.* settings"]),
        (["{ckpt}", "--out", "{tmp}/x.npy", "lfr.selection=best"], ["lfr.selection"]),
        (["{ckpt}", "--out", "{tmp}/x.npy", "--drop", "1.0"], ["--drop 1.0"]),
        (["{ckpt}", "--out", "{tmp}/missing/x.npy"], ["--out"]),
    ],
)
def test_rewrite_bad_input(learned, tmp_path, run_cli, argv, needles):
    ckpt = learned / "checkpoints" / "step_00000027"
    r = run_cli(offline.main, [a.format(tmp=tmp_path, ckpt=ckpt) for a in argv])
    assert_one_line_error(r, *needles)
    assert not list(tmp_path.glob("x.*"))


def test_inspect_bad_input(tmp_path, learned, run_cli):
    assert_one_line_error(run_cli(inspect_index.main, [tmp_path / "none.npy"]), "none.npy")
    corrupt = tmp_path / "index"
    corrupt.mkdir()
    for name in ("phase_001_focus.npy", "phase_001_focus.json"):
        (corrupt / name).write_bytes((learned / "index" / name).read_bytes())
    (tmp_path / "config.json").write_text((learned / "config.json").read_text())
    raw = bytearray((corrupt / "phase_001_focus.npy").read_bytes())
    raw[-1] ^= 0xFF
    (corrupt / "phase_001_focus.npy").write_bytes(bytes(raw))
    assert_one_line_error(run_cli(inspect_index.main, [corrupt / "phase_001_focus.npy"]), "checksum does not match")


# ---- a checkpoint whose lfr/state.json lacks a field: every command that reads it says so in one line --------

# The optional guard record (absent in older checkpoints) is checked field by field when present: one of its
# fields stands for them here (tests/test_run_state.py checks each).
STATE_FIELDS = [f.name for f in dataclasses.fields(RunState) if not f.metadata.get("optional")] + ["guard.skipped"]


@pytest.fixture(scope="module")
def damaged(learned, tmp_path_factory):
    """A copy of ``learned``'s step-27 checkpoint (DeepSpeed's files too, so lfr-train gets as far as its state)."""
    ckpt = tmp_path_factory.mktemp("damaged") / "step_00000027"
    shutil.copytree(learned / "checkpoints" / "step_00000027", ckpt)
    return ckpt


def _resume_args(ckpt, run_dir, planted: str) -> list[str]:
    return [
        f"data.path={planted}",
        f"run_dir={run_dir}",
        *SMALL_MODEL,
        "engine.micro_batch_size=32",
        "engine.global_batch_size=32",
        "steps=31",
        "lfr.schedule=learn:27,focus:*@0.5",
        f"checkpoint.resume={ckpt}",
    ]


@pytest.mark.parametrize("name", STATE_FIELDS)
def test_a_state_missing_a_field_is_one_line_in_every_command(name, learned, damaged, planted_small, tmp_path, run_cli):
    """lfr-rewrite, a resuming lfr-train (before DeepSpeed starts) and lfr-eval, each in one line, exit 2."""
    state = json.loads((learned / "checkpoints" / "step_00000027" / "lfr" / "state.json").read_text())
    assert RunState.from_json(state, "intact")  # the real one reads
    record, _, field = name.rpartition(".")
    del (state[record] if record else state)[field]
    (damaged / "lfr" / "state.json").write_text(json.dumps(state))
    where = f" (its '{record}')" if record else ""
    needle = f"step_00000027/lfr/state.json{where}: unreadable (no '{field}'); the checkpoint is damaged"
    for main, argv in [
        (offline.main, [damaged, "--out", tmp_path / "x.npy"]),
        (train.main, _resume_args(damaged, tmp_path / "run", planted_small)),
        (eval_cli.main, [damaged, "--mc", tmp_path / "mc.jsonl"]),
    ]:
        r = run_cli(main, argv)
        assert r.code == 2
        assert_one_line_error(r, needle)
    assert not (tmp_path / "x.npy").exists() and not (tmp_path / "run").exists()
