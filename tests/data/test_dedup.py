"""lfr-dedup: finds the redundancy builder's copies, writes the same bytes for any worker count, feeds lfr-preprocess
--remove, and refuses bad input in one line."""

from __future__ import annotations

import gzip
import json

import numpy as np
import pytest
from clitools import assert_one_line_error

from lfr_ds import redundant
from lfr_ds.compare.ceilings import kept_of, score
from lfr_ds.data import dedup, preprocess
from lfr_ds.data.reader import DEFAULT_READ, iter_documents
from lfr_ds.data.tokenizer import train_tokenizer
from lfr_ds.errors import UserError

OUTPUTS = ("removed.txt", "report.json", "report.md", "kept.jsonl")


@pytest.fixture(scope="module")
def redundant_corpus(tmp_path_factory, webmix_train):
    """400 webmix documents plus copies (exact and near) making up half the words: the builder's R = 0.5."""
    unique = [{"text": d.text, "source": d.source} for d in iter_documents([str(webmix_train)], DEFAULT_READ)][:400]
    docs, _ = redundant.build(unique, [len(d["text"].split()) for d in unique], 0.5, seed=0)
    path = tmp_path_factory.mktemp("redundant") / "train.jsonl"
    path.write_text("".join(json.dumps(d) + "\n" for d in docs))
    return path, docs


@pytest.fixture(scope="module")
def deduped(tmp_path_factory, redundant_corpus):
    """lfr-dedup with 1 and with 2 workers."""
    path, _ = redundant_corpus
    outs = {}
    for j in (1, 2):
        out = tmp_path_factory.mktemp(f"dedup-j{j}") / "out"
        assert dedup.main([str(path), "-o", str(out), "--kept", "-j", str(j), "--no-progress"]) == 0
        outs[j] = out
    return outs


def test_finds_the_builders_copies(redundant_corpus, deduped):
    """The acceptance bars, on a small corpus: recall >= 95% of exact copies and >= 80% of near ones, precision
    >= 95% (the real R = 0.5 corpus's numbers: README, "Removing duplicates")."""
    _, docs = redundant_corpus
    s = score(docs, kept_of(str(deduped[1] / "removed.txt")))
    assert s["exact_copies"] > 100 and s["near_copies"] > 100
    assert s["recall_exact"] >= 0.95 and s["recall_near"] >= 0.80 and s["precision"] >= 0.95, s


def test_same_bytes_for_any_worker_count(deduped):
    for name in OUTPUTS:
        assert (deduped[1] / name).read_bytes() == (deduped[2] / name).read_bytes(), name


def test_report_adds_up(redundant_corpus, deduped):
    _, docs = redundant_corpus
    report = json.loads((deduped[1] / "report.json").read_text())
    kept = kept_of(str(deduped[1] / "removed.txt"))
    assert report["documents"] == len(docs) == len(kept)
    assert (
        report["removed"]
        == report["removed_exact"] + report["removed_near"]
        == int((kept != np.arange(len(kept))).sum())
    )
    assert sum(s["removed"] for s in report["by_source"].values()) == report["removed"]
    assert report["clusters"] == len(set(kept[kept != np.arange(len(kept))])) == sum(report["cluster_sizes"].values())
    assert report["config"] | {} == {**report["config"], "ngram": 5, "num_perm": 112, "bands": 14, "rows": 8}
    biggest = report["examples"][0]
    assert biggest["size"] == np.bincount(kept).max() and kept[biggest["removed"]["id"]] == biggest["kept"]["id"]
    kept_docs = [json.loads(line) for line in (deduped[1] / "kept.jsonl").read_text().splitlines()]
    assert [d["text"] for d in kept_docs] == [docs[i]["text"] for i in np.flatnonzero(kept == np.arange(len(kept)))]


@pytest.fixture(scope="module")
def small_tokenizer(tmp_path_factory, redundant_corpus):
    out = tmp_path_factory.mktemp("tok") / "t.model"
    train_tokenizer([str(redundant_corpus[0])], str(out), 1000)
    return out


def test_preprocess_remove_equals_preprocessing_the_kept(tmp_path, redundant_corpus, deduped, small_tokenizer):
    path, _ = redundant_corpus
    tok = str(small_tokenizer)
    a = preprocess.preprocess(
        [str(path)], str(tmp_path / "a"), tok, progress=False, remove=str(deduped[1] / "removed.txt")
    )
    b = preprocess.preprocess([str(deduped[1] / "kept.jsonl")], str(tmp_path / "b"), tok, progress=False)
    assert (
        a["num_documents"]
        == b["num_documents"]
        == len(kept_of(str(deduped[1] / "removed.txt"))) - a["removed"]["documents"]
    )
    for ext in (".bin", ".idx", ".doc_source.npy"):
        assert (tmp_path / f"a{ext}").read_bytes() == (tmp_path / f"b{ext}").read_bytes()


def test_remove_list_of_other_inputs_is_refused(tmp_path, run_cli, deduped, small_tokenizer):
    other = tmp_path / "other.jsonl"  # three documents, where the list was made for the whole corpus
    other.write_text("".join(f'{{"text": "document number {i} of another corpus"}}\n' for i in range(3)))
    args = [other, "-o", tmp_path / "ds", "-t", small_tokenizer, "--no-progress", "-j", "1"]
    result = run_cli(preprocess.main, [*args, "--remove", deduped[1] / "removed.txt"])
    assert_one_line_error(result, "--remove", "removed.txt", "run lfr-dedup on these inputs")
    (tmp_path / "junk.txt").write_text("1 0\n")
    assert_one_line_error(run_cli(preprocess.main, [*args, "--remove", tmp_path / "junk.txt"]), "not a removed.txt")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["junk.txt", "other.jsonl"]


def test_threshold_sets_the_banding():
    assert (
        dedup.DedupConfig().bands,
        dedup.DedupConfig(threshold=0.9).bands,
        dedup.DedupConfig(threshold=1).bands,
    ) == (
        14,
        7,
        1,
    )
    with pytest.raises(UserError, match="--threshold"):
        dedup.DedupConfig(threshold=0)


@pytest.mark.parametrize(
    ("name", "content", "flags", "needle"),
    [
        ("bad.jsonl", b'{"text": "fine words here"}\n{"text": broken\n', [], "bad.jsonl:2: not valid JSON"),
        ("cut.jsonl.gz", gzip.compress(b'{"text": "fine words here"}\n' * 50)[:-12], [], "cut.jsonl.gz"),
        ("empty.jsonl", b'{"text": ""}\n{"text": null}\n', [], "no documents found"),
        ("ok.jsonl", b'{"text": "fine words here"}\n', ["--threshold", "0"], "--threshold 0.0: must be in (0, 1]"),
        ("ok.jsonl", b'{"text": "fine words here"}\n', ["--threshold", "1.5"], "--threshold 1.5: must be in (0, 1]"),
    ],
)
def test_bad_input_is_one_line_and_writes_nothing(tmp_path, run_cli, name, content, flags, needle):
    (tmp_path / name).write_bytes(content)
    result = run_cli(dedup.main, [tmp_path / name, "-o", tmp_path / "out", "--no-progress", "-j", "2", *flags])
    assert_one_line_error(result, needle)
    assert result.code == 2 and not (tmp_path / "out").exists()
