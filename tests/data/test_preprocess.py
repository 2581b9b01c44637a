"""Tokenizer + preprocessing on real data: round trip, worker determinism, sidecar, megatron interop."""

from __future__ import annotations

import json

import numpy as np
from megatron.core.datasets.indexed_dataset import IndexedDataset, IndexedDatasetBuilder

from lfr_ds.data.dataset import open_dataset
from lfr_ds.data.preprocess import preprocess
from lfr_ds.data.tokenizer import EOD_ID, Tokenizer, train_tokenizer


def test_webmix_round_trip_every_document(webmix_train, webmix_tokenizer, webmix_dataset):
    """Decoding every preprocessed document gives back its text exactly (identity normalisation)."""
    tok = Tokenizer(webmix_tokenizer)
    ds = open_dataset(str(webmix_dataset))
    # split on "\n" only: str.splitlines would also cut at U+2028 inside a JSON string
    texts = [json.loads(line) for line in webmix_train.read_text().split("\n") if line]
    assert ds.num_documents == len(texts) == 25982
    for i, obj in enumerate(texts):
        ids = ds.document(i)
        assert ids[-1] == EOD_ID and EOD_ID not in ids[:-1]
        assert tok.decode(ids[:-1]) == obj["text"], f"document {i} does not round-trip"
    # Sources come through to the sidecar, per document, in order.
    assert [ds.sources[c] for c in ds.doc_source[:50]] == [obj["source"] for obj in texts[:50]]
    assert ds.meta["source_documents"]["speeches"] == 191
    assert ds.dtype == np.uint16 and tok.vocab_size == 8192


def test_workers_do_not_change_output(tmp_path, webmix_tokenizer):
    """1 worker (in-process) and 3 workers write byte-identical files."""
    src = tmp_path / "in.jsonl"
    lines = [json.dumps({"text": f"document {i} " + "words " * (i % 50), "source": f"s{i % 3}"}) for i in range(3000)]
    src.write_text("\n".join(lines) + "\n")
    out = {}
    for workers in (1, 3):
        prefix = tmp_path / f"w{workers}"
        preprocess([str(src)], str(prefix), str(webmix_tokenizer), workers=workers, progress=False)
        out[workers] = [
            (prefix.parent / (prefix.name + ext)).read_bytes() for ext in (".bin", ".idx", ".doc_source.npy")
        ]
    assert out[1] == out[3]


def test_training_is_deterministic(tmp_path, webmix_train):
    a, b = tmp_path / "a.model", tmp_path / "b.model"
    train_tokenizer([str(webmix_train)], str(a), 1000, max_docs=500)
    train_tokenizer([str(webmix_train)], str(b), 1000, max_docs=500)
    assert a.read_bytes() == b.read_bytes()


def test_byte_fallback_round_trips_unseen_characters(webmix_tokenizer):
    tok = Tokenizer(webmix_tokenizer)
    text = "emoji 🦜, CJK 漢字, control \t tab, ZWJ 👩‍🔬, combining é vs é,  two  spaces\n\nnewlines"
    assert tok.decode(tok.encode([text])[0]) == text


def test_txt_line_and_paragraph_modes(tmp_path, webmix_tokenizer):
    from lfr_ds.data.reader import ReadOptions

    src = tmp_path / "in.txt"
    src.write_text("para one line a\npara one line b\n\npara two\n\n\nline\n")
    tok = Tokenizer(webmix_tokenizer)
    for mode, expected in (
        ("paragraph", ["para one line a\npara one line b", "para two", "line"]),
        ("line", ["para one line a", "para one line b", "para two", "line"]),
    ):
        prefix = tmp_path / mode
        preprocess([str(src)], str(prefix), str(webmix_tokenizer), opts=ReadOptions(txt_mode=mode), progress=False)
        ds = open_dataset(str(prefix))
        assert [tok.decode(ds.document(i)[:-1]) for i in range(ds.num_documents)] == expected
        assert ds.sources == ["unknown"]


def test_megatron_reads_ours(webmix_dataset):
    ours = open_dataset(str(webmix_dataset))
    theirs = IndexedDataset(str(webmix_dataset))
    assert len(theirs) == ours.num_documents
    for i in (0, 1, 777, ours.num_documents - 1):
        assert np.array_equal(theirs.get(i), ours.document(i))
    assert int(theirs.sequence_lengths.sum()) == ours.num_tokens


def test_we_read_megatrons(tmp_path):
    """A dataset written by megatron-core's own builder (no sidecar) opens, with unknown sources."""
    import torch

    from lfr_ds.data.blocks import BlockView

    prefix = str(tmp_path / "meg")
    builder = IndexedDatasetBuilder(prefix + ".bin", dtype=np.int32)
    rng = np.random.default_rng(0)
    docs = [rng.integers(3, 70000, size=int(n)) for n in rng.integers(5, 300, size=40)]
    for d in docs:
        builder.add_document(torch.from_numpy(np.append(d, EOD_ID)), [len(d) + 1])
    builder.finalize(prefix + ".idx")
    ds = open_dataset(prefix)
    assert ds.meta is None and ds.sources == ["unknown"] and ds.dtype == np.int32
    assert np.array_equal(ds.document(7)[:-1], docs[7])
    view = BlockView(ds, seq_length=32, seed=1)
    stream = np.concatenate([np.append(docs[d], EOD_ID) for d in view._gpt.document_index])
    assert np.array_equal(view.tokens(3), stream[3 * 32 : 4 * 32 + 1])


def test_dtype_is_smallest_that_fits(tmp_path, webmix_tokenizer, monkeypatch):
    """uint16 while ids fit (Megatron's < 65,500 rule), int32 beyond; both read back identically."""
    src = tmp_path / "x.jsonl"
    src.write_text('{"text": "hello world, hello tokens"}\n')
    docs = {}
    for vocab, dtype in ((8192, "uint16"), (70000, "int32")):
        monkeypatch.setattr(Tokenizer, "vocab_size", property(lambda self, v=vocab: v))
        prefix = tmp_path / f"v{vocab}"
        meta = preprocess([str(src)], str(prefix), str(webmix_tokenizer), progress=False)
        assert meta["dtype"] == dtype
        ds = open_dataset(str(prefix))
        assert ds.dtype == np.dtype(dtype)
        docs[vocab] = ds.document(0).astype(np.int64)
    assert np.array_equal(docs[8192], docs[70000])


def test_temps_of_a_killed_build_are_removed(tmp_path, webmix_tokenizer):
    src = tmp_path / "x.jsonl"
    src.write_text('{"text": "hello"}\n')
    stale = [tmp_path / ".ds.bin.k1ll3d.tmp", tmp_path / ".ds.meta.json.k1ll3d.tmp"]
    unrelated = tmp_path / ".other.bin.abc.tmp"
    for p in [*stale, unrelated]:
        p.write_bytes(b"half")
    preprocess([str(src)], str(tmp_path / "ds"), str(webmix_tokenizer), progress=False)
    assert not any(p.exists() for p in stale) and unrelated.exists()
    assert sorted(p.name for p in tmp_path.glob("ds.*")) == ["ds.bin", "ds.doc_source.npy", "ds.idx", "ds.meta.json"]
