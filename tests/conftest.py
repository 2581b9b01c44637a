"""Shared fixtures: the real webmix corpus from ../shared/data, a tokenizer and a dataset built from it once
per session, and ``run_cli``, which runs a CLI in-process and captures its output."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from clitools import CliResult

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("LFR_SHARED_DATA", ROOT.parent / "shared" / "data"))
WEBMIX = SHARED_DATA / "webmix"


def pytest_configure(config):
    if not (WEBMIX / "train.jsonl").is_file():
        raise pytest.UsageError(
            f"real data not found at {WEBMIX}: tests read ../shared/data (or set LFR_SHARED_DATA)"
        )


@pytest.fixture(scope="session")
def webmix_train() -> Path:
    return WEBMIX / "train.jsonl"


@pytest.fixture(scope="session")
def webmix_tokenizer(tmp_path_factory, webmix_train) -> Path:
    """The acceptance tokenizer: 8k-vocab BPE trained on all of webmix train (about 3 s)."""
    from lfr_ds.data.tokenizer import train_tokenizer

    out = tmp_path_factory.mktemp("tok") / "webmix8k.model"
    train_tokenizer([str(webmix_train)], str(out), 8192)
    return out


@pytest.fixture(scope="session")
def webmix_dataset(tmp_path_factory, webmix_train, webmix_tokenizer) -> Path:
    """webmix train preprocessed with 2 workers; returns the prefix."""
    from lfr_ds.data.preprocess import preprocess

    prefix = tmp_path_factory.mktemp("webmix") / "train"
    preprocess([str(webmix_train)], str(prefix), str(webmix_tokenizer), workers=2, progress=False)
    return prefix


@pytest.fixture
def run_cli(capsys):
    """Run ``main(argv)`` of a CLI in-process; returns exit code, stdout and stderr."""

    def run(main, argv: list[str]) -> CliResult:
        capsys.readouterr()
        try:
            code = main([str(a) for a in argv])
        except SystemExit as e:
            code = e.code if isinstance(e.code, int) else 1
        captured = capsys.readouterr()
        return CliResult(code, captured.out, captured.err)

    return run
