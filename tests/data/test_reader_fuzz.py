"""Fuzz: random bytes, random JSON and damaged files of every input format, read and tokenized in-process.

Whatever the input, reading and tokenizing either succeed or raise the package's one-line
:class:`UserError`; any other exception (a traceback for the user) fails the test. Where a parquet and
a JSONL file hold the same documents, they must read the same. 380 generated cases in all.
"""

from __future__ import annotations

import gzip
import io
import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import zstandard
from hypothesis import event, given, settings
from hypothesis import strategies as st

from lfr_ds.data.inputs import check_inputs
from lfr_ds.data.reader import ReadOptions, iter_chunks, parse_chunk
from lfr_ds.data.tokenizer import MIN_VOCAB, Tokenizer, train_tokenizer
from lfr_ds.errors import UserError

SUFFIXES = (".jsonl", ".txt", ".jsonl.gz", ".txt.zst", ".jsonl.zst", ".parquet")
PACK = {"gz": gzip.compress, "zst": zstandard.compress}
#: Characters that have broken text pipelines: surrogates (alone and paired), NUL, BOM, line separators.
ODD = ["\ud800", "\udfff", "\ud83d\ude00", "\x00", "\ufeff", "\u2028", "\r", "\n", "\\", '"', "é", "漢"]
texts = st.lists(st.one_of(st.text(max_size=8), st.sampled_from(ODD)), max_size=6).map("".join)
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | texts,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(texts, inner, max_size=3),
    max_leaves=8,
)
documents = st.fixed_dictionaries({"text": st.none() | texts}, optional={"source": json_values, "id": json_values})
options = st.builds(ReadOptions, txt_mode=st.sampled_from(["line", "paragraph"]))


@pytest.fixture(scope="module")
def tok(webmix_tokenizer) -> Tokenizer:
    return Tokenizer(webmix_tokenizer)


