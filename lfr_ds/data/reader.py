"""Read raw documents from ``.jsonl``, ``.txt`` (plain, ``.gz`` or ``.zst``) and ``.parquet`` files, in chunks
for worker processes.

A document is one JSON line (its text under ``json_key``, its optional source label under
``source_key``), one parquet row (the columns of those names), or, for ``.txt``, one line or one
blank-line-separated paragraph. A null or empty text is a document without text: counted, then skipped.
A UTF-8 byte-order mark at the start of a text file is dropped.

The main process cuts files into *chunks* that end on a document boundary and workers parse them, so
parsing runs in parallel and memory stays bounded by a chunk, whatever the file size:

- plain files: byte ranges (the worker reads its range itself; line numbers for an error message are
  counted only when one is needed);
- compressed files: decompressed bytes, streamed, tagged with their first line number;
- parquet: one row group (the worker reads only the text and source columns of it).

Every decoding, decompression or format error raises a one-line :class:`UserError` naming ``file:line``
(``file: row N`` for parquet, or the file alone for damage that has no line).
"""

from __future__ import annotations

import argparse
import gzip
import io
import json
import multiprocessing as mp
import os
import re
import sys
import zlib
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import zstandard
from tqdm import tqdm

from lfr_ds.data.inputs import check_inputs
from lfr_ds.errors import UserError

#: Raw bytes per chunk handed to a worker: big enough to amortise IPC, small enough to balance load.
CHUNK_BYTES = 1 << 20
#: Bytes read at a time when counting lines for an error message.
_READ_BYTES = 1 << 20
#: Compressed bytes of a .zst file decompressed at a time (memory: this times the compression ratio).
_ZSTD_READ = 1 << 16
_BOM = b"\xef\xbb\xbf"
_BLANK_LINE = re.compile(rb"\n[ \t\r\f\v]*\n")
_NEWLINE = re.compile(rb"\n")
#: A JSON escape that may decode to a UTF-16 surrogate, which no UTF-8 text can hold.
_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F]")


@dataclass(frozen=True)
class ReadOptions:
    """How to split files into documents."""

    json_key: str = "text"
    """JSON field (parquet column) holding a document's text."""
    source_key: str | None = "source"
    """JSON field (parquet column) holding a document's source label (optional); ``None`` ignores sources."""
    txt_mode: str = "paragraph"
    """For ``.txt``: ``line`` (one document a line) or ``paragraph`` (blank-line separated)."""


DEFAULT_READ = ReadOptions()


def add_read_arguments(p: argparse.ArgumentParser, *, sources: bool) -> None:
    """The input arguments every text-reading CLI shares: inputs, ``--split``, keys, ``--txt-mode``."""
    p.add_argument(
        "inputs",
        nargs="+",
        help="input files (.jsonl, .txt, either plain, .gz or .zst, and .parquet), directories (read recursively "
        "in sorted order) or globs, read in the order given",
    )
    p.add_argument(
        "--split",
        metavar="NAME",
        help="read only this split (train, validation, test...) of directories and globs that hold several",
    )
    p.add_argument("--json-key", default="text", help="JSON field or parquet column of the text (default: text)")
    if sources:
        p.add_argument(
            "--source-key", default="source", help="JSON field or parquet column of the source label (default: source)"
        )
    p.add_argument(
        "--txt-mode",
        choices=("line", "paragraph"),
        default="paragraph",
        help="document unit in .txt files (default: paragraph)",
    )


def read_options(args: argparse.Namespace) -> ReadOptions:
    return ReadOptions(json_key=args.json_key, source_key=getattr(args, "source_key", None), txt_mode=args.txt_mode)


@dataclass(frozen=True)
class ByteRange:
    """Whole documents of an uncompressed file, read by the worker (the main process neither reads nor
    pickles the text)."""

    path: str
    offset: int
    length: int

    @property
    def disk_bytes(self) -> int:
        return self.length

    def read(self) -> bytes:
        with open(self.path, "rb") as f:
            f.seek(self.offset)
            return f.read(self.length)

    def line(self, i: int) -> int:
        """File line number of the chunk's line ``i``: counted from the start only for an error message."""
        before, pos = 0, 0
        with open(self.path, "rb") as f:
            while pos < self.offset:
                block = f.read(min(_READ_BYTES, self.offset - pos))
                before += block.count(b"\n")
                pos += len(block)
        return before + 1 + i


