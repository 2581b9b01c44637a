"""The block view: fixed-length training samples with stable ids, read in O(1) through mmap.

A **block** is ``seq_length + 1`` consecutive tokens of the document stream (inputs plus the shifted
labels), exactly Megatron's GPTDataset sample: documents are shuffled once by ``seed`` (megatron-core's
document index), joined (each already ends in ``<eod>``), and cut every ``seq_length`` tokens, so block
``i`` covers stream tokens ``[i*s, i*s + s]`` and neighbours share one token. A block's **id** is its row
of megatron-core's sample index, before any shuffle; data order is decided later, by sample index
files, never by Megatron's shuffle index.

The index arrays come from megatron-core's own machinery (``GPTDataset``, which calls the compiled
``helpers_cpp.build_sample_idx``). They are cached in ``<prefix>.lfr_cache/<fingerprint>/``: the
directory name holds the dataset fingerprint (the ``.idx``, i.e. every document length; the ``.bin``
size; the tokenizer), the sequence length and the seed, so a change to any of them builds afresh.
Megatron writes its cache files in place; here rank 0 builds into a temp directory that is renamed into
place whole, so a crash never leaves a cache that looks complete.
"""

from __future__ import annotations

import os
from functools import cached_property

import numpy as np

from lfr_ds import atomic
from lfr_ds.data.dataset import TokenDataset
from lfr_ds.errors import UserError


class _IdentityShuffle:
    """Stands in for GPTDataset's shuffle index so its sample reader returns block ``i`` for ``i``."""

    def __getitem__(self, i: int) -> int:
        return i


class _Tokenizer:
    """The duck-typed tokenizer GPTDataset needs; identified by the dataset's recorded tokenizer."""

    def __init__(self, ds: TokenDataset) -> None:
        tok = (ds.meta or {}).get("tokenizer", {})
        self.vocab_size = tok.get("vocab_size")
        self.eod = tok.get("eod", 2)
        self.pad = tok.get("pad", 0)
        self.unique_identifiers = {"sha256": tok.get("sha256")}


def _check_cache(cache_dir: str) -> None:
    """megatron-core loads its index arrays with ``allow_pickle=True``, so a pickle planted under a
    cache's name would run code: each must be a plain array before megatron opens it."""
    for name in sorted(os.listdir(cache_dir)):
        if not name.endswith(".npy"):
            continue
        path = os.path.join(cache_dir, name)
        try:
            ok = isinstance(np.load(path, mmap_mode="r", allow_pickle=False), np.ndarray)
        except (ValueError, OSError):
            ok = False
        if not ok:
            raise UserError(
                f"{path}: not a plain numpy array, and lfr-ds never unpickles; delete {cache_dir} to rebuild it"
            )


def cache_dir(dataset: TokenDataset, seq_length: int, seed: int) -> str:
    """Where the block index arrays of ``dataset`` cut at ``seq_length`` with ``seed`` are cached."""
    return os.path.join(dataset.prefix + ".lfr_cache", f"{dataset.fingerprint[:16]}-seq{seq_length}-seed{seed}")


