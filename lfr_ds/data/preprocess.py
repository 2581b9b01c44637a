"""Tokenize raw documents into megatron-core's indexed mmap dataset (``.bin/.idx``) plus lfr-ds's sidecar.

Output for ``--output-prefix P`` (format details in docs/data_format.md):

- ``P.bin`` / ``P.idx``: written by megatron-core's ``IndexedDatasetBuilder``, one sequence per document,
  every document ending with ``<eod>``; tokens in the smallest dtype that fits the vocab (uint16 below
  65,500 ids, else int32), exactly as Megatron-LM's own preprocess_data.py writes them.
- ``P.doc_source.npy``: int16/int32 source code of every document (index into ``meta["sources"]``).
- ``P.meta.json``: tokenizer identity, counts per source, the ``.idx`` checksum and ``.bin`` size.

Workers: the main process cuts the inputs into chunks in file order (byte ranges, decompressed blocks,
parquet row groups; see reader.py) and N worker processes read, parse and encode them. Results are taken
in submission order, so the output is byte-identical for any N and for any input format holding the same
documents; at most 2N chunks are in flight, so memory is bounded by the chunk (or row group) size, not
by the input. Every file is written under a temp name and renamed only after all of them are complete
(``P.meta.json`` last).
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

import numpy as np

from lfr_ds import __version__, atomic
from lfr_ds.data.dataset import sha256_file
from lfr_ds.data.inputs import check_inputs
from lfr_ds.data.reader import (
    DEFAULT_READ,
    Chunk,
    ReadOptions,
    add_read_arguments,
    byte_progress,
    iter_chunks,
    map_chunks,
    parse_chunk,
    read_options,
)
from lfr_ds.data.tokenizer import Tokenizer
from lfr_ds.errors import ArgumentParser, UserError, cli
from lfr_ds.faults import crash_point

UNKNOWN_SOURCE = "unknown"


@dataclass
class EncodedChunk:
    tokens: np.ndarray  # all documents of the chunk back to back, each ending with <eod>
    lengths: np.ndarray  # int32 tokens per document
    sources: list[str | None]
    path: str  # the input file the chunk came from
    rows: int  # documents read, with those of no text
    skipped_empty: int
    disk_bytes: int  # input file bytes the chunk accounts for, for the progress bar


# Per-worker state, set by _init_worker (a Pool cannot pass unpicklable sentencepiece objects per task).
_worker: dict = {}


def _init_worker(model_path: str, opts: ReadOptions, dtype: str) -> None:
    _worker.update(tokenizer=Tokenizer(model_path), opts=opts, dtype=np.dtype(dtype))


def _encode_chunk(chunk: Chunk) -> EncodedChunk:
    tok: Tokenizer = _worker["tokenizer"]
    docs = parse_chunk(chunk, _worker["opts"])
    kept = [d for d in docs if d.text]
    ids = tok.encode([d.text for d in kept])
    lengths = np.fromiter((len(x) + 1 for x in ids), dtype=np.int32, count=len(ids))
    tokens = np.empty(int(lengths.sum()), dtype=_worker["dtype"])
    ends = np.cumsum(lengths)
    for x, end, n in zip(ids, ends, lengths, strict=True):
        tokens[end - n : end - 1] = x
        tokens[end - 1] = tok.eod
    return EncodedChunk(
        tokens, lengths, [d.source for d in kept], chunk.path, len(docs), len(docs) - len(kept), chunk.disk_bytes
    )


def _encoded_chunks(
    inputs: list[str], model_path: str, opts: ReadOptions, dtype: str, workers: int
) -> Iterator[EncodedChunk]:
    return map_chunks(_encode_chunk, iter_chunks(inputs, opts), workers, _init_worker, (model_path, opts, dtype))


class _Removal:
    """The documents an lfr-dedup ``removed.txt`` lists, taken out of the encoded chunks as they pass."""

    def __init__(self, path: str) -> None:
        from lfr_ds.data.dedup import read_removed

        self.path = path
        self.ids, _, self.documents = read_removed(path)
        self.seen = 0  # documents with text read so far: the next one's id

    def apply(self, enc: EncodedChunk) -> EncodedChunk:
        n = len(enc.lengths)
        drop = np.isin(np.arange(self.seen, self.seen + n), self.ids)
        self.seen += n
        if not drop.any():
            return enc
        return EncodedChunk(
            enc.tokens[np.repeat(~drop, enc.lengths)],
            enc.lengths[~drop],
            [s for s, d in zip(enc.sources, drop, strict=True) if not d],
            enc.path,
            enc.rows,
            enc.skipped_empty,
            enc.disk_bytes,
        )

    def check(self, inputs: list[str]) -> None:
        if self.seen != self.documents:
            raise UserError(
                f"--remove {self.path}: made for {self.documents:,} documents, but {', '.join(inputs)} hold "
                f"{self.seen:,}; run lfr-dedup on these inputs (same files, order and read options)"
            )


@dataclass
class _Tally:
    """What the documents written so far add up to: the per-document source codes and the counts that
    go into ``meta.json``."""

    inputs: list[str]
    source_codes: dict[str, int] = field(default_factory=dict)
    doc_source: list[np.ndarray] = field(default_factory=list)
    doc_counts: Counter[str] = field(default_factory=Counter)
    token_counts: Counter[str] = field(default_factory=Counter)
    file_rows: Counter[str] = field(default_factory=Counter)
    docs: int = 0
    tokens: int = 0
    empty: int = 0

    def add(self, enc) -> None:
        names = [s if s is not None else UNKNOWN_SOURCE for s in enc.sources]
        self.doc_source.append(
            np.array([self.source_codes.setdefault(s, len(self.source_codes)) for s in names], dtype=np.int32)
        )
        for s, n in zip(names, enc.lengths, strict=True):
            self.doc_counts[s] += 1
            self.token_counts[s] += int(n)
        self.docs += len(enc.lengths)
        self.tokens += int(enc.lengths.sum())
        self.empty += enc.skipped_empty
        self.file_rows[enc.path] += enc.rows

    def save_sources(self, path: os.PathLike) -> None:
        """``doc_source.npy``: one source code per document, int16 unless there are too many sources."""
        codes = np.concatenate(self.doc_source)
        code_dtype = np.int16 if len(self.source_codes) < np.iinfo(np.int16).max else np.int32
        with open(path, "wb") as f:
            np.save(f, codes.astype(code_dtype), allow_pickle=False)

    def meta(self, opts: ReadOptions, tok: Tokenizer, dtype: np.dtype, idx: os.PathLike, bin_: os.PathLike) -> dict:
        sources = sorted(self.source_codes, key=self.source_codes.get)
        return {
            "format": "lfr-ds-dataset/1",
            "created_by": f"lfr-ds {__version__}",
            "inputs": [
                {"path": os.path.abspath(p), "bytes": os.path.getsize(p), "rows": self.file_rows[p]}
                for p in self.inputs
            ],
            "json_key": opts.json_key,
            "tokenizer": tok.identity(),
            "dtype": dtype.name,
            "num_documents": self.docs,
            "num_tokens": self.tokens,
            "skipped_empty_documents": self.empty,
            "sources": sources,
            "source_documents": {s: self.doc_counts[s] for s in sources},
            "source_tokens": {s: self.token_counts[s] for s in sources},
            "idx_sha256": sha256_file(idx),
            "bin_bytes": os.path.getsize(bin_),
        }


def preprocess(
    inputs: list[str],
    output_prefix: str,
    tokenizer_path: str,
    *,
    opts: ReadOptions = DEFAULT_READ,
    workers: int = 1,
    progress: bool = True,
    split: str | None = None,
    remove: str | None = None,
) -> dict:
    """Build ``output_prefix.{bin,idx,doc_source.npy,meta.json}`` from ``inputs`` (files, directories,
    globs; ``split`` picks a split of directories and globs), leaving out the documents ``remove`` (an
    lfr-dedup ``removed.txt``) lists; returns the meta dict."""
    from megatron.core.datasets.indexed_dataset import DType, IndexedDatasetBuilder

    inputs = check_inputs(inputs, split)
    out_dir = os.path.dirname(os.path.abspath(output_prefix))
    if not os.path.isdir(out_dir):
        raise UserError(f"--output-prefix {output_prefix}: directory {out_dir} does not exist; create it first")
    if workers < 1:
        raise UserError(f"--workers {workers}: must be at least 1")
    tok = Tokenizer(tokenizer_path)
    removal = _Removal(remove) if remove else None
    dtype_cls = DType.optimal_dtype(tok.vocab_size)  # megatron wants the numpy type, not a dtype instance
    dtype = np.dtype(dtype_cls)

    # Temp files of a build that was killed (SIGKILL skips every cleanup) are ours to remove.
    atomic.remove_stale_temps([output_prefix + ext for ext in (".bin", ".idx", ".doc_source.npy", ".meta.json")])
    t0 = time.time()
    tally = _Tally(inputs)
    file_number = {p: i for i, p in enumerate(inputs, 1)}
    bar = byte_progress(inputs, "preprocess", progress)

    with contextlib.ExitStack() as stack:
        # Entered first = renamed last: meta.json appears only once every other file is in place.
        meta_tmp = stack.enter_context(atomic.atomic_path(output_prefix + ".meta.json"))
        src_tmp = stack.enter_context(atomic.atomic_path(output_prefix + ".doc_source.npy"))
        idx_tmp = stack.enter_context(atomic.atomic_path(output_prefix + ".idx"))
        bin_tmp = stack.enter_context(atomic.atomic_path(output_prefix + ".bin"))
        builder = IndexedDatasetBuilder(str(bin_tmp), dtype=dtype_cls)
        try:
            for chunk_index, enc in enumerate(_encoded_chunks(inputs, tokenizer_path, opts, dtype.name, workers), 1):
                enc = removal.apply(enc) if removal else enc
                offset = 0
                for n in enc.lengths:
                    builder.add_document(enc.tokens[offset : offset + n], [int(n)])
                    offset += n
                crash_point("preprocess", chunk_index)
                tally.add(enc)
                bar.update(enc.disk_bytes)
                elapsed = max(time.time() - t0, 1e-9)
                bar.set_postfix_str(
                    f"file {file_number[enc.path]}/{len(inputs)}, {tally.file_rows.total():,} rows, "
                    f"{tally.tokens / elapsed:,.0f} tok/s",
                    refresh=False,
                )
        finally:
            builder.data_file.close()
            bar.close()
        if removal:
            removal.check(inputs)
        if tally.docs == 0:
            raise UserError(f"{', '.join(inputs)}: no documents found (all empty); give the input some text")
        builder.finalize(str(idx_tmp))
        tally.save_sources(src_tmp)
        meta = tally.meta(opts, tok, dtype, idx_tmp, bin_tmp)
        if removal:
            meta["removed"] = {"path": os.path.abspath(remove), "documents": len(removal.ids)}
        meta_tmp.write_text(json.dumps(meta, indent=2) + "\n")
        # Everything on disk before the first rename, so a crash among the renames leaves files that are
        # each complete (and a stale or missing meta.json, which open_dataset detects).
        for tmp in (bin_tmp, idx_tmp, src_tmp, meta_tmp):
            atomic.fsync_file(tmp)
    meta["seconds"] = time.time() - t0
    return meta


@cli
def main(argv: Sequence[str] | None = None) -> int:
    p = ArgumentParser(
        prog="lfr-preprocess",
        description="Tokenize documents (.jsonl, .txt, either plain, .gz or .zst, and .parquet) into a Megatron "
        "indexed dataset (.bin/.idx) plus the lfr-ds sidecar (.meta.json, .doc_source.npy).",
    )
    add_read_arguments(p, sources=True)
    p.add_argument(
        "--output-prefix",
        "-o",
        required=True,
        help="writes PREFIX.bin, PREFIX.idx, PREFIX.meta.json, PREFIX.doc_source.npy",
    )
    p.add_argument("--tokenizer", "-t", required=True, help="sentencepiece .model from lfr-train-tokenizer")
    p.add_argument(
        "--workers",
        "-j",
        type=int,
        default=os.cpu_count() or 1,
        help="tokenizer processes (default: all cores)",
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument(
        "--remove",
        metavar="FILE",
        help="leave out the documents this lfr-dedup removed.txt lists (lfr-dedup on the same inputs)",
    )
    p.add_argument(
        "--probe-fraction",
        type=float,
        default=0.0,
        help="also split off this share of the documents' tokens (at least 512 blocks of 1,025 tokens) as "
        "PREFIX_probe, a probe set no run trains on (lfr.probe_path; docs/lfr.md); default 0 = none",
    )
    p.add_argument("--probe-seed", type=int, default=0, help="seed of the probe documents' draw (default 0)")
    args = p.parse_args(argv)
    if not 0 <= args.probe_fraction <= 0.5:
        raise UserError(f"--probe-fraction {args.probe_fraction}: must be in [0, 0.5] (0 = no probe set)")
    meta = preprocess(
        args.inputs,
        args.output_prefix,
        args.tokenizer,
        opts=read_options(args),
        workers=args.workers,
        progress=not args.no_progress,
        split=args.split,
        remove=args.remove,
    )
    if args.probe_fraction:  # probes (issue 21)
        from lfr_ds.data.probe_split import split_probe_set

        split = split_probe_set(args.output_prefix, args.probe_fraction, args.probe_seed)
        print(
            f"split off {split['probe_prefix']}: {split['probe_documents']:,} documents, "
            f"{split['probe_tokens']:,} tokens (lfr.probe_path)",
            file=sys.stderr,
        )
    secs = meta["seconds"]
    print(
        f"wrote {args.output_prefix}.{{bin,idx}}: {meta['num_documents']:,} documents, {meta['num_tokens']:,} tokens "
        f"({meta['dtype']}), {len(meta['sources'])} sources, {meta['skipped_empty_documents']:,} empty skipped, "
        f"{len(meta['inputs'])} files, {secs:.1f}s ({meta['num_tokens'] / secs:,.0f} tok/s)",
        file=sys.stderr,
    )
    return 0