@dataclass(frozen=True)
class Decompressed:
    """Whole documents of a compressed file, decompressed by the main process."""

    path: str
    first_line: int
    data: bytes
    disk_bytes: int
    """Compressed bytes this chunk accounts for (progress)."""

    def read(self) -> bytes:
        return self.data

    def line(self, i: int) -> int:
        return self.first_line + i


@dataclass(frozen=True)
class RowGroup:
    """One row group of a parquet file, read by the worker."""

    path: str
    index: int
    first_row: int
    disk_bytes: int


Chunk = ByteRange | Decompressed | RowGroup


@dataclass
class Document:
    text: str
    """Empty for a null or empty text: such documents are counted, not tokenized."""
    source: str | None


def iter_chunks(paths: list[str], opts: ReadOptions, chunk_bytes: int = CHUNK_BYTES) -> Iterator[Chunk]:
    """Yield chunks of whole documents of the files ``paths``, in order, so the output is deterministic."""
    for path in paths:
        if path.endswith(".parquet"):
            yield from _row_groups(path, opts)
        elif path.endswith((".gz", ".zst")):
            yield from _decompressed_chunks(path, opts, chunk_bytes)
        else:
            yield from _range_chunks(path, opts, chunk_bytes)


def parse_chunk(chunk: Chunk, opts: ReadOptions) -> list[Document]:
    """Decode a chunk into documents; bad input raises a ``UserError`` naming ``file:line``."""
    if isinstance(chunk, RowGroup):
        return _parquet_documents(chunk, opts)
    return _text_documents(chunk, opts)


def iter_documents(paths: list[str], opts: ReadOptions, split: str | None = None) -> Iterator[Document]:
    """All documents of the inputs ``paths`` (files, directories, globs) in order, in this process."""
    for chunk in iter_chunks(check_inputs(paths, split), opts):
        yield from parse_chunk(chunk, opts)


def map_chunks(
    fn: Callable[[Chunk], Any], chunks: Iterator[Chunk], workers: int, init: Callable[..., None], initargs: tuple
) -> Iterator[Any]:
    """``fn`` of every chunk, in chunk order, computed by ``workers`` processes (each set up by ``init(*initargs)``;
    1: in this one), so what comes out is the same for any ``workers``. At most 2 ``workers`` chunks are in
    flight, so memory is bounded by the chunk size, not by the input."""
    if workers == 1:
        init(*initargs)
        yield from map(fn, chunks)
        return
    # fork: workers start in milliseconds and inherit the imports. Safe here although the parent may have
    # loaded torch: a child only parses text and runs single-threaded libraries, never OpenMP.
    ctx = mp.get_context("fork")
    with ctx.Pool(workers, initializer=init, initargs=initargs) as pool:
        # Not imap: its feeder thread would read (and decompress) the whole input ahead of the workers.
        pending: deque = deque()
        for chunk in chunks:
            pending.append(pool.apply_async(fn, (chunk,)))
            if len(pending) >= 2 * workers:
                yield pending.popleft().get()
        while pending:
            yield pending.popleft().get()


# ---- text files -----------------------------------------------------------------------------------


def _is_txt(path: str) -> bool:
    return path.endswith((".txt", ".txt.gz", ".txt.zst"))


def _separator(path: str, opts: ReadOptions) -> re.Pattern[bytes]:
    """What may end a chunk: a newline, or for paragraphs a blank line (a chunk never splits a document)."""
    return _BLANK_LINE if _is_txt(path) and opts.txt_mode == "paragraph" else _NEWLINE


