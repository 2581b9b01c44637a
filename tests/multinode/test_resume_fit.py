"""A checkpoint fits only a run with its model shape, vocabulary, tokenizer, dataset, block cut and global
batch (lfr_ds/identity.py). lfr-train, lfr-eval and lfr-rewrite refuse any other pairing in one line that
names each mismatch and its fix, before DeepSpeed loads anything (each refusal here would fail loudly if
it got as far as starting a process group or loading weights). What may change still works: a longer
run on another micro batch here; other rank counts in test_elastic_resume.py."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
from clitools import assert_one_line_error
from launch import launch, read_trace

from lfr_ds import train
from lfr_ds.data.blocks import BlockView
from lfr_ds.data.dataset import open_dataset
from lfr_ds.data.preprocess import preprocess
from lfr_ds.data.sample_index import read_sample_index
from lfr_ds.data.sampler import shuffled_order
from lfr_ds.data.tokenizer import train_tokenizer
from lfr_ds.eval import cli as eval_cli
from lfr_ds.lfr import offline

STEPS, G = 6, 16


@pytest.fixture(scope="module")
def run6(job, tmp_path_factory) -> Path:
    """The default (random) schedule for 6 steps in one process, checkpoints at steps 3 and 6."""
    run = tmp_path_factory.mktemp("fit") / "run"
    launch(job(run, steps=STEPS, **{"lfr.schedule": "random", "checkpoint.interval": 3}), nproc=1, launcher="python")
    return run


@pytest.fixture(scope="module")
def other(small_data, tmp_path_factory) -> tuple[str, str]:
    """The same corpus under another tokenizer (400 pieces): ``(dataset prefix, tokenizer)``."""
    d = tmp_path_factory.mktemp("other")
    corpus = str(Path(small_data).parent / "planted.jsonl")
    train_tokenizer([corpus], str(d / "tok.model"), 400)
    preprocess([corpus], str(d / "data"), str(d / "tok.model"), progress=False)
    return str(d / "data"), str(d / "tok.model")


@pytest.fixture
def no_engine(monkeypatch):
    """Starting a process group (lfr-train) or loading weights (lfr-eval) fails the test."""

    def started(*args, **kwargs):
        raise AssertionError("got past the compatibility check")

    monkeypatch.setattr(train, "init_distributed", started)
    monkeypatch.setattr(eval_cli, "load_model", started)


def _args(job, run: Path, **change) -> list[str]:
    """``run6``'s own arguments, with ``change``."""
    return job(run, steps=STEPS, **{"lfr.schedule": "random", **change})


def _snapshot(root: Path) -> dict[str, int]:
    return {str(p): p.stat().st_mtime_ns for p in root.rglob("*")}


@pytest.mark.parametrize(
    ("change", "needle"),
    [
        ({"model.num_layers": 3}, "the checkpoint has 2 layers, this run 3 layers (set model.num_layers=2)"),
        ({"model.hidden_size": 32}, "has hidden size 64, this run hidden size 32 (set model.hidden_size=64)"),
        (
            {"model.num_attention_heads": 2},
            "has 4 attention heads, this run 2 attention heads (set model.num_attention_heads=4)",
        ),
        ({"model.seq_length": 32}, "has sequence length 64, this run sequence length 32 (set model.seq_length=64)"),
        (
            {"model.make_vocab_size_divisible_by": 64},
            "has vocabulary padding to a multiple of 128, this run vocabulary padding to a multiple of 64 "
            "(set model.make_vocab_size_divisible_by=128)",
        ),
        (
            {"model.sketch_dim": 8},
            "has block sketches of width 16, this run block sketches of width 8 (set model.sketch_dim=16)",
        ),
        (
            {"data.seed": 7},
            "has blocks cut with data.seed 1234, this run blocks cut with data.seed 7 (set data.seed=1234)",
        ),
        (
            {"engine.global_batch_size": 32},
            "has global batch 16, this run global batch 32 (set engine.global_batch_size=16)",
        ),
        ({"engine.zero_stage": 3}, "has ZeRO stage 2, this run ZeRO stage 3 (set engine.zero_stage=2)"),
    ],
    ids=lambda v: next(iter(v)) if isinstance(v, dict) else "",
)
def test_train_refuses_a_changed_setting(run6, job, run_cli, no_engine, change, needle):
    before = _snapshot(run6)
    r = run_cli(train.main, _args(job, run6, **change))
    assert_one_line_error(r, f"{run6}/checkpoints/step_00000006: ", needle, "; or train from scratch in a new run_dir")
    assert r.code == 2
    assert _snapshot(run6) == before


