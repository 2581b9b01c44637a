"""Read raw documents from ``.jsonl``, ``.jsonl.gz`` and ``.txt`` files, in chunks for worker processes.

A document is one JSON line (its text under ``json_key``, its optional source label under
``source_key``) or, for ``.txt``, one line or one blank-line-separated paragraph. Readers hand out
*chunks* of raw bytes that end on a document boundary, tagged with the file and first line number,
so workers can parse in parallel and still report ``file:line`` for bad input.
"""

from __future__ import annotations

import gzip
import io
import json
import os
from collections.abc import Iterator
from dataclasses import dataclass

from lfr_ds.errors import UserError

SUFFIXES = (".jsonl", ".jsonl.gz", ".txt", ".txt.gz")
#: Raw bytes per chunk handed to a worker: big enough to amortise IPC, small enough to balance load.
CHUNK_BYTES = 1 << 20


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
    """Complete documents as raw bytes, with where they came from."""

    path: str
    first_line: int
    data: bytes


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


def _open(path: str) -> io.BufferedIOBase:
    return gzip.open(path, "rb") if path.endswith(".gz") else open(path, "rb")


def iter_chunks(paths: list[str], opts: ReadOptions, chunk_bytes: int = CHUNK_BYTES) -> Iterator[Chunk]:
    """Yield chunks of whole documents, in file order, so the concatenated output is deterministic."""
    for path in paths:
        paragraphs = _is_txt(path) and opts.txt_mode == "paragraph"
        lines: list[bytes] = []
        size = 0
        first = 1
        lineno = 0
        with _open(path) as f:
            for line in f:
                lineno += 1
                lines.append(line)
                size += len(line)
                # A paragraph may only be cut at a blank line, so a chunk never splits a document.
                at_boundary = not paragraphs or not line.strip()
                if size >= chunk_bytes and at_boundary:
                    yield Chunk(path, first, b"".join(lines))
                    lines, size, first = [], 0, lineno + 1
        if lines:
            yield Chunk(path, first, b"".join(lines))


def parse_chunk(chunk: Chunk, opts: ReadOptions) -> list[Document]:
    """Decode a chunk into documents; bad bytes or JSON raise a ``UserError`` naming ``file:line``."""
    docs: list[Document] = []
    txt = _is_txt(chunk.path)
    paragraph: list[str] = []
    # Split on b"\n" only, exactly as the file iterator in iter_chunks did, so line numbers agree.
    raw_lines = chunk.data.split(b"\n")
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