def _range_chunks(path: str, opts: ReadOptions, chunk_bytes: int) -> Iterator[ByteRange]:
    sep = _separator(path, opts)
    size = os.path.getsize(path)
    with open(path, "rb") as f:
        start = len(_BOM) if f.read(len(_BOM)) == _BOM else 0
        while start < size:
            end = size if start + chunk_bytes >= size else _next_boundary(f, start + chunk_bytes - 1, sep, size)
            yield ByteRange(path, start, end - start)
            start = end


def _next_boundary(f, pos: int, sep: re.Pattern[bytes], size: int) -> int:
    """Offset just past the first ``sep`` at or after ``pos`` (or the file's end), reading only what it needs."""
    f.seek(pos)
    buf, base = b"", pos
    while True:
        block = f.read(1 << 16)
        if not block:
            return size
        # Keep from the last newline on: a separator that straddles two blocks starts there.
        keep = buf.rfind(b"\n")
        if keep > 0:
            buf, base = buf[keep:], base + keep
        elif keep < 0:
            buf, base = b"", base + len(buf)
        buf += block
        m = sep.search(buf)
        if m:
            return base + m.end()


def _decompressed_chunks(path: str, opts: ReadOptions, chunk_bytes: int) -> Iterator[Decompressed]:
    # Line by line (C-speed readline), so a chunk costs time linear in its size whatever its lines' lengths.
    paragraphs = _is_txt(path) and opts.txt_mode == "paragraph"
    lines: list[bytes] = []
    size, first, pos = 0, 1, 0
    kind = "gzip" if path.endswith(".gz") else "zstd"
    try:
        with open(path, "rb") as raw, gzip.GzipFile(fileobj=raw) if kind == "gzip" else _ZstdStream(raw) as stream:
            for lineno, line in enumerate(stream, 1):
                lines.append(line.removeprefix(_BOM) if lineno == 1 else line)
                size += len(line)
                # A paragraph may only be cut at a blank line, so a chunk never splits a document.
                if size >= chunk_bytes and (not paragraphs or not line.strip()):
                    yield Decompressed(path, first, b"".join(lines), raw.tell() - pos)
                    lines, size, first, pos = [], 0, lineno + 1, raw.tell()
    except (EOFError, gzip.BadGzipFile, zlib.error, zstandard.ZstdError) as e:
        what = "ends early" if isinstance(e, EOFError) else f"is not valid {kind} data ({_reason(e)})"
        raise UserError(
            f"{path}: the compressed stream {what}; the file is truncated or damaged: copy it again"
        ) from None
    yield Decompressed(path, first, b"".join(lines), os.path.getsize(path) - pos)


class _ZstdStream(io.BufferedReader):
    """The decompressed bytes of a .zst file, every frame of it, as a buffered stream."""

    def __init__(self, raw: io.BufferedIOBase) -> None:
        super().__init__(_ZstdFrames(raw), buffer_size=1 << 16)


class _ZstdFrames(io.RawIOBase):
    # zstandard's own stream reader returns a truncated frame's data without complaint; a decompressor
    # object per frame tells whether the last one was finished (``eof``), and a cut-off one raises EOFError.

    def __init__(self, raw: io.BufferedIOBase) -> None:
        self._raw = raw
        self._dctx = zstandard.ZstdDecompressor()
        self._dobj, self._started = self._dctx.decompressobj(), False
        self._out, self._at = b"", 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        while self._at == len(self._out):
            block = self._raw.read(_ZSTD_READ)
            if not block:
                if self._started and not self._dobj.eof:
                    raise EOFError
                return 0
            out = []
            while block:
                out.append(self._dobj.decompress(block))
                self._started = True
                block = self._dobj.unused_data if self._dobj.eof else b""
                if self._dobj.eof:
                    self._dobj, self._started = self._dctx.decompressobj(), False
            self._out, self._at = b"".join(out), 0
        n = min(len(buffer), len(self._out) - self._at)
        buffer[:n] = self._out[self._at : self._at + n]
        self._at += n
        return n


class BadLine(Exception):
    """What is wrong with one line of a text file; the caller adds ``file:line`` to make it a ``UserError``."""


def decode_line(raw: bytes) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise BadLine(
            f"not valid UTF-8 (byte 0x{raw[e.start]:02x} at column {e.start + 1}); re-encode the file as UTF-8"
        ) from None


