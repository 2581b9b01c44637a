"""Every input format holding the same documents preprocesses to the same bytes, with any worker count;
directories and globs are read in sorted order, one split at a time; provenance names every file."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import zstandard

from lfr_ds.data.inputs import check_inputs
from lfr_ds.data.preprocess import preprocess
from lfr_ds.data.reader import DEFAULT_READ, iter_documents
from lfr_ds.errors import UserError

OUTPUTS = (".bin", ".idx", ".doc_source.npy")


@pytest.fixture(scope="module")
def docs(webmix_train) -> list[dict]:
    """2,400 real documents (about 3 MB: several 1 MB chunks) plus empty and null texts."""
    lines = webmix_train.read_text().split("\n")[:2400]
    rows = [json.loads(line) for line in lines]
    for i in (5, 700, 1800):
        rows[i] = {"text": "" if i % 2 else None, "source": "blank", "id": f"blank{i}"}
    return rows


def _jsonl(rows: list[dict]) -> bytes:
    return "".join(json.dumps(r) + "\n" for r in rows).encode()


def _parquet(path: Path, rows: list[dict], row_group: int) -> None:
    table = pa.table(
        {
            "id": [r["id"] for r in rows],
            "text": [r["text"] for r in rows],
            "source": [r["source"] for r in rows],
            "length": [len(r["text"] or "") for r in rows],
        }
    )
    pq.write_table(table, path, row_group_size=row_group)


@pytest.fixture(scope="module")
def formats(tmp_path_factory, docs) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("formats")
    (d / "a.jsonl").write_bytes(_jsonl(docs))
    (d / "a.jsonl.gz").write_bytes(gzip.compress(_jsonl(docs)))
    (d / "a.jsonl.zst").write_bytes(zstandard.ZstdCompressor(write_checksum=True).compress(_jsonl(docs)))
    _parquet(d / "a.parquet", docs, row_group=300)
    shards = d / "shards"
    shards.mkdir()
    for i, start in enumerate(range(0, len(docs), 1000)):
        _parquet(shards / f"part-{i:05d}.parquet", docs[start : start + 1000], row_group=400)
    (shards / "README.md").write_text("a dataset card: not an input\n")
    return {
        "jsonl": d / "a.jsonl",
        "jsonl.gz": d / "a.jsonl.gz",
        "jsonl.zst": d / "a.jsonl.zst",
        "parquet": d / "a.parquet",
        "parquet shards": shards,
    }


def _build(src: Path, prefix: Path, tok: Path, workers: int) -> tuple[list[bytes], dict]:
    meta = preprocess([str(src)], str(prefix), str(tok), workers=workers, progress=False)
    return [Path(str(prefix) + ext).read_bytes() for ext in OUTPUTS], meta


def test_every_format_gives_the_same_bytes_with_1_and_2_workers(tmp_path, formats, docs, webmix_tokenizer):
    reference, ref_meta = _build(formats["jsonl"], tmp_path / "ref", webmix_tokenizer, 1)
    assert ref_meta["num_documents"] == len(docs) - 3 and ref_meta["skipped_empty_documents"] == 3
    for name, src in formats.items():
        for workers in (1, 2):
            out, meta = _build(src, tmp_path / f"{name}-{workers}", webmix_tokenizer, workers)
            assert out == reference, f"{name} with -j {workers} differs from .jsonl"
            assert meta["skipped_empty_documents"] == 3
            assert sum(f["rows"] for f in meta["inputs"]) == len(docs)
    shard_meta = _build(formats["parquet shards"], tmp_path / "again", webmix_tokenizer, 2)[1]
    assert [(Path(f["path"]).name, f["rows"]) for f in shard_meta["inputs"]] == [
        ("part-00000.parquet", 1000),
        ("part-00001.parquet", 1000),
        ("part-00002.parquet", 400),
    ]
    assert all(f["bytes"] == Path(f["path"]).stat().st_size for f in shard_meta["inputs"])


@pytest.mark.parametrize("suffix", [".jsonl", ".jsonl.gz", ".jsonl.zst"])
def test_byte_order_mark_is_read_as_the_same_file(tmp_path, docs, webmix_tokenizer, suffix):
    body = _jsonl(docs[:300])
    pack = {".jsonl": bytes, ".jsonl.gz": gzip.compress, ".jsonl.zst": zstandard.compress}[suffix]
    (tmp_path / f"plain{suffix}").write_bytes(pack(body))
    (tmp_path / f"bom{suffix}").write_bytes(pack(b"\xef\xbb\xbf" + body))
    plain = _build(tmp_path / f"plain{suffix}", tmp_path / "plain", webmix_tokenizer, 1)[0]
    bom = _build(tmp_path / f"bom{suffix}", tmp_path / "bom", webmix_tokenizer, 2)[0]
    assert bom == plain


def test_multi_frame_zstd_is_read_whole(tmp_path, docs):
    body = _jsonl(docs[:50])
    path = tmp_path / "m.jsonl.zst"
    path.write_bytes(zstandard.compress(body[:1000]) + zstandard.compress(body[1000:]))
    assert [d.text for d in iter_documents([str(path)], DEFAULT_READ)] == [r["text"] or "" for r in docs[:50]]


def _snapshot(root: Path, names: list[str]) -> Path:
    for name in names:
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text('{"text": "x"}\n')
    return root


def test_split_folders_and_split_named_files(tmp_path):
    hf = _snapshot(
        tmp_path / "hf",
        [
            "data/train-00000-of-00002.jsonl",
            "data/train-00001-of-00002.jsonl",
            "data/validation-00000-of-00001.jsonl",
            ".cache/train-x.jsonl",
        ],
    )
    with pytest.raises(UserError, match="holds the splits train, validation; choose one with --split"):
        check_inputs([str(hf)])
    assert [Path(f).name for f in check_inputs([str(hf)], split="train")] == [
        "train-00000-of-00002.jsonl",
        "train-00001-of-00002.jsonl",
    ]
    assert [Path(f).name for f in check_inputs([str(hf / "data" / "*.jsonl")], split="validation")] == [
        "validation-00000-of-00001.jsonl"
    ]
    with pytest.raises(UserError, match="no files of split 'test'; it holds the splits train, validation"):
        check_inputs([str(hf)], split="test")
    folders = _snapshot(tmp_path / "folders", ["train/b.jsonl", "train/a/c.jsonl", "test/a.jsonl"])
    assert [Path(f).relative_to(folders).as_posix() for f in check_inputs([str(folders)], split="train")] == [
        "train/a/c.jsonl",
        "train/b.jsonl",
    ]
    # One split only (or a split's own folder) needs no --split; a plain directory has none to pick.
    assert len(check_inputs([str(folders / "train")])) == 2
    with pytest.raises(UserError, match="has no split folders or split-named files"):
        check_inputs([str(_snapshot(tmp_path / "plain", ["x.jsonl"]))], split="train")


@pytest.mark.parametrize(
    ("make", "needle"),
    [
        (lambda d: d / "empty", "directory holds no input files"),
        (lambda d: d / "nothing-*.parquet", "the pattern matches no input files"),
        (lambda d: _snapshot(d / "other", ["notes.md"]), "directory holds no input files"),
    ],
)
def test_inputs_that_name_no_files(tmp_path, make, needle):
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match=needle):
        check_inputs([str(make(tmp_path))])


def test_progress_bar_shows_files_rows_and_tokens_per_second(tmp_path, formats, webmix_tokenizer, capsys):
    capsys.readouterr()
    preprocess([str(formats["parquet shards"])], str(tmp_path / "p"), str(webmix_tokenizer), workers=1)
    final = capsys.readouterr().err.replace("\r", "\n").strip().splitlines()[-1]
    assert "file 3/3" in final and "2,400 rows" in final and "tok/s" in final, final


def test_json_gz_and_json_zst_are_json_lines(tmp_path):
    """Many corpora ship JSON lines as ``.json.gz`` / ``.json.zst``: read as ``.jsonl.gz`` (issue 20)."""
    import gzip

    import zstandard

    from lfr_ds.data.reader import DEFAULT_READ, iter_documents

    lines = b"".join(b'{"text": "document %d", "source": "s%d"}\n' % (i, i % 2) for i in range(50))
    (tmp_path / "a.jsonl.gz").write_bytes(gzip.compress(lines))
    (tmp_path / "a.json.gz").write_bytes(gzip.compress(lines))
    (tmp_path / "a.json.zst").write_bytes(zstandard.compress(lines))
    want = [(d.text, d.source) for d in iter_documents([str(tmp_path / "a.jsonl.gz")], DEFAULT_READ)]
    assert len(want) == 50
    for name in ("a.json.gz", "a.json.zst"):
        assert [(d.text, d.source) for d in iter_documents([str(tmp_path / name)], DEFAULT_READ)] == want
