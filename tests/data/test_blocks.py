"""Block ids are forever: stable across processes and reruns; caches rebuild exactly when inputs change."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys

import numpy as np

from lfr_ds.data.blocks import BlockView
from lfr_ds.data.dataset import open_dataset
from lfr_ds.data.preprocess import preprocess

PROBE = """
import hashlib, sys, numpy as np
from lfr_ds.data.blocks import BlockView
from lfr_ds.data.dataset import open_dataset
v = BlockView(open_dataset(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]))
ids = [0, 1, v.num_blocks // 2, v.num_blocks - 1]
print(v.num_blocks, hashlib.sha256(v.batch(ids).tobytes()).hexdigest())
"""


def _digest(view: BlockView) -> str:
    ids = [0, 1, view.num_blocks // 2, view.num_blocks - 1]
    return f"{view.num_blocks} {hashlib.sha256(view.batch(ids).tobytes()).hexdigest()}"


def test_ids_stable_across_processes_and_reruns(tmp_path, webmix_dataset):
    prefix = tmp_path / "ds"
    for ext in (".bin", ".idx", ".meta.json", ".doc_source.npy"):
        shutil.copy(str(webmix_dataset) + ext, str(prefix) + ext)
    here = _digest(BlockView(open_dataset(str(prefix)), 128, 7))
    cache = str(prefix) + ".lfr_cache"
    # Fresh processes: one loads the cache built above, the other rebuilds it from nothing.
    loaded = subprocess.run(
        [sys.executable, "-c", PROBE, str(prefix), "128", "7"], capture_output=True, text=True, check=True
    ).stdout.strip()
    shutil.rmtree(cache)
    rebuilt = subprocess.run(
        [sys.executable, "-c", PROBE, str(prefix), "128", "7"], capture_output=True, text=True, check=True
    ).stdout.strip()
    assert here == loaded == rebuilt


def test_block_is_a_window_of_the_document_stream(webmix_dataset):
    ds = open_dataset(str(webmix_dataset))
    view = BlockView(ds, 64, 3)
    order = np.asarray(view._gpt.document_index)
    stream = np.concatenate([ds.document(int(d)) for d in order[:40]])
    for i in range(20):
        assert np.array_equal(view.tokens(i), stream[i * 64 : i * 64 + 65])
    # Every token of the stream is in some block: blocks = floor((tokens - 1) / seq_length).
    assert view.num_blocks == (ds.num_tokens - 1) // 64
    # Provenance: the documents a block names are the ones whose tokens it holds.
    docs = view.documents(5)
    assert np.array_equal(
        docs,
        order[
            np.searchsorted(np.cumsum(ds.indexed.sequence_lengths[order]), [5 * 64, 6 * 64], side="right")[
                0
            ] : np.searchsorted(np.cumsum(ds.indexed.sequence_lengths[order]), 6 * 64, side="right") + 1
        ],
    )


def test_block_source_matches_middle_token_document(webmix_dataset):
    ds = open_dataset(str(webmix_dataset))
    view = BlockView(ds, 256, 1234)
    src = view.block_source
    assert len(src) == view.num_blocks
    order = np.asarray(view._gpt.document_index)
    ends = np.cumsum(ds.indexed.sequence_lengths[order].astype(np.int64))
    for b in (0, 17, view.num_blocks - 1):
        doc = order[np.searchsorted(ends, b * 256 + 128, side="right")]
        assert src[b] == ds.doc_source[doc]
    # All five webmix sources appear, roughly in proportion to their tokens.
    shares = np.bincount(src, minlength=len(ds.sources)) / len(src)
    tokens = np.array([ds.meta["source_tokens"][s] for s in ds.sources]) / ds.num_tokens
    assert np.allclose(shares, tokens, atol=0.02)


def test_cache_key_changes_with_every_input(tmp_path, webmix_train, webmix_tokenizer):
    src = tmp_path / "in.jsonl"
    lines = [line + "\n" for line in webmix_train.read_text().split("\n")[:400]]
    src.write_text("".join(lines))
    prefix = tmp_path / "ds"
    preprocess([str(src)], str(prefix), str(webmix_tokenizer), progress=False)
    base = BlockView(open_dataset(str(prefix)), 128, 1)
    same = BlockView(open_dataset(str(prefix)), 128, 1)
    assert same.cache_dir == base.cache_dir
    other_seq = BlockView(open_dataset(str(prefix)), 64, 1)
    other_seed = BlockView(open_dataset(str(prefix)), 128, 2)
    assert len({base.cache_dir, other_seq.cache_dir, other_seed.cache_dir}) == 3
    assert other_seq.num_blocks != base.num_blocks
    assert not np.array_equal(other_seed.tokens(0), base.tokens(0))

    # Rebuild the data in place with one document changed: new fingerprint, new cache, new blocks.
    lines[10] = json.dumps({"text": "a changed document " * 30, "source": "news"}) + "\n"
    src.write_text("".join(lines))
    preprocess([str(src)], str(prefix), str(webmix_tokenizer), progress=False)
    rebuilt = BlockView(open_dataset(str(prefix)), 128, 1)
    assert rebuilt.cache_dir != base.cache_dir
    assert sorted(os.listdir(str(prefix) + ".lfr_cache")) == sorted(
        os.path.basename(v.cache_dir) for v in (base, other_seq, other_seed, rebuilt)
    )
    # No temp directory is left behind by the atomic cache build.
    assert not [n for n in os.listdir(str(prefix) + ".lfr_cache") if n.endswith(".tmp")]
