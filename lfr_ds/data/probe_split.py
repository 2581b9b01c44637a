"""``lfr-preprocess --probe-fraction F`` (issue 21): split a probe set off a dataset, whole documents.

The probe set (``lfr.probe_path``, :mod:`lfr_ds.lfr.probes`) is text of the same corpus that no run trains
on. After the dataset ``P`` is written, documents drawn in a seeded order (``--probe-seed``) go to ``P_probe``
until it holds F of the tokens and at least :data:`SPLIT_MIN_BLOCKS` blocks of GPT-2's
1,024 + 1 tokens; ``P`` is rewritten with the rest. Both are complete lfr-ds datasets (``.bin``, ``.idx``,
``.doc_source.npy``, ``.meta.json`` with the counts, checksums and a ``probe_split`` record); each file is
written under a temp name and renamed, ``.meta.json`` last. Not the dev split: keep that a separate file.
"""

from __future__ import annotations

import contextlib
import json

import numpy as np

from lfr_ds import atomic
from lfr_ds.data.dataset import open_dataset, sha256_file
from lfr_ds.errors import UserError

#: The fewest blocks a probe split aims for (of GPT-2's 1,024 + 1 tokens here, of the model's in
#: lfr-compare): at 1 probe a step, a 128-record window draws from 512 blocks.
SPLIT_MIN_BLOCKS = 512

#: The block the minimum is counted in: GPT-2's context plus the shifted label.
_BLOCK_TOKENS = 1025


def probe_documents(lengths: np.ndarray, fraction: float, seed: int) -> np.ndarray:
    """bool per document: the probe set, whole documents in a seeded order until F of the tokens and at
    least 512 blocks; refused when that would take more than half the tokens."""
    total = int(lengths.sum())
    target = max(fraction * total, SPLIT_MIN_BLOCKS * _BLOCK_TOKENS)
    if 2 * target > total:
        raise UserError(
            f"--probe-fraction {fraction}: the dataset holds {total:,} tokens, and a probe set of at least "
            f"{SPLIT_MIN_BLOCKS} blocks of {_BLOCK_TOKENS} tokens would be more than half of it; give more data, "
            "or split the probe documents off by hand"
        )
    order = np.random.default_rng(seed).permutation(len(lengths))
    taken = int(np.searchsorted(np.cumsum(lengths[order]), target)) + 1
    out = np.zeros(len(lengths), dtype=bool)
    out[order[:taken]] = True
    return out


def split_probe_set(prefix: str, fraction: float, seed: int = 0) -> dict:
    """Rewrite ``prefix`` without its probe documents and write them as ``prefix + "_probe"``; returns
    ``{"probe_prefix", "probe_documents", "probe_tokens"}``."""
    dataset = open_dataset(prefix)
    lengths = dataset.indexed.sequence_lengths.astype(np.int64)
    probe = probe_documents(lengths, fraction, seed)
    if dataset.meta is None:
        raise UserError(
            f"{prefix}: no lfr-ds sidecar (.meta.json); --probe-fraction splits datasets lfr-preprocess wrote"
        )
    meta, doc_source = dataset.meta, dataset.doc_source
    written = {}
    # The probe set first; the rest replaces prefix's files by rename, the old ones still mapped for reading.
    for out, mask, role in ((prefix + "_probe", probe, "probe"), (prefix, ~probe, "train")):
        docs = (np.asarray(dataset.indexed[int(i)]) for i in np.flatnonzero(mask))  # one at a time: memory stays flat
        written[role] = _write_subset(
            out,
            docs,
            doc_source[mask],
            lengths[mask],
            {**meta, "probe_split": {"role": role, "fraction": fraction, "seed": seed}},
            dataset.indexed.index.dtype,
        )
    return {"probe_prefix": prefix + "_probe", "probe_documents": int(probe.sum()), "probe_tokens": written["probe"]}


def _write_subset(prefix: str, docs, doc_source: np.ndarray, lengths: np.ndarray, meta: dict, dtype) -> int:
    """One complete dataset of ``docs``; returns its tokens."""
    import torch
    from megatron.core.datasets.indexed_dataset import IndexedDatasetBuilder

    sources = meta["sources"]
    counts = np.bincount(doc_source, minlength=len(sources))
    token_counts = np.bincount(doc_source, weights=lengths, minlength=len(sources))
    with contextlib.ExitStack() as stack:
        meta_tmp = stack.enter_context(atomic.atomic_path(prefix + ".meta.json"))  # renamed last
        src_tmp = stack.enter_context(atomic.atomic_path(prefix + ".doc_source.npy"))
        idx_tmp = stack.enter_context(atomic.atomic_path(prefix + ".idx"))
        bin_tmp = stack.enter_context(atomic.atomic_path(prefix + ".bin"))
        builder = IndexedDatasetBuilder(str(bin_tmp), dtype=dtype)
        for d in docs:
            builder.add_document(torch.from_numpy(d.astype(np.int64)), [len(d)])
        builder.finalize(str(idx_tmp))
        with open(src_tmp, "wb") as f:
            np.save(f, doc_source, allow_pickle=False)
        n_tokens = int(lengths.sum())
        meta = {
            **meta,
            "num_documents": len(lengths),
            "num_tokens": n_tokens,
            "source_documents": {s: int(n) for s, n in zip(sources, counts, strict=True)},
            "source_tokens": {s: int(n) for s, n in zip(sources, token_counts, strict=True)},
            "idx_sha256": sha256_file(idx_tmp),
            "bin_bytes": bin_tmp.stat().st_size,
        }
        meta_tmp.write_text(json.dumps(meta, indent=2) + "\n")
        for tmp in (bin_tmp, idx_tmp, src_tmp, meta_tmp):
            atomic.fsync_file(tmp)
    return n_tokens
