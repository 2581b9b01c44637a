"""Open a Megatron indexed dataset (``.bin/.idx``), check it is whole, and attach lfr-ds's sidecar.

megatron-core's ``IndexedDataset`` trusts its files: a wrong magic number is an ``assert`` and a truncated
``.bin`` is only noticed when a read runs off its end. :func:`open_dataset` checks both first and turns
them into one-line errors. A dataset written by Megatron-LM itself (no sidecar) opens too; it then has
no tokenizer identity to check and every document's source is ``unknown``.

The dataset **fingerprint** is ``sha256(idx sha256, bin size, tokenizer sha256)``. The ``.idx`` holds
every document length, which is all that block boundaries depend on; hashing the ``.bin`` as well would
cost minutes at scale for no extra safety against the mistakes that happen (a rebuild, another corpus).
"""

from __future__ import annotations

import hashlib
import json
import os
import struct
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

import numpy as np

from lfr_ds.errors import UserError

INDEX_MAGIC = b"MMIDIDX\x00\x00"  # megatron.core.datasets.indexed_dataset._INDEX_HEADER
#: megatron-core DType codes → numpy dtypes (see megatron.core.datasets.indexed_dataset.DType).
DTYPE_CODES = {
    1: np.uint8,
    2: np.int8,
    3: np.int16,
    4: np.int32,
    5: np.int64,
    6: np.float64,
    7: np.float32,
    8: np.uint16,
}
UNKNOWN_SOURCE = "unknown"


def sha256_file(path: str | os.PathLike, bufsize: int = 1 << 22) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(bufsize):
            h.update(chunk)
    return h.hexdigest()


@dataclass
class TokenDataset:
    """A validated ``.bin/.idx`` pair with its optional lfr-ds sidecar."""

    prefix: str
    meta: dict | None
    """Contents of ``prefix.meta.json``, or ``None`` for a dataset written by plain Megatron tools."""
    idx_sha256: str
    bin_bytes: int
    num_documents: int
    num_tokens: int
    dtype: np.dtype
    doc_source: np.ndarray = field(repr=False)
    """Per-document index into :attr:`sources`."""
    sources: list[str] = field(default_factory=list)

    @cached_property
    def indexed(self):
        """megatron-core's ``IndexedDataset`` over the files (mmap)."""
        from megatron.core.datasets.indexed_dataset import IndexedDataset

        return IndexedDataset(self.prefix)

    @property
    def tokenizer_sha256(self) -> str | None:
        return self.meta["tokenizer"]["sha256"] if self.meta else None

    @property
    def fingerprint(self) -> str:
        """Identity of the token stream and its tokenizer; every lfr-ds file derived from it records this."""
        key = f"{self.idx_sha256}:{self.bin_bytes}:{self.tokenizer_sha256}"
        return hashlib.sha256(key.encode()).hexdigest()

    def document(self, i: int) -> np.ndarray:
        if not 0 <= i < self.num_documents:
            raise UserError(
                f"document {i}: out of range; {self.prefix} has {self.num_documents} documents "
                f"(0..{self.num_documents - 1})"
            )
        return self.indexed.get(i)

    def check_tokenizer(self, tokenizer) -> None:
        """Refuse to pair this dataset with a tokenizer other than the one that built it."""
        if self.meta is None:
            return
        built = self.meta["tokenizer"]
        if built["sha256"] != tokenizer.sha256:
            raise UserError(
                f"{self.prefix}: built with tokenizer {built['path']} (sha256 {built['sha256'][:12]}), "
                f"but {tokenizer.path} (sha256 {tokenizer.sha256[:12]}) was requested; use the dataset's tokenizer "
                "or re-run lfr-preprocess with this one"
            )


