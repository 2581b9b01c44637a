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
        raise pytest.UsageError(f"real data not found at {WEBMIX}: tests read ../shared/data (or set LFR_SHARED_DATA)")


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


@pytest.fixture(scope="session")
def webmix_blend(tmp_path_factory, webmix_train, webmix_tokenizer) -> list[str]:
    """Three corpora for blends (issue 20): webmix train split by its source labels (news, chat, wiki;
    the first 150 documents of each), each preprocessed with the webmix tokenizer; returns the prefixes."""
    import json

    from lfr_ds.data.preprocess import preprocess

    root = tmp_path_factory.mktemp("blend")
    wanted = {"news": [], "chat": [], "wiki": []}
    with open(webmix_train) as f:
        for line in f:
            doc = wanted.get(json.loads(line).get("source"))
            if doc is not None and len(doc) < 150:
                doc.append(line)
    prefixes = []
    for name, lines in wanted.items():
        (root / f"{name}.jsonl").write_text("".join(lines))
        preprocess([str(root / f"{name}.jsonl")], str(root / name), str(webmix_tokenizer), workers=1, progress=False)
        prefixes.append(str(root / name))
    return prefixes