def load_json(line: str) -> Any:
    try:
        return json.loads(line)
    except json.JSONDecodeError as e:
        raise BadLine(f"not valid JSON ({e.msg} at column {e.colno}); fix or remove the line") from None
    except (ValueError, RecursionError) as e:  # an integer of over 4,300 digits; nesting beyond the stack
        reason = "nested too deeply" if isinstance(e, RecursionError) else str(e).split(";")[0]
        raise BadLine(f"not valid JSON ({reason}); fix or remove the line") from None


def check_encodable(*values: str) -> None:
    """JSON's ``\\ud800`` escapes decode to lone surrogates, which no UTF-8 text (nor sentencepiece) takes."""
    for value in values:
        try:
            value.encode("utf-8")
        except UnicodeEncodeError as e:
            raise BadLine(
                f"the escape \\u{ord(value[e.start]):04x} is half of a UTF-16 surrogate pair, which UTF-8 text "
                "cannot hold; fix or remove the line"
            ) from None


def json_lines(path: str) -> Iterator[tuple[int, Any]]:
    """(line number, value) of each non-blank line of a small JSON-lines file (an evaluation task), read in
    this process; a byte-order mark is dropped and a bad line is a ``UserError`` naming ``file:line``."""
    with open(path, "rb") as f:
        for lineno, raw in enumerate(f, 1):
            try:
                line = decode_line(raw.removeprefix(_BOM) if lineno == 1 else raw)
                if line.strip():
                    yield lineno, load_json(line)
            except BadLine as e:
                raise UserError(f"{path}:{lineno}: {e}") from None


def _text_documents(chunk: ByteRange | Decompressed, opts: ReadOptions) -> list[Document]:
    docs: list[Document] = []
    txt = _is_txt(chunk.path)
    paragraph: list[str] = []
    # Split on b"\n" only, as chunks are cut, so line numbers agree.
    raw_lines = chunk.read().split(b"\n")
    if raw_lines and raw_lines[-1] == b"":
        raw_lines.pop()
    for i, raw in enumerate(raw_lines):
        try:
            line = decode_line(raw)
            if not txt:
                if line.strip():
                    docs.append(_json_document(line, opts))
            elif opts.txt_mode == "line":
                text = line.rstrip("\r")
                if text.strip():
                    docs.append(Document(text, None))
            elif line.strip():
                paragraph.append(line.rstrip("\r"))
            elif paragraph:
                docs.append(Document("\n".join(paragraph), None))
                paragraph = []
        except BadLine as e:
            raise UserError(f"{chunk.path}:{chunk.line(i)}: {e}") from None
    if paragraph:
        docs.append(Document("\n".join(paragraph), None))
    return docs


def _json_document(line: str, opts: ReadOptions) -> Document:
    obj = load_json(line)
    if not isinstance(obj, dict) or opts.json_key not in obj:
        raise BadLine(f"JSON line has no {opts.json_key!r} key; pass --json-key with the text field's name")
    text = obj[opts.json_key]
    if text is not None and not isinstance(text, str):
        raise BadLine(f"{opts.json_key!r} is not a string; each document's text must be a string")
    source = obj.get(opts.source_key) if opts.source_key else None
    doc = Document(text or "", None if source is None else str(source))
    if _SURROGATE_ESCAPE.search(line):  # the only way a decoded line can hold a surrogate
        check_encodable(doc.text, doc.source or "")
    return doc


def _reason(e: Exception) -> str:
    """A library's error text as one line (pyarrow's may span several)."""
    return " ".join(str(e).split()) or type(e).__name__


# ---- parquet --------------------------------------------------------------------------------------


#: What pyarrow raises for a damaged file: its own errors, I/O errors, and ValueError (a footer whose
#: column names are not UTF-8 raises UnicodeDecodeError).
_PARQUET_ERRORS = (pa.ArrowException, OSError, ValueError)
_TEXT_TYPES = (pa.types.is_string, pa.types.is_large_string, pa.types.is_string_view, pa.types.is_null)