@pytest.fixture(scope="module")
def scratch(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("fuzz")


def _read_and_encode(path: Path, opts: ReadOptions, chunk_bytes: int, tok: Tokenizer) -> list | None:
    """Documents of ``path`` (tokenized, to prove sentencepiece takes them), or None for a one-line error."""
    try:
        docs = [d for c in iter_chunks(check_inputs([str(path)]), opts, chunk_bytes) for d in parse_chunk(c, opts)]
    except UserError as e:
        assert str(e) and "\n" not in str(e), repr(str(e))
        event("one-line error")
        return None
    event("read")
    tok.encode([d.text for d in docs if d.text])
    return [(d.text, d.source) for d in docs]


@settings(max_examples=120, deadline=None)
@given(
    data=st.binary(max_size=300),
    suffix=st.sampled_from(SUFFIXES),
    wrap=st.booleans(),
    opts=options,
    chunk=st.integers(1, 64),
)
def test_random_bytes(scratch, tok, data, suffix, wrap, opts, chunk):
    """Random bytes as the file itself, or correctly compressed (so the decoder behind it sees them)."""
    kind = suffix.rsplit(".", 1)[-1]
    path = scratch / f"bytes{suffix}"
    path.write_bytes(PACK[kind](data) if wrap and kind in PACK else data)
    _read_and_encode(path, opts, chunk, tok)


@settings(max_examples=120, deadline=None)
@given(
    rows=st.lists(documents | json_values, max_size=8),
    ascii_only=st.booleans(),
    bom=st.booleans(),
    suffix=st.sampled_from([".jsonl", ".jsonl.gz", ".jsonl.zst"]),
    chunk=st.integers(1, 64),
)
def test_random_json(scratch, tok, rows, ascii_only, bom, suffix, chunk):
    """Any JSON at all, escaped or raw (a raw lone surrogate becomes bytes that are not UTF-8)."""
    body = "".join(json.dumps(r, ensure_ascii=ascii_only) + "\n" for r in rows).encode("utf-8", "surrogatepass")
    body = (b"\xef\xbb\xbf" if bom else b"") + body
    path = scratch / f"json{suffix}"
    kind = suffix.rsplit(".", 1)[-1]
    path.write_bytes(PACK[kind](body) if kind in PACK else body)
    _read_and_encode(path, ReadOptions(), chunk, tok)


valid_texts = st.none() | st.text(max_size=30)


@settings(max_examples=50, deadline=None)
@given(
    rows=st.lists(st.tuples(valid_texts, st.none() | st.text(max_size=5)), min_size=1, max_size=40),
    group=st.integers(1, 16),
)
def test_parquet_reads_as_the_same_jsonl(scratch, tok, rows, group):
    """Parquet (any row-group size) and JSONL holding the same rows read as the same documents."""
    table = pa.table({"text": [t for t, _ in rows], "source": [s for _, s in rows], "n": list(range(len(rows)))})
    pq.write_table(table, scratch / "same.parquet", row_group_size=group)
    (scratch / "same.jsonl").write_text("".join(json.dumps({"text": t, "source": s}) + "\n" for t, s in rows))
    opts = ReadOptions()
    got = _read_and_encode(scratch / "same.parquet", opts, 1 << 20, tok)
    assert got == _read_and_encode(scratch / "same.jsonl", opts, 7, tok) == [(t or "", s) for t, s in rows]


def _good_file(suffix: str, docs: list[str]) -> bytes:
    if suffix == ".parquet":
        sink = io.BytesIO()
        pq.write_table(pa.table({"text": docs}), sink, row_group_size=3)
        return sink.getvalue()
    body = "".join(json.dumps({"text": t}) + "\n" for t in docs).encode()
    return PACK[suffix.rsplit(".", 1)[-1]](body)


@settings(max_examples=80, deadline=None)
@given(
    docs=st.lists(st.text(max_size=20), min_size=1, max_size=12),
    suffix=st.sampled_from([".jsonl.gz", ".jsonl.zst", ".parquet"]),
    data=st.data(),
)
def test_damaged_compressed_and_parquet_files(scratch, tok, docs, suffix, data):
    """A good file cut short or with bytes overwritten: read whole, or one line naming the file."""
    good = bytearray(_good_file(suffix, docs))
    if data.draw(st.booleans(), label="truncate"):
        good = good[: data.draw(st.integers(0, len(good) - 1), label="keep")]
    else:
        for _ in range(data.draw(st.integers(1, 4), label="flips")):
            good[data.draw(st.integers(0, len(good) - 1))] = data.draw(st.integers(0, 255))
    path = scratch / f"damaged{suffix}"
    path.write_bytes(bytes(good))
    _read_and_encode(path, ReadOptions(), 1 << 20, tok)


@pytest.fixture(scope="module")
def base_corpus(webmix_train) -> list[str]:
    """60 real documents, enough text for a few hundred pieces."""
    return [json.loads(line)["text"] for line in webmix_train.read_text().split("\n")[:60]]


@settings(max_examples=30, deadline=None)
@given(
    docs=st.lists(st.none() | texts, min_size=1, max_size=10),
    at=st.integers(0, 60),
    vocab=st.integers(MIN_VOCAB + 1, 700),
)
def test_tokenizer_training_on_random_documents(scratch, base_corpus, docs, at, vocab):
    """The trainer, fed real text with random documents among it: a model, or one line (a lone
    surrogate, too small or too large a vocabulary)."""
    src = scratch / "train.jsonl"
    rows = [{"text": t} for t in base_corpus[:at] + docs + base_corpus[at:]]
    src.write_text("".join(json.dumps(r) + "\n" for r in rows))
    try:
        model = train_tokenizer([str(src)], str(scratch / "t.model"), vocab, threads=1)
    except UserError as e:
        assert str(e) and "\n" not in str(e)
        event("one-line error")
        return
    event("trained")
    assert model.vocab_size == vocab
    assert model.decode(model.encode([base_corpus[0]])[0]) == base_corpus[0]
