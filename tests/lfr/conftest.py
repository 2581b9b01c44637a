"""Corpora with known difficulty for the LFR tests, built once per session."""

from __future__ import annotations

import numpy as np
import pytest
from corpora import planted


@pytest.fixture(scope="session")
def planted_dataset(tmp_path_factory) -> str:
    """Trivial / learnable / noise documents, 50/35/15% (~180k tokens, ~2,800 blocks of 65)."""
    return planted(tmp_path_factory, 200, "planted")


@pytest.fixture(scope="session")
def planted_small(tmp_path_factory) -> str:
    """The same kinds of text, ~840 blocks: for multi-process runs that must be quick."""
    return planted(tmp_path_factory, 60, "planted_small")


@pytest.fixture(scope="session")
def planted_tiny(tmp_path_factory) -> str:
    """~420 blocks: for the 2-rank runs that are launched several times."""
    return planted(tmp_path_factory, 30, "planted_tiny")


@pytest.fixture(scope="session")
def equal_dataset(tmp_path_factory) -> str:
    """Every block equally hard: tokens from one fixed random bigram chain (vocab 256), written with
    megatron-core's builder. The model learns it during Learn, so raw losses drift with visit order."""
    import torch
    from megatron.core.datasets.indexed_dataset import IndexedDatasetBuilder

    rng = np.random.default_rng(0)
    transition = rng.dirichlet(np.full(256, 0.1), size=256)  # peaked rows: a learnable chain
    cdf = transition.cumsum(1)
    prefix = str(tmp_path_factory.mktemp("equal") / "data")
    builder = IndexedDatasetBuilder(prefix + ".bin", dtype=np.uint16)
    for _ in range(40):
        n = 3000
        tokens = np.empty(n, dtype=np.int64)
        tokens[0] = 3
        u = rng.random(n)
        for i in range(1, n):
            tokens[i] = min(int(np.searchsorted(cdf[tokens[i - 1]], u[i])), 255)
        tokens = np.maximum(tokens, 3)
        tokens[-1] = 2
        builder.add_document(torch.from_numpy(tokens), [n])
    builder.finalize(prefix + ".idx")
    return prefix
