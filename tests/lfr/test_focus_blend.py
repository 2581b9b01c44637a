"""Focus over a blend of corpora (issue 20): drops within each corpus; ``lfr.blend=keep`` holds the
weights in the draws, ``free`` lets difficulty move them and the manifest records by how much."""

from __future__ import annotations

import json

import numpy as np
import pytest

from lfr_ds.config import LFRConfig
from lfr_ds.data.blend import Corpora
from lfr_ds.lfr.loss_table import LossTable
from lfr_ds.lfr.rewriter import Rewriter
from lfr_ds.lfr.schedule import Phase

SIZES = [1000, 3000, 2000]  # shares of the blocks 1/6, 1/2, 1/3: not the weights
WEIGHTS = [0.5, 0.3, 0.2]
MEAN_LOSS = [2.0, 3.0, 4.5]  # corpus 0 easy, corpus 2 hard
FOCUS = Phase(1, "focus", 200, 100, drop=0.5)  # 3,200 draws
G = 32


@pytest.fixture(scope="module")
def blend():
    rng = np.random.default_rng(0)
    corpora = Corpora(["easy", "mid", "hard"], np.array(WEIGHTS), np.concatenate([[0], np.cumsum(SIZES)]))
    n = sum(SIZES)
    table = LossTable(n, 2)
    loss = np.concatenate([rng.normal(m, 0.5, s) for m, s in zip(MEAN_LOSS, SIZES, strict=True)])
    for step, ids in enumerate(np.array_split(rng.permutation(n), n // G)):  # one Learn pass
        rows = np.stack([ids, loss[ids], np.full(len(ids), 64.0)], axis=1)
        table.update(rows, step)
    source = corpora.block_corpus()
    return corpora, table, source


def _focus(blend, mode, tmp_path, corpora=True):
    c, table, source = blend
    rewriter = Rewriter(
        tmp_path, LFRConfig(blend=mode), 7, "fp", c.names, source, 64, G, corpora=c if corpora else None
    )
    built = rewriter.build(FOCUS, table, digest="d")
    manifest = rewriter.write(tmp_path / f"{mode}.npy", built)
    return built.order, manifest, built.keep


def test_keep_holds_the_weights_and_drops_within_each_corpus(blend, tmp_path):
    corpora = blend[0]
    order, manifest, keep = _focus(blend, "keep", tmp_path)
    np.testing.assert_allclose(corpora.counts(order) / len(order), WEIGHTS, atol=0.01)
    for c, name in enumerate(corpora.names):
        assert manifest.corpora[name]["weight"] == WEIGHTS[c]
        assert abs(manifest.corpora[name]["share_minus_weight"]) <= 0.01
        assert manifest.corpus_drop_fraction[name] == pytest.approx(0.5, abs=0.01)
        assert keep[order].all()  # only kept blocks are drawn
    assert json.loads((tmp_path / "keep.json").read_text())["corpora"] == manifest.corpora
    # Without the blend's labels, the same drop takes mostly the easy corpus: what keep prevents.
    _, alone, _ = _focus(blend, "keep", tmp_path, corpora=False)
    assert alone.source_drop_fraction["easy"] > 0.8 and alone.corpora is None


def test_free_moves_the_mixture_and_records_by_how_much(blend, tmp_path):
    corpora = blend[0]
    order, manifest, _ = _focus(blend, "free", tmp_path)
    share = corpora.counts(order) / len(order)
    moved = {name: manifest.corpora[name]["share_minus_weight"] for name in corpora.names}
    # The hard corpus gains share, the easy one loses it; the manifest says by how much.
    assert moved["hard"] > 0.05 and moved["easy"] < -0.05
    for c, name in enumerate(corpora.names):
        assert manifest.corpora[name]["share"] == pytest.approx(share[c], abs=1e-6)
        assert moved[name] == pytest.approx(share[c] - WEIGHTS[c], abs=1e-6)
        assert manifest.corpus_drop_fraction[name] == pytest.approx(0.5, abs=0.01)
    assert manifest.blend == "free"
