"""Read raw documents from ``.jsonl``, ``.jsonl.gz`` and ``.txt`` files, in chunks for worker processes.

A document is one JSON line (its text under ``json_key``, its optional source label under
``source_key``) or, for ``.txt``, one line or one blank-line-separated paragraph. Readers hand out
*chunks* of raw bytes that end on a document boundary, tagged with the file and first line number,
so workers can parse in parallel and still report ``file:line`` for bad input. Uncompressed files are
handed out as byte ranges that the workers read themselves.
"""

from __future__ import annotations

import gzip
import json
import mmap
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass

from lfr_ds.errors import UserError

SUFFIXES = (".jsonl", ".jsonl.gz", ".txt", ".txt.gz")
#: Raw bytes per chunk handed to a worker: big enough to amortise IPC, small enough to balance load.
CHUNK_BYTES = 1 << 20
_BLANK_LINE = re.compile(rb"\n[ \t\r\f\v]*\n")


@dataclass(frozen=True)
class ReadOptions:
    """How to split files into documents."""

    json_key: str = "text"
    """JSON field holding a document's text."""
    source_key: str | None = "source"
    """JSON field holding a document's source label (optional per line); ``None`` ignores sources."""
    txt_mode: str = "paragraph"
    """For ``.txt``: ``line`` (one document a line) or ``paragraph`` (blank-line separated)."""


DEFAULT_READ = ReadOptions()


@dataclass(frozen=True)
class Chunk:
    """Whole documents: a byte range of an uncompressed file (read by the worker, so the main process
    neither reads nor pickles the text), or, for gzip input, the decompressed bytes themselves."""

    path: str
    first_line: int
    offset: int = 0
    length: int = 0
    data: bytes | None = None

    def read(self) -> bytes:
        if self.data is not None:
            return self.data
        with open(self.path, "rb") as f:
            f.seek(self.offset)
            return f.read(self.length)


@dataclass
class Document:
    text: str
    source: str | None


def check_inputs(paths: list[str]) -> list[str]:
    """Validate input paths up front: they exist, are files, have a known suffix and are not empty."""
    if not paths:
        raise UserError("no input files given; pass one or more .jsonl, .jsonl.gz or .txt files")
    for p in paths:
        if not os.path.exists(p):
            raise UserError(f"{p}: input file does not exist; check the path")
        if not os.path.isfile(p):
            raise UserError(f"{p}: input is not a regular file; pass .jsonl, .jsonl.gz or .txt files")
        if not p.endswith(SUFFIXES):
            raise UserError(f"{p}: unknown input type; use one of {', '.join(SUFFIXES)}")
        if os.path.getsize(p) == 0:
            raise UserError(f"{p}: input file is empty; give it at least one document")
    return paths


def iter_chunks(paths: list[str], opts: ReadOptions, chunk_bytes: int = CHUNK_BYTES) -> Iterator[Chunk]:
    """Yield chunks of whole documents, in file order, so the concatenated output is deterministic."""
    for path in paths:
        if path.endswith(".gz"):
            yield from _gzip_chunks(path, opts, chunk_bytes)
        else:
            yield from _range_chunks(path, opts, chunk_bytes)


def _boundary(mm: mmap.mmap, start: int, paragraphs: bool) -> int:
    """First document boundary at or after ``start``: just past a newline (a blank line for paragraphs)."""
    if not paragraphs:
        nl = mm.find(b"\n", start)
        return len(mm) if nl < 0 else nl + 1
    m = _BLANK_LINE.search(mm, start)
    return len(mm) if m is None else m.end()


def _range_chunks(path: str, opts: ReadOptions, chunk_bytes: int) -> Iterator[Chunk]:
    paragraphs = _is_txt(path) and opts.txt_mode == "paragraph"
    with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as mm:
        start, line = 0, 1
        while start < len(mm):
            end = _boundary(mm, min(start + chunk_bytes, len(mm)) - 1, paragraphs) if start + chunk_bytes < len(mm) else len(mm)
            yield Chunk(path, line, start, end - start)
            line += mm[start:end].count(b"\n")
            start = end


def _gzip_chunks(path: str, opts: ReadOptions, chunk_bytes: int) -> Iterator[Chunk]:
    paragraphs = _is_txt(path) and opts.txt_mode == "paragraph"
    lines: list[bytes] = []
    size, first, lineno = 0, 1, 0
    with gzip.open(path, "rb") as f:
        for raw in f:
            lineno += 1
            lines.append(raw)
            size += len(raw)
            # A paragraph may only be cut at a blank line, so a chunk never splits a document.
            if size >= chunk_bytes and (not paragraphs or not raw.strip()):
                yield Chunk(path, first, data=b"".join(lines))
                lines, size, first = [], 0, lineno + 1
    if lines:
        yield Chunk(path, first, data=b"".join(lines))


def parse_chunk(chunk: Chunk, opts: ReadOptions) -> list[Document]:
    """Decode a chunk into documents; bad bytes or JSON raise a ``UserError`` naming ``file:line``."""
    docs: list[Document] = []
    txt = _is_txt(chunk.path)
    paragraph: list[str] = []
    # Split on b"\n" only, exactly as the file iterator in iter_chunks did, so line numbers agree.
    raw_lines = chunk.read().split(b"\n")
    if raw_lines and raw_lines[-1] == b"":
        raw_lines.pop()
    for i, raw in enumerate(raw_lines):
        lineno = chunk.first_line + i
        try:
            line = raw.decode("utf-8")
        except UnicodeDecodeError as e:
            raise UserError(
                f"{chunk.path}:{lineno}: not valid UTF-8 (byte 0x{raw[e.start]:02x} at column {e.start + 1}); "
                "re-encode the file as UTF-8"
            ) from None
        if not txt:
            if line.strip():
                docs.append(_parse_json_line(line, chunk.path, lineno, opts))
        elif opts.txt_mode == "line":
            text = line.rstrip("\r")
            if text.strip():
                docs.append(Document(text, None))
        elif line.strip():
            paragraph.append(line.rstrip("\r"))
        elif paragraph:
            docs.append(Document("\n".join(paragraph), None))
            paragraph = []
    if paragraph:
        docs.append(Document("\n".join(paragraph), None))
    return docs


def iter_documents(paths: list[str], opts: ReadOptions) -> Iterator[Document]:
    """All documents of ``paths`` in order (single process)."""
    for chunk in iter_chunks(paths, opts):
        yield from parse_chunk(chunk, opts)


def _is_txt(path: str) -> bool:
    return path.endswith((".txt", ".txt.gz"))


def _parse_json_line(line: str, path: str, lineno: int, opts: ReadOptions) -> Document:
    try:
        obj = json.loads(line)
    except json.JSONDecodeError as e:
        raise UserError(
            f"{path}:{lineno}: not valid JSON ({e.msg} at column {e.colno}); fix or remove the line"
        ) from None
    if not isinstance(obj, dict) or opts.json_key not in obj:
        raise UserError(
            f"{path}:{lineno}: JSON line has no {opts.json_key!r} key; pass --json-key with the text field's name"
        )
    text = obj[opts.json_key]
    if not isinstance(text, str):
        raise UserError(
            f"{path}:{lineno}: {opts.json_key!r} is not a string; each document's text must be a string"
        )
    source = obj.get(opts.source_key) if opts.source_key else None
    return Document(text, None if source is None else str(source))
