"""Fixtures of the evaluation tests: a small training set and two short real training runs (ZeRO-2 and
ZeRO-3, trained side by side, one process each, about 20 s together), plus small evaluation files."""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from launch import base_overrides, launch

#: Documents of webmix train in the small training set: ~100k tokens, a few hundred blocks of 257.
TRAIN_DOCS = 300


@pytest.fixture(scope="session")
def small_dataset(tmp_path_factory, webmix_train, webmix_tokenizer) -> Path:
    """The first documents of webmix train, preprocessed with the webmix tokenizer; returns the prefix."""
    from lfr_ds.data.preprocess import preprocess

    root = tmp_path_factory.mktemp("evaldata")
    lines = webmix_train.read_text().splitlines(keepends=True)[:TRAIN_DOCS]
    (root / "small.jsonl").write_text("".join(lines))
    prefix = root / "small"
    preprocess([str(root / "small.jsonl")], str(prefix), str(webmix_tokenizer), workers=1, progress=False)
    return prefix


@pytest.fixture(scope="session")
def trained_runs(tmp_path_factory, small_dataset) -> dict[int, Path]:
    """Run directories by ZeRO stage: 3 steps of the tiny preset, same seed and data, saved at the end."""
    root = tmp_path_factory.mktemp("evalruns")

    def run(stage: int) -> Path:
        run_dir = root / f"zero{stage}"
        overrides = base_overrides(
            small_dataset,
            run_dir,
            steps=3,
            **{
                "engine.zero_stage": stage,
                "engine.global_batch_size": 4,
                "checkpoint.interval": 0,
                "log.trace_blocks": "false",
                "log.tensorboard": "false",
            },
        )
        launch(overrides, nproc=1, launcher="python", timeout=300)
        return run_dir

    with ThreadPoolExecutor(2) as pool:
        return dict(zip((2, 3), pool.map(run, (2, 3)), strict=True))


@pytest.fixture(scope="session")
def eval_data(webmix_train) -> Path:
    """The shared evaluation sets (BLiMP, LAMBADA), next to webmix."""
    return webmix_train.parents[1] / "eval"


@pytest.fixture(scope="session")
def valid_jsonl(tmp_path_factory, webmix_train) -> Path:
    """Documents of webmix valid from three of its sources (the file is grouped by source)."""
    lines = (webmix_train.parent / "valid.jsonl").read_text().splitlines(keepends=True)
    path = tmp_path_factory.mktemp("valid") / "valid.jsonl"
    path.write_text("".join(lines[:20] + lines[1000:1020] + lines[-10:]))
    return path


@pytest.fixture(scope="session")
def mc_file(tmp_path_factory, eval_data) -> Path:
    """Multiple-choice items built from LAMBADA passages: the true last word against two others."""
    rows = [json.loads(line) for line in (eval_data / "lambada_test.jsonl").open()][:6]
    path = tmp_path_factory.mktemp("mc") / "lastword.jsonl"
    with path.open("w") as f:
        for i, row in enumerate(rows):
            context, _, word = row["text"].rpartition(" ")
            choices = [" " + word, " the", " nevertheless"]
            choices.insert(i % 3, choices.pop(0))  # the answer in every position
            f.write(json.dumps({"context": context, "choices": choices, "label": i % 3}) + "\n")
    return path
