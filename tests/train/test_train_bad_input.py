"""lfr-train's bad inputs: one line naming the thing and the fix, exit 2, no traceback, before any rank starts."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from clitools import CliResult, assert_one_line_error

from lfr_ds import train
from lfr_ds.data.tokenizer import train_tokenizer


def test_missing_dataset(run_cli, tmp_path):
    r = run_cli(train.main, [f"data.path={tmp_path}/nope", f"run_dir={tmp_path}/run"])
    assert_one_line_error(r, "nope.idx", "lfr-preprocess")


def test_unknown_preset(run_cli, webmix_dataset, tmp_path):
    r = run_cli(train.main, [f"data.path={webmix_dataset}", "model.preset=gpt2-13b"])
    assert_one_line_error(r, "model.preset", "gpt2-13b", "gpt2-1.5b")


def test_unknown_key_suggests_closest(run_cli, webmix_dataset):
    r = run_cli(train.main, [f"data.path={webmix_dataset}", "engine.micro_batchsize=4"])
    assert_one_line_error(r, "engine.micro_batchsize", "did you mean engine.micro_batch_size?")


def test_unknown_key_in_config_file(run_cli, webmix_dataset, tmp_path):
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(f"data:\n  path: {webmix_dataset}\noptim:\n  lr_warmup: 10\n")
    r = run_cli(train.main, ["--config", cfg])
    assert_one_line_error(r, "optim.lr_warmup", "did you mean optim.")


def test_batch_does_not_divide_across_ranks(run_cli, webmix_dataset, tmp_path, monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "3")
    monkeypatch.setenv("RANK", "0")  # as a launcher sets it beside WORLD_SIZE
    monkeypatch.setenv("LOCAL_RANK", "0")
    r = run_cli(
        train.main,
        [
            f"data.path={webmix_dataset}",
            "engine.micro_batch_size=2",
            "engine.global_batch_size=8",
            f"run_dir={tmp_path}",
        ],
    )
    assert_one_line_error(r, "engine.global_batch_size 8", "3 ranks", "multiple of 6")


def test_resume_path_without_checkpoint(run_cli, webmix_dataset, tmp_path):
    r = run_cli(
        train.main,
        [f"data.path={webmix_dataset}", f"checkpoint.resume={tmp_path}", f"run_dir={tmp_path}/run"],
    )
    assert_one_line_error(r, "checkpoint.resume", str(tmp_path), "no complete lfr-ds checkpoint")


def test_vocab_mismatch_with_model(run_cli, webmix_dataset, tmp_path):
    r = run_cli(train.main, [f"data.path={webmix_dataset}", "model.vocab_size=50257", f"run_dir={tmp_path}"])
    assert_one_line_error(r, "model.vocab_size 50257", "8192")


def test_tokenizer_other_than_the_datasets(run_cli, webmix_dataset, webmix_train, tmp_path):
    other = tmp_path / "other.model"
    train_tokenizer([str(webmix_train)], str(other), 1000, max_docs=100)
    r = run_cli(train.main, [f"data.path={webmix_dataset}", f"data.tokenizer={other}", f"run_dir={tmp_path}"])
    assert_one_line_error(r, "built with tokenizer", "other.model")


@pytest.mark.parametrize(
    ("schedule", "needle"),
    [
        ("learn:5,focus:5@1.5", "drop fraction 1.5 is outside [0, 1)"),
        ("learn:5,focus:x@0.5", "phase 2 ('focus:x@0.5'): bad length"),
        ("learn:3", "add up to 3 steps but the run has steps=10"),
    ],
)
def test_bad_schedule(run_cli, webmix_dataset, tmp_path, schedule, needle):
    r = run_cli(
        train.main,
        [f"data.path={webmix_dataset}", f"lfr.schedule={schedule}", "steps=10", f"run_dir={tmp_path}"],
    )
    assert_one_line_error(r, needle)


def test_bad_config_file(run_cli, tmp_path):
    cfg = tmp_path / "bad.yaml"
    cfg.write_text("data: [unclosed\n")
    assert_one_line_error(run_cli(train.main, ["--config", cfg]), "bad.yaml", "not valid YAML")


@pytest.mark.parametrize("unset", [("RANK", "LOCAL_RANK"), ("RANK",), ("LOCAL_RANK",)], ids="+".join)
def test_world_size_left_in_the_shell_is_refused_before_deepspeed(webmix_dataset, tmp_path, unset):
    """WORLD_SIZE=2 and one process launched without a launcher: the process cannot know its rank. Before
    this check it started a one-rank group and DeepSpeed's batch assertion escaped as a traceback. A real
    process (in-process runs inherit the one-process environment an earlier test's group set)."""
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "LOCAL_SIZE")}
    env.update(WORLD_SIZE="2", RANK="0", LOCAL_RANK="0", OMP_NUM_THREADS="1")
    for name in unset:
        del env[name]
    run = tmp_path / "run"
    proc = subprocess.run(
        [sys.executable, "-m", "lfr_ds.train", f"data.path={webmix_dataset}", "model.preset=tiny", f"run_dir={run}"],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    r = CliResult(proc.returncode, proc.stdout, proc.stderr)
    assert_one_line_error(r, "WORLD_SIZE=2 but ", f"{' and '.join(unset)} ", "unset WORLD_SIZE to run one process")
    assert r.code == 2
    assert not run.exists() and "DeepSpeed" not in proc.stdout + proc.stderr
