"""Chunking never splits a document and never shifts a line number, whatever the chunk size."""

from __future__ import annotations

import gzip
import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lfr_ds.data.reader import ReadOptions, iter_chunks, parse_chunk
from lfr_ds.errors import UserError

texts = st.lists(st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=40), min_size=1, max_size=30)


def _docs(paths, opts, chunk_bytes):
    return [(d.text, d.source) for c in iter_chunks(paths, opts, chunk_bytes) for d in parse_chunk(c, opts)]


@settings(max_examples=40, deadline=None)
@given(docs=texts, chunk=st.integers(1, 64))
def test_jsonl_plain_and_gzip_chunks_agree(tmp_path_factory, docs, chunk):
    d = tmp_path_factory.mktemp("r")
    body = "".join(json.dumps({"text": t, "source": f"s{i % 2}"}) + "\n" for i, t in enumerate(docs)).encode()
    (d / "a.jsonl").write_bytes(body)
    with gzip.open(d / "a.jsonl.gz", "wb") as f:
        f.write(body)
    expected = [(t, f"s{i % 2}") for i, t in enumerate(docs)]
    for name in ("a.jsonl", "a.jsonl.gz"):
        assert _docs([str(d / name)], ReadOptions(), chunk) == expected


@settings(max_examples=40, deadline=None)
@given(
    paras=st.lists(
        st.lists(st.text(alphabet="ab c\t", min_size=1, max_size=12).filter(str.strip), min_size=1, max_size=4),
        min_size=1,
        max_size=12,
    ),
    chunk=st.integers(1, 50),
)
def test_paragraph_chunks_never_split_a_paragraph(tmp_path_factory, paras, chunk):
    d = tmp_path_factory.mktemp("p")
    (d / "a.txt").write_text("\n\n".join("\n".join(p) for p in paras) + "\n")
    got = [t for t, _ in _docs([str(d / "a.txt")], ReadOptions(txt_mode="paragraph"), chunk)]
    assert got == ["\n".join(p) for p in paras]


@pytest.mark.parametrize("chunk", [1, 5, 1 << 20])
def test_error_line_numbers_do_not_depend_on_chunking(tmp_path, chunk):
    p = tmp_path / "a.jsonl"
    p.write_text('{"text": "a"}\n' * 9 + "not json\n" + '{"text": "b"}\n')
    with pytest.raises(UserError, match=r"a.jsonl:10: not valid JSON"):
        _docs([str(p)], ReadOptions(), chunk)