class BlockView:
    """Blocks of ``dataset`` for ``seq_length`` and ``seed``; identical in every process and rerun."""

    def __init__(self, dataset: TokenDataset, seq_length: int, seed: int, *, rank: int = 0, barrier=None) -> None:
        """Build (rank 0) or load the index arrays. In a distributed job pass ``rank`` and a
        ``barrier()`` callable: rank 0 builds the cache first, the other ranks then load it."""
        if seq_length < 1:
            raise UserError(f"seq_length {seq_length}: must be positive")
        self.dataset = dataset
        self.seq_length = seq_length
        self.seed = seed
        self.cache_dir = cache_dir(dataset, seq_length, seed)
        if rank == 0:
            self._build_cache()
        if barrier is not None:
            barrier()
        _check_cache(self.cache_dir)
        self._gpt = self._make_gpt_dataset(self.cache_dir)
        self._gpt.shuffle_index = _IdentityShuffle()
        self.num_blocks = len(self._gpt.sample_index) - 1
        if self.num_blocks < 1:
            raise UserError(
                f"{dataset.prefix}: {dataset.num_tokens:,} tokens make no block of {seq_length + 1} tokens; "
                "use more data or a shorter model.seq_length"
            )

    def _make_gpt_dataset(self, cache_dir: str):
        from megatron.core.datasets.gpt_dataset import GPTDataset, GPTDatasetConfig
        from megatron.core.datasets.utils import Split

        config = GPTDatasetConfig(
            random_seed=self.seed,
            sequence_length=self.seq_length,
            tokenizer=_Tokenizer(self.dataset),
            reset_position_ids=False,
            reset_attention_mask=False,
            eod_mask_loss=False,
            create_attention_mask=False,
            path_to_cache=cache_dir,
        )
        docs = np.arange(self.dataset.num_documents, dtype=np.int32)
        return GPTDataset(self.dataset.indexed, self.dataset.prefix, docs, None, Split.train, config)

    def _build_cache(self) -> None:
        if os.path.isdir(self.cache_dir):
            return
        os.makedirs(os.path.dirname(self.cache_dir), exist_ok=True)
        with atomic.atomic_path(self.cache_dir, is_dir=True) as tmp:
            self._make_gpt_dataset(str(tmp))

    # ---- reading -------------------------------------------------------------------------------

    def tokens(self, block_id: int) -> np.ndarray:
        """The ``seq_length + 1`` tokens (int64) of one block."""
        self._check(block_id)
        text, _ = self._gpt._query_document_sample_shuffle_indices(int(block_id))
        return text

    def batch(self, block_ids) -> np.ndarray:
        """Tokens of several blocks, ``[len(block_ids), seq_length + 1]`` int64."""
        return (
            np.stack([self.tokens(i) for i in block_ids])
            if len(block_ids)
            else np.empty((0, self.seq_length + 1), np.int64)
        )

    def documents(self, block_id: int) -> np.ndarray:
        """Ids of the documents the block's tokens come from, in stream order."""
        self._check(block_id)
        _, docs = self._gpt._query_document_sample_shuffle_indices(int(block_id))
        return docs

    @cached_property
    def block_source(self) -> np.ndarray:
        """Per block, the source code (index into ``dataset.sources``) of the document holding the
        block's middle token: one vectorised pass, for per-source analysis of whole phases."""
        doc_order = np.asarray(self._gpt.document_index)
        lengths = self.dataset.indexed.sequence_lengths[doc_order].astype(np.int64)
        doc_end = np.cumsum(lengths)  # stream offset one past each document
        middle = np.arange(self.num_blocks, dtype=np.int64) * self.seq_length + self.seq_length // 2
        pos = np.searchsorted(doc_end, middle, side="right")
        return np.asarray(self.dataset.doc_source)[doc_order[pos]]

    def token_share(self, doc_mask: np.ndarray) -> np.ndarray:
        """Per block, the fraction of its ``seq_length`` label tokens that come from documents where
        ``doc_mask`` (bool per document, in dataset order) is set: one vectorised pass."""
        doc_order = np.asarray(self._gpt.document_index)
        lengths = self.dataset.indexed.sequence_lengths[doc_order].astype(np.int64)
        flag = np.asarray(doc_mask, dtype=bool)[doc_order]
        doc_end = np.cumsum(lengths)
        flagged_before = np.concatenate([[0], np.cumsum(lengths * flag)])  # flagged tokens before each document

        def flagged_upto(t: np.ndarray) -> np.ndarray:  # flagged tokens among stream positions [0, t)
            pos = np.minimum(np.searchsorted(doc_end, t, side="right"), len(doc_end) - 1)
            start = doc_end[pos] - lengths[pos]
            return flagged_before[pos] + np.clip(t - start, 0, lengths[pos]) * flag[pos]

        first = np.arange(self.num_blocks, dtype=np.int64) * self.seq_length + 1  # a block's first label
        return (flagged_upto(first + self.seq_length) - flagged_upto(first)) / self.seq_length

    def _check(self, block_id: int) -> None:
        if not 0 <= block_id < self.num_blocks:
            raise UserError(
                f"block {block_id}: out of range; this dataset has {self.num_blocks} blocks "
                f"(0..{self.num_blocks - 1}) at seq_length {self.seq_length}"
            )