def _open_parquet(path: str) -> tuple[pq.ParquetFile, pa.Schema, list[int]]:
    """The open file, its schema and the rows of each row group: all of the footer, read and checked."""
    try:
        pf = pq.ParquetFile(path)
        meta = pf.metadata
        return pf, pf.schema_arrow, [meta.row_group(g).num_rows for g in range(meta.num_row_groups)]
    except _PARQUET_ERRORS as e:
        raise UserError(
            f"{path}: not a readable parquet file ({_reason(e)}); the file is truncated or damaged: copy it again"
        ) from None


def _row_groups(path: str, opts: ReadOptions) -> Iterator[RowGroup]:
    pf, schema, group_rows = _open_parquet(path)
    with pf:
        if opts.json_key not in schema.names:
            raise UserError(
                f"{path}: no column {opts.json_key!r} (columns: {', '.join(schema.names)}); "
                "pass --json-key with the text column's name"
            )
        kind = schema.field(opts.json_key).type
        if pa.types.is_dictionary(kind):
            kind = kind.value_type
        # A column of nulls only (type null) is one of empty documents, which are counted and skipped.
        if not any(is_type(kind) for is_type in _TEXT_TYPES):
            raise UserError(
                f"{path}: column {opts.json_key!r} holds {kind}, not strings; "
                "pass --json-key with the text column's name"
            )
        size, total, row = os.path.getsize(path), max(sum(group_rows), 1), 0
        for g, n in enumerate(group_rows):
            # Progress: the file's bytes shared out by rows, so the groups of a file add up to its size.
            yield RowGroup(path, g, row + 1, (row + n) * size // total - row * size // total)
            row += n


#: The parquet file a worker read last (consecutive row groups usually come from the same file), keyed by
#: its path, size and mtime so that a file rewritten in place is opened afresh.
_open_file: dict[tuple[str, int, int], tuple[pq.ParquetFile, pa.Schema]] = {}


def _parquet_documents(chunk: RowGroup, opts: ReadOptions) -> list[Document]:
    st = os.stat(chunk.path)
    key = (chunk.path, st.st_size, st.st_mtime_ns)
    if key not in _open_file:
        for old, _ in _open_file.values():
            old.close()
        _open_file.clear()
        _open_file[key] = _open_parquet(chunk.path)[:2]
    pf, schema = _open_file[key]
    columns = [opts.json_key]
    if opts.source_key and opts.source_key != opts.json_key and opts.source_key in schema.names:
        columns.append(opts.source_key)
    try:
        # One thread, as for sentencepiece: parallelism comes from the worker processes.
        table = pf.read_row_group(chunk.index, columns=columns, use_threads=False)
    except _PARQUET_ERRORS as e:
        raise UserError(
            f"{chunk.path}: row group {chunk.index} is unreadable ({_reason(e)}); "
            "the file is truncated or damaged: copy it again"
        ) from None
    texts = _pylist(table.column(0), chunk)
    sources = _pylist(table.column(1), chunk) if len(columns) > 1 else [None] * len(texts)
    return [Document(t or "", None if s is None else str(s)) for t, s in zip(texts, sources, strict=True)]


def _pylist(column: pa.ChunkedArray, chunk: RowGroup) -> list:
    try:
        return column.to_pylist()
    except UnicodeDecodeError:
        # Arrow does not check string data on read; find the row for the message.
        for i in range(len(column)):
            try:
                column[i].as_py()
            except UnicodeDecodeError as e:
                raise UserError(
                    f"{chunk.path}: row {chunk.first_row + i}: not valid UTF-8 ({e.reason} at byte {e.start + 1}); "
                    "rewrite the column as UTF-8"
                ) from None
        raise


def byte_progress(inputs: list[str], desc: str, enabled: bool) -> tqdm:
    """A progress bar over the inputs' bytes on stderr (a reader's chunks advance it by their size)."""
    return tqdm(
        total=sum(os.path.getsize(p) for p in inputs),
        unit="B",
        unit_scale=True,
        desc=desc,
        disable=not enabled,
        mininterval=1.0,
        file=sys.stderr,
    )
