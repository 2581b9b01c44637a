"""lfr-compare --labels lfr-dedup: the ceilings take their copy labels from lfr-dedup, on any corpus, apart from the
builder's, and the results say which labels were used."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from lfr_ds.compare import ceilings, report
from lfr_ds.compare import cli as compare
from lfr_ds.compare.corpus import CorpusSpec, prepare
from lfr_ds.data.dataset import open_dataset
from lfr_ds.data.dedup import read_removed
from lfr_ds.errors import UserError


@pytest.fixture(scope="module")
def corpus(tmp_path_factory, webmix_train):
    out = tmp_path_factory.mktemp("labels")
    spec = CorpusSpec(str(webmix_train), str(webmix_train.parent / "valid.jsonl"), 0.5, 0, 512, 30_000, 64, 32)
    return prepare(spec, out)


def test_dedup_labels_feed_the_ceilings(corpus):
    labelled = ceilings.with_labels(corpus, "lfr-dedup")
    ids, _, documents = read_removed(str(Path(corpus.prefix).with_name("lfr-dedup") / "removed.txt"))
    repeats = labelled.repeats()
    assert documents == len(repeats) and np.array_equal(np.flatnonzero(repeats), ids)
    assert ceilings.with_labels(corpus, "builder") is corpus and not np.array_equal(repeats, corpus.repeats())
    # Its own dedup dataset and oracle masks: runs on the builder's labels are never reused for the tool's.
    assert ceilings.dedup_prefix(labelled) != ceilings.dedup_prefix(corpus)
    assert ceilings.mask_path(labelled, 1) != ceilings.mask_path(corpus, 1)
    ceilings.prepare(labelled, ["random", "dedup"], [1], 64)
    kept = np.load(ceilings.dedup_prefix(labelled) + ".train_doc.npy")
    assert np.array_equal(kept, np.flatnonzero(~repeats))
    assert open_dataset(ceilings.dedup_prefix(labelled)).num_documents == len(kept)
    info = ceilings.labels_info(labelled)
    assert info["labels"] == "lfr-dedup" and info["against_builder"]["recall_exact"] >= 0.95
    assert ceilings.labels_info(corpus) == {"labels": "builder", "repeat_token_share": pytest.approx(0.5, abs=0.02)}
    assert "Copy labels: lfr-dedup" in "\n".join(report._labels_lines({"labels": info}))


def test_dedup_labels_allow_the_ceilings_without_builder_copies(tmp_path):
    args = ["--arms", "random,dedup", "--redundancy", "0", "--blimp", "", "--out", str(tmp_path)]
    with pytest.raises(UserError, match="--labels lfr-dedup"):
        compare.parse_args(args)
    parsed = compare.parse_args([*args, "--labels", "lfr-dedup"])
    assert parsed.labels == "lfr-dedup" and "--labels lfr-dedup" in compare.command_line(parsed)
