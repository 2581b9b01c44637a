"""lfr-compare --split (issue 20's while-here): one split of a snapshot directory, as lfr-preprocess --split."""

from __future__ import annotations

import pytest

from lfr_ds.compare import cli as compare
from lfr_ds.compare.corpus import CorpusSpec, _read
from lfr_ds.errors import UserError


@pytest.fixture
def snapshot(tmp_path, webmix_train):
    lines = webmix_train.read_text().splitlines()
    (tmp_path / "snap" / "train").mkdir(parents=True)
    (tmp_path / "snap" / "validation").mkdir()
    (tmp_path / "snap" / "train" / "part-0.jsonl").write_text("\n".join(lines[:30]) + "\n")
    (tmp_path / "snap" / "validation" / "part-0.jsonl").write_text("\n".join(lines[30:40]) + "\n")
    return tmp_path / "snap"


def test_split_picks_the_training_split(snapshot, tmp_path):
    argv = ["--out", str(tmp_path / "out"), "--train", str(snapshot), "--blimp", ""]
    with pytest.raises(UserError, match="holds the splits train, validation; choose one with --split NAME"):
        compare.parse_args(argv)
    args = compare.parse_args([*argv, "--split", "train"])
    assert "--split train" in compare.command_line(args)
    spec = CorpusSpec(str(snapshot), str(snapshot / "validation"), 0.0, 0, 1024, 10_000, 64, 8, split="train")
    assert len(_read(spec.train, spec.split)) == 30  # the validation split is never read as training text
    inputs = spec.inputs()
    assert inputs["split"] == "train" and len(inputs["train"]["sha256"]) == 64
    (snapshot / "validation" / "part-0.jsonl").write_text('{"text": "changed"}\n')
    assert spec.inputs()["train"] == inputs["train"]  # only the chosen split's files identify it
    (snapshot / "train" / "part-0.jsonl").write_text('{"text": "changed"}\n')
    assert spec.inputs()["train"] != inputs["train"]


def test_a_file_corpus_records_no_split(webmix_train):
    """Corpora built before --split existed keep their digests: no split key when none is given."""
    spec = CorpusSpec(str(webmix_train), str(webmix_train), 0.0, 0, 1024, 10_000, 64, 8)
    assert "split" not in spec.inputs()