def open_dataset(prefix: str) -> TokenDataset:
    """Validate ``prefix.{bin,idx}`` (and the sidecar, if any) and return a :class:`TokenDataset`."""
    prefix = _strip_suffix(prefix)
    idx_path, bin_path = prefix + ".idx", prefix + ".bin"
    for path in (idx_path, bin_path):
        if not os.path.isfile(path):
            raise UserError(
                f"{path}: dataset file not found; build the dataset with lfr-preprocess (or check the prefix)"
            )
    lengths, pointers, doc_index, dtype = _read_index(idx_path)
    expected = int(pointers[-1]) + int(lengths[-1]) * dtype.itemsize if len(lengths) else 0
    bin_bytes = os.path.getsize(bin_path)
    if bin_bytes != expected:
        raise UserError(
            f"{bin_path}: {bin_bytes:,} bytes but {idx_path} describes {expected:,}; the pair disagrees "
            "(truncated copy or files from different builds): rebuild with lfr-preprocess"
        )
    idx_sha = sha256_file(idx_path)
    num_docs = len(doc_index) - 1

    meta = None
    doc_source = np.zeros(num_docs, dtype=np.int16)
    sources = [UNKNOWN_SOURCE]
    meta_path = prefix + ".meta.json"
    if os.path.exists(meta_path):
        try:
            meta = json.loads(Path(meta_path).read_text())
            meta_idx, meta_bin, meta_sources = meta["idx_sha256"], meta["bin_bytes"], meta["sources"]
            meta["tokenizer"]["sha256"]
        except (ValueError, KeyError, TypeError):
            raise UserError(f"{meta_path}: unreadable sidecar; rebuild the dataset with lfr-preprocess") from None
        if meta_idx != idx_sha or meta_bin != bin_bytes:
            raise UserError(
                f"{meta_path}: describes a different .bin/.idx (checksum mismatch); rebuild with lfr-preprocess"
            )
        src_path = prefix + ".doc_source.npy"
        try:
            doc_source = np.load(src_path, allow_pickle=False, mmap_mode="r")
        except (OSError, ValueError):
            raise UserError(f"{src_path}: missing or unreadable; rebuild the dataset with lfr-preprocess") from None
        if len(doc_source) != num_docs:
            raise UserError(
                f"{src_path}: {len(doc_source)} entries for {num_docs} documents; rebuild with lfr-preprocess"
            )
        sources = list(meta_sources)
    return TokenDataset(
        prefix=prefix,
        meta=meta,
        idx_sha256=idx_sha,
        bin_bytes=bin_bytes,
        num_documents=num_docs,
        num_tokens=int(lengths.sum(dtype=np.int64)),
        dtype=dtype,
        doc_source=doc_source,
        sources=sources,
    )


def _strip_suffix(prefix: str) -> str:
    for suffix in (".bin", ".idx", ".meta.json"):
        if prefix.endswith(suffix):
            return prefix[: -len(suffix)]
    return prefix


def _read_index(idx_path: str) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.dtype]:
    """Parse a Megatron ``.idx`` (layout in docs/data_format.md) with bounds checks on every field."""
    size = os.path.getsize(idx_path)
    header = 9 + 8 + 1 + 8 + 8
    with open(idx_path, "rb") as f:
        head = f.read(header)
    if len(head) < header or head[:9] != INDEX_MAGIC:
        raise UserError(f"{idx_path}: not a Megatron index file (wrong magic number); rebuild with lfr-preprocess")
    version, code, n_seq, n_doc = struct.unpack("<QBQQ", head[9:])
    if version != 1 or code not in DTYPE_CODES:
        raise UserError(
            f"{idx_path}: unsupported index version {version} / dtype code {code}; rebuild with lfr-preprocess"
        )
    if size != header + n_seq * (4 + 8) + n_doc * 8:
        raise UserError(
            f"{idx_path}: {size:,} bytes, inconsistent with its header (truncated?); rebuild with lfr-preprocess"
        )
    mm = np.memmap(idx_path, mode="r", dtype=np.uint8)
    lengths = np.frombuffer(mm, dtype=np.int32, count=n_seq, offset=header)
    pointers = np.frombuffer(mm, dtype=np.int64, count=n_seq, offset=header + 4 * n_seq)
    doc_index = np.frombuffer(mm, dtype=np.int64, count=n_doc, offset=header + 12 * n_seq)
    if n_doc < 1 or doc_index[0] != 0 or doc_index[-1] != n_seq:
        raise UserError(f"{idx_path}: corrupt document index; rebuild with lfr-preprocess")
    if n_seq and (lengths.min() < 0 or pointers[0] != 0):
        raise UserError(f"{idx_path}: corrupt sequence table; rebuild with lfr-preprocess")
    return lengths, pointers, doc_index, np.dtype(DTYPE_CODES[code])
