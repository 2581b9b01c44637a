"""Every bad input to the data tools: one line naming the thing, exit 2, no traceback, nothing written."""

from __future__ import annotations

import gzip
import os
import shutil

import pytest
from clitools import assert_one_line_error

from lfr_ds.data import inspect, preprocess, tokenizer


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
    result = run_cli(
        preprocess.main, [src, "-o", out / "ds", "-t", webmix_tokenizer, "--no-progress", "-j", "1"]
    )
    assert_one_line_error(result, needle)
    if case != "blank_only":
        assert src.name in result.err_lines[0]
    assert _listing(out) == before


def test_non_utf8_in_gzip_reports_line(tmp_path, run_cli, webmix_tokenizer):
    src = tmp_path / "bad.jsonl.gz"
    with gzip.open(src, "wb") as f:
        f.write(b'{"text": "ok"}\n' * 5 + b'{"text": "\xff"}\n')
    result = run_cli(
        preprocess.main, [src, "-o", tmp_path / "ds", "-t", webmix_tokenizer, "--no-progress", "-j", "2"]
    )
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
