"""Every bad input to the data tools: one line naming the thing, exit 2, no traceback, nothing written."""

from __future__ import annotations

import gzip
import os
import shutil
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import zstandard
from clitools import assert_one_line_error

from lfr_ds.data import inspect, preprocess, tokenizer
from lfr_ds.data.tokenizer import Tokenizer
from lfr_ds.errors import UserError
from lfr_ds.eval.perplexity import load_heldout
from lfr_ds.eval.zeroshot import load_lambada, load_mc


def _listing(path):
    return sorted(os.listdir(path))


@pytest.fixture
def good_jsonl(tmp_path):
    p = tmp_path / "good.jsonl"
    p.write_text('{"text": "a fine document", "source": "x"}\n' * 20)
    return p


CASES = {
    "missing": (None, "does not exist"),
    "empty": (b"", "is empty"),
    "bad_json": (b'{"text": "ok"}\n{"text": broken\n', ":2: not valid JSON"),
    "no_text_key": (b'{"text": "ok"}\n{"body": "x"}\n', ":2: JSON line has no 'text' key"),
    "non_utf8": (b'{"text": "ok"}\n{"text": "fine"}\n{"text": "caf\xe9"}\n', ":3: not valid UTF-8"),
    "blank_only": (b"\n\n  \n", "no documents"),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_preprocess_bad_inputs(case, tmp_path, run_cli, webmix_tokenizer):
    content, needle = CASES[case]
    src = tmp_path / f"{case}.jsonl"
    if content is not None:
        src.write_bytes(content)
    out = tmp_path / "out"
    out.mkdir()
    before = _listing(out)
    result = run_cli(preprocess.main, [src, "-o", out / "ds", "-t", webmix_tokenizer, "--no-progress", "-j", "1"])
    assert_one_line_error(result, needle)
    if case != "blank_only":
        assert src.name in result.err_lines[0]
    assert _listing(out) == before


def test_non_utf8_in_gzip_reports_line(tmp_path, run_cli, webmix_tokenizer):
    src = tmp_path / "bad.jsonl.gz"
    with gzip.open(src, "wb") as f:
        f.write(b'{"text": "ok"}\n' * 5 + b'{"text": "\xff"}\n')
    result = run_cli(preprocess.main, [src, "-o", tmp_path / "ds", "-t", webmix_tokenizer, "--no-progress", "-j", "2"])
    assert_one_line_error(result, "bad.jsonl.gz:6: not valid UTF-8")
    assert not list(tmp_path.glob("ds*"))


def test_output_in_missing_directory(tmp_path, run_cli, good_jsonl, webmix_tokenizer):
    result = run_cli(
        preprocess.main, [good_jsonl, "-o", tmp_path / "nope" / "ds", "-t", webmix_tokenizer, "--no-progress"]
    )
    assert_one_line_error(result, "does not exist")
    result = run_cli(tokenizer.main, [good_jsonl, "-o", tmp_path / "nope" / "t.model"])
    assert_one_line_error(result, "does not exist")
    assert not (tmp_path / "nope").exists()


@pytest.mark.parametrize(("vocab", "needle"), [(100, "--vocab-size 100"), (50000, "--vocab-size 50000")])
def test_vocab_size_too_small_or_large(tmp_path, run_cli, good_jsonl, vocab, needle):
    result = run_cli(tokenizer.main, [good_jsonl, "-o", tmp_path / "t.model", "--vocab-size", vocab])
    assert_one_line_error(result, needle)
    assert not list(tmp_path.glob("t.model*")) and not list(tmp_path.glob(".t.model*"))


def test_missing_tokenizer_input(tmp_path, run_cli):
    result = run_cli(tokenizer.main, [tmp_path / "absent.jsonl", "-o", tmp_path / "t.model"])
    assert_one_line_error(result, "absent.jsonl", "does not exist")


def test_bad_flag_is_one_line(run_cli, good_jsonl):
    result = run_cli(preprocess.main, [good_jsonl, "--workers", "two"])
    assert_one_line_error(result, "--workers")


@pytest.fixture
def dataset_copy(tmp_path, webmix_dataset):
    prefix = tmp_path / "copy"
    for ext in (".bin", ".idx", ".meta.json", ".doc_source.npy"):
        shutil.copy(str(webmix_dataset) + ext, str(prefix) + ext)
    return prefix


def test_truncated_bin(dataset_copy, run_cli):
    with open(str(dataset_copy) + ".bin", "r+b") as f:
        f.truncate(os.path.getsize(str(dataset_copy) + ".bin") - 10)
    assert_one_line_error(run_cli(inspect.main, [dataset_copy]), "copy.bin", "disagrees")


def test_wrong_magic(dataset_copy, run_cli):
    with open(str(dataset_copy) + ".idx", "r+b") as f:
        f.write(b"NOTMEGA!!")
    assert_one_line_error(run_cli(inspect.main, [dataset_copy]), "copy.idx", "wrong magic number")


def test_missing_dataset(tmp_path, run_cli):
    assert_one_line_error(run_cli(inspect.main, [tmp_path / "nothing"]), "nothing.idx", "not found")


def test_tokenizer_mismatch(dataset_copy, tmp_path, run_cli, webmix_train):
    other = tmp_path / "other.model"
    tokenizer.train_tokenizer([str(webmix_train)], str(other), 1000, max_docs=200)
    result = run_cli(inspect.main, [dataset_copy, "--doc", "0", "--tokenizer", other])
    assert_one_line_error(result, "built with tokenizer", "other.model")


def test_sidecar_from_another_build(dataset_copy, tmp_path, run_cli, good_jsonl, webmix_tokenizer):
    preprocess.preprocess([str(good_jsonl)], str(tmp_path / "small"), str(webmix_tokenizer), progress=False)
    shutil.copy(tmp_path / "small.meta.json", str(dataset_copy) + ".meta.json")
    assert_one_line_error(run_cli(inspect.main, [dataset_copy]), "copy.meta.json", "checksum mismatch")


# ---- damaged or unreadable input of every format (issues 12 and 14): one line, exit 2, nothing written ----

_DOCS = b"".join(b'{"text": "document %d of a decent length", "source": "s"}\n' % i for i in range(400))


def _cut(data: bytes) -> bytes:
    return data[: len(data) * 2 // 3]


def _parquet_bytes(table: pa.Table) -> bytes:
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink, row_group_size=100)
    return sink.getvalue().to_pybytes()


def _bad_utf8_parquet() -> bytes:
    offsets = pa.py_buffer(np.array([0, 2, 4], dtype=np.int32).tobytes())
    return _parquet_bytes(
        pa.table({"text": pa.Array.from_buffers(pa.string(), 2, [None, offsets, pa.py_buffer(b"ok\xff\xfe")])})
    )


_GOOD_PARQUET = _parquet_bytes(pa.table({"text": [f"row {i}" for i in range(400)], "url": ["u"] * 400}))

#: name: (file name, content, needle in the message). A name ending in "/" is a directory of those files.
DAMAGED = {
    "gz-truncated": ("in.jsonl.gz", _cut(gzip.compress(_DOCS)), "in.jsonl.gz: the compressed stream ends early"),
    "gz-corrupt": (
        "in.jsonl.gz",
        gzip.compress(_DOCS)[:30] + b"\x00" * 200,
        "in.jsonl.gz: the compressed stream is not valid gzip",
    ),
    "zst-truncated": (
        "in.jsonl.zst",
        _cut(zstandard.compress(_DOCS)),
        "in.jsonl.zst: the compressed stream ends early",
    ),
    "zst-not-zstd": ("in.jsonl.zst", _DOCS, "in.jsonl.zst: the compressed stream is not valid zstd"),
    "parquet-truncated": ("in.parquet", _cut(_GOOD_PARQUET), "in.parquet: not a readable parquet file"),
    "parquet-not-parquet": ("in.parquet", _DOCS, "in.parquet: not a readable parquet file"),
    "parquet-no-text-column": (
        "in.parquet",
        _parquet_bytes(pa.table({"body": ["x"], "url": ["u"]})),
        "in.parquet: no column 'text' (columns: body, url)",
    ),
    "parquet-text-not-string": (
        "in.parquet",
        _parquet_bytes(pa.table({"text": [1, 2]})),
        "in.parquet: column 'text' holds int64, not strings",
    ),
    "parquet-not-utf8": ("in.parquet", _bad_utf8_parquet(), "in.parquet: row 2: not valid UTF-8"),
    "jsonl-lone-surrogate": (
        "in.jsonl",
        b'{"text": "ok"}\n{"text": "a \\ud800 b"}\n',
        "in.jsonl:2: the escape \\ud800 is half of a UTF-16 surrogate pair",
    ),
    "jsonl-surrogate-source": ("in.jsonl", b'{"text": "ok", "source": "\\udfff"}\n', "in.jsonl:1: the escape \\udfff"),
    "jsonl-nested-too-deep": (
        "in.jsonl",
        b'{"text": "ok", "x": ' + b"[" * 100_000 + b"}\n",
        "in.jsonl:1: not valid JSON (nested too deeply)",
    ),
    "jsonl-huge-integer": (
        "in.jsonl",
        b'{"text": "ok", "n": ' + b"7" * 5000 + b"}\n",
        "in.jsonl:1: not valid JSON (Exceeds the limit",
    ),
    "jsonl-text-a-number": ("in.jsonl", b'{"text": 3}\n', "in.jsonl:1: 'text' is not a string"),
    "split-ambiguous": (
        "snap/",
        {"train-0.jsonl": _DOCS, "test-0.jsonl": _DOCS},
        "holds the splits test, train; choose one with --split",
    ),
    "empty-directory": ("snap/", {}, "snap: directory holds no input files"),
}


def _write_damaged(tmp_path: Path, case: str) -> Path:
    name, content, _ = DAMAGED[case]
    if name.endswith("/"):
        root = tmp_path / name
        root.mkdir()
        for fname, data in content.items():
            (root / fname).write_bytes(data)
        return root
    (tmp_path / name).write_bytes(content)
    return tmp_path / name


@pytest.mark.parametrize("case", sorted(DAMAGED))
def test_damaged_input_of_every_format(case, tmp_path, run_cli, webmix_tokenizer):
    src = _write_damaged(tmp_path, case)
    out = tmp_path / "out"
    out.mkdir()
    result = run_cli(preprocess.main, [src, "-o", out / "ds", "-t", webmix_tokenizer, "--no-progress", "-j", "2"])
    assert_one_line_error(result, DAMAGED[case][2])
    assert result.code == 2 and not os.listdir(out)


@pytest.mark.parametrize("case", ["jsonl-lone-surrogate", "zst-truncated", "parquet-no-text-column"])
def test_damaged_input_to_the_tokenizer_trainer(case, tmp_path, run_cli):
    src = _write_damaged(tmp_path, case)
    result = run_cli(tokenizer.main, [src, "-o", tmp_path / "t.model", "--vocab-size", "300"])
    assert_one_line_error(result, DAMAGED[case][2])
    assert not list(tmp_path.glob("*t.model*"))


def test_damaged_held_out_text_for_lfr_eval(tmp_path, webmix_tokenizer):
    src = _write_damaged(tmp_path, "jsonl-lone-surrogate")
    with pytest.raises(UserError, match=r"in.jsonl:2: the escape \\ud800"):
        load_heldout(str(src), 64, tokenizer=Tokenizer(webmix_tokenizer))


def test_task_files_of_lfr_eval_decode_like_the_readers(tmp_path):
    """BLiMP/LAMBADA/multiple-choice files: a BOM is read, bad bytes and lone surrogates name file:line."""
    good = tmp_path / "bom.jsonl"
    good.write_bytes(b"\xef\xbb\xbf" + b'{"context": "Q", "choices": [" a", " b"], "label": 1}\n')
    assert load_mc(good)[0].label == 1
    bad = tmp_path / "lambada.jsonl"
    bad.write_bytes(b'{"text": "a fine passage"}\n{"text": "caf\xe9 word"}\n')
    with pytest.raises(UserError, match=r"lambada.jsonl:2: not valid UTF-8 \(byte 0xe9 at column 14\)"):
        load_lambada(bad)
    bad.write_bytes(good.read_bytes() + b'{"context": "Q", "choices": [" a", " \\udc80"], "label": 0}\n')
    with pytest.raises(UserError, match=r"lambada.jsonl:2: the escape \\udc80"):
        load_mc(bad)
