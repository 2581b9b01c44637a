"""The comparison corpus: the redundancy builder, the fixed held-out set, and rebuilding by digest."""

from __future__ import annotations

import dataclasses
import json
from collections import Counter

import numpy as np
import pytest

from lfr_ds import redundant
from lfr_ds.compare.corpus import PROBE_MIN_BLOCKS, CorpusSpec, prepare
from lfr_ds.data.blocks import BlockView
from lfr_ds.data.dataset import open_dataset
from lfr_ds.errors import UserError


def _docs(n: int) -> list[dict]:
    return [{"text": " ".join(f"w{i}x{k}" for k in range(20 + i % 50)), "source": f"s{i % 3}"} for i in range(n)]


def test_builder_is_deterministic_heavy_tailed_and_exact_in_share():
    unique = _docs(1000)
    lengths = [len(d["text"]) for d in unique]
    docs, built = redundant.build(unique, lengths, 0.5, seed=7)
    assert (docs, built) == redundant.build(unique, lengths, 0.5, seed=7)
    assert docs != redundant.build(unique, lengths, 0.5, seed=8)[0]
    copies = [d for d in docs if d["repeat_of"] is not None]
    chars = sum(len(d["text"]) for d in docs)
    assert abs(sum(len(d["text"]) for d in copies) / chars - 0.5) < 0.01 and built.repeat_share == pytest.approx(
        0.5, abs=0.005
    )
    for d in copies:  # a copy points at an original, and is it or differs in a few words
        original = docs[d["repeat_of"]]
        assert original["repeat_of"] is None and d["source"] == original["source"]
        a, b = d["text"].split(" "), original["text"].split(" ")
        assert len(a) == len(b) and sum(x != y for x, y in zip(a, b, strict=True)) <= max(1, round(0.03 * len(b)))
    counts = sorted(Counter(d["repeat_of"] for d in copies).values())
    assert counts[len(counts) // 2] <= 2 and counts[-1] >= 10  # most repeated a few times, a few very often
    assert built.near_copies > 0 and built.near_copies < built.copies
    assert redundant.build(unique, lengths, 0.0, seed=7)[1].copies == 0


@pytest.fixture(scope="module")
def valid_with_leak(tmp_path_factory, webmix_train):
    """webmix valid plus two webmix *train* documents: the builder must keep them out of train."""
    out = tmp_path_factory.mktemp("valid")
    lines = (webmix_train.parent / "valid.jsonl").read_text().splitlines()
    leaked = webmix_train.read_text().splitlines()[:2]
    (out / "valid.jsonl").write_text("\n".join(lines + leaked) + "\n")
    return out / "valid.jsonl", [json.loads(line)["text"] for line in leaked]


def _spec(train, valid, redundancy: float, **kw) -> CorpusSpec:
    return CorpusSpec(
        str(train),
        str(valid),
        redundancy,
        subset_seed=kw.get("subset_seed", 0),
        vocab_size=1024,
        unique_tokens=kw.get("unique_tokens", 200_000),
        seq_length=64,
        heldout_blocks=512,
    )


def test_redundant_corpus_share_heldout_and_determinism(tmp_path, webmix_train, valid_with_leak):
    valid, leaked = valid_with_leak
    a = prepare(_spec(webmix_train, valid, 0.5), tmp_path / "a")
    prepare(_spec(webmix_train, valid, 0.5), tmp_path / "b")
    for name in ("train.jsonl", "train.bin", "train.idx", "train.repeat.npy", "heldout.jsonl", "tokenizer.model"):
        assert (tmp_path / "a" / "data" / name).read_bytes() == (tmp_path / "b" / "data" / name).read_bytes(), name
    ds = open_dataset(a.prefix)
    repeats = a.repeats()
    share = ds.indexed.sequence_lengths[repeats].sum() / ds.num_tokens
    assert abs(share - 0.5) <= 0.02 and a.info["repeat_token_share"] == pytest.approx(share)
    # Held-out text never reaches training, not even when the dev file shares documents with train.
    train_texts = {
        json.loads(line)["text"] for line in (tmp_path / "a" / "data" / "train.jsonl").read_text().splitlines()
    }
    heldout = [json.loads(line) for line in (tmp_path / "a" / "data" / "heldout.jsonl").read_text().splitlines()]
    assert not train_texts & {d["text"] for d in heldout} and not train_texts & set(leaked)
    assert a.info["left_out_as_heldout"] == 2
    assert {d["source"] for d in heldout} == {"chat", "news", "reviews", "speeches", "wiki"}  # every source present
    # Per block, the share of copied tokens: averaged over all blocks it is the corpus' share.
    view = BlockView(ds, 64, seed=3)
    assert view.token_share(repeats).mean() == pytest.approx(share, abs=0.002)


def test_a_changed_corpus_is_refused_not_reused(tmp_path, webmix_train, valid_with_leak):
    valid, _ = valid_with_leak
    prepare(_spec(webmix_train, valid, 0.0, unique_tokens=30_000), tmp_path)
    for changed, needle in (
        (_spec(webmix_train, valid, 0.25, unique_tokens=30_000), "redundancy: 0.0 -> 0.25"),
        (_spec(webmix_train, valid, 0.0, unique_tokens=30_000, subset_seed=1), "subset_seed: 0 -> 1"),
        (_spec(valid, valid, 0.0, unique_tokens=30_000), "train.path"),
    ):
        with pytest.raises(UserError, match="use a new --out") as e:
            prepare(changed, tmp_path)
        assert needle in str(e.value)
    assert np.array_equal(
        prepare(_spec(webmix_train, valid, 0.0, unique_tokens=30_000), tmp_path).repeats(),
        np.zeros(open_dataset(str(tmp_path / "data" / "train")).num_documents, bool),
    )


def test_probes_are_originals_that_no_arm_trains_on(tmp_path, webmix_train, valid_with_leak):
    """--probe-fraction (issue 21): whole original documents, split off before the copies are made, in no
    arm's training data; a corpus without probes keeps the digest it had."""
    valid, _ = valid_with_leak
    spec = _spec(webmix_train, valid, 0.5, unique_tokens=60_000)
    probed = dataclasses.replace(spec, probe_fraction=0.01)
    assert "probe_fraction" not in spec.inputs() and probed.inputs()["probe_fraction"] == 0.01
    corpus = prepare(probed, tmp_path)
    probe_texts = [json.loads(line)["text"] for line in (tmp_path / "data" / "probe.jsonl").read_text().splitlines()]
    train_texts = {json.loads(line)["text"] for line in (tmp_path / "data" / "train.jsonl").read_text().splitlines()}
    assert probe_texts and not train_texts & set(probe_texts)  # not even a text the input holds twice
    # No copy's twin is a probe: no training document is a near copy of one (same length in words, few edits).
    words = {len(t.split(" ")) for t in probe_texts}
    near = [
        t
        for t in train_texts
        if len(t.split(" ")) in words
        and any(
            sum(a != b for a, b in zip(t.split(" "), p.split(" "), strict=True))
            <= max(1, round(0.03 * len(p.split(" "))))
            for p in probe_texts
            if len(p.split(" ")) == len(t.split(" "))
        )
    ]
    assert not near
    # At least the comparison's floor of blocks, and far below half of the training data (which a run refuses).
    probe_blocks = (open_dataset(corpus.probe).num_tokens - 1) // 64
    assert PROBE_MIN_BLOCKS <= probe_blocks < (open_dataset(corpus.prefix).num_tokens - 1) // 64 // 2
    assert corpus.info["probe_documents"] == len(probe_texts) and corpus.info["left_out_as_heldout"] == 2
    from lfr_ds.compare import runs

    setup = runs.Setup(tmp_path, corpus, (), "random", (), 10, 64, 1, "", 1, 1)
    assert f"lfr.probe_path={corpus.probe}" in runs.overrides(runs.Run("random", 1, 1.0), setup)