def test_train_names_every_mismatch_in_one_line(run6, job, run_cli, no_engine):
    r = run_cli(train.main, _args(job, run6, **{"model.num_layers": 4, "model.seq_length": 128}))
    assert_one_line_error(
        r, "(set model.num_layers=2); the checkpoint has sequence length 64", "(set model.seq_length=64)"
    )


def test_train_on_another_dataset_names_the_dataset(run6, job, run_cli, no_engine, other, small_data):
    r = run_cli(train.main, _args(job, run6, data=other[0]))
    # Its tokenizer and vocabulary differ too, but follow from the dataset: one fix, named once.
    assert_one_line_error(r, f"the checkpoint has dataset {small_data} (fingerprint ", f"(set data.path={small_data})")
    assert "tokenizer" not in r.err and "vocabulary" not in r.err


def test_eval_refuses_another_tokenizer_before_loading_weights(run6, run_cli, no_engine, other, small_data):
    valid = Path(small_data).parent / "planted.jsonl"
    r = run_cli(eval_cli.main, [run6, "--valid", valid, "--tokenizer", other[1]])
    run_tok = Path(small_data).parent / "tok.model"
    assert_one_line_error(r, f"the checkpoint has tokenizer {run_tok} (sha256 ", f"(pass --tokenizer {run_tok})")
    assert r.code == 2


def test_rewrite_refuses_another_dataset(run6, run_cli, other, small_data, tmp_path):
    ckpt = run6 / "checkpoints" / "step_00000003"
    r = run_cli(offline.main, [ckpt, "--phase", "0", "--out", tmp_path / "x.npy", "--data", other[0]])
    assert_one_line_error(r, f"{ckpt}: the checkpoint has dataset {small_data}", f"(pass --data {small_data})")
    assert list(tmp_path.iterdir()) == []


def test_longer_run_on_another_micro_batch_continues_the_same_order(run6, job, small_data, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(run6, run)
    before = np.array(read_sample_index(run / "index" / "phase_000_random.npy")[0])
    proc = launch(
        job(run, steps=9, **{"lfr.schedule": "random", "engine.micro_batch_size": 4, "log.interval": 2}),
        nproc=1,
        launcher="python",
    )
    assert f"resumed from {run}/checkpoints/step_00000006 at step 6" in proc.stderr
    trace = read_trace(run)
    assert [t["step"] for t in trace] == list(range(1, 10))
    # The random phase's index is rebuilt 9 steps long: the same seeded epochs, so the same 6 steps first.
    order, manifest = read_sample_index(run / "index" / "phase_000_random.npy")
    assert manifest.steps == 9 and np.array_equal(order[: STEPS * G], before)
    blocks = BlockView(open_dataset(small_data), 64, 1234).num_blocks
    assert np.array_equal(np.concatenate([t["ids"] for t in trace]), shuffled_order(blocks, 9 * G, [1234, 0]))


def test_lengthening_a_focus_phase_mid_phase_is_refused(ref1, job, run_cli, no_engine):
    # ref1 ends in focus:* from step 10 to 20; 25 steps would draw 5 more steps of an order drawn at step 10.
    r = run_cli(train.main, job(ref1, steps=25))
    assert_one_line_error(
        r, "steps=25: lengthens phase_001_focus from 10 to 15 steps", "keep it at 10 steps in lfr.schedule"
    )
