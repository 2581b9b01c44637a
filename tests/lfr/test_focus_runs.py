"""Focus on real training runs: planted difficulty, and selection that ignores visit order."""

from __future__ import annotations

import json

import numpy as np
from corpora import SMALL_MODEL
from launch import launch

from lfr_ds.data.sample_index import read_manifest, read_sample_index
from lfr_ds.lfr import offline
from lfr_ds.lfr.rewriter import read_kept_mask


def test_planted_difficulty(planted_dataset, tmp_path, capsys):
    """After Learn (2 passes), Focus drops >= 90% of the trivial blocks and keeps >= 90% of the learnable ones."""
    run = tmp_path / "run"
    # ~2,800 blocks / 32 per step = 88 steps a pass: Learn for two passes, so every block has a progress.
    launch(
        [
            f"data.path={planted_dataset}",
            f"run_dir={run}",
            *SMALL_MODEL,
            "engine.micro_batch_size=32",
            "engine.global_batch_size=32",
            "steps=180",
            "lfr.schedule=learn:176,focus:*@0.5",
            "checkpoint.interval=0",
        ],
        nproc=1,
        launcher="python",
    )
    manifest = json.loads((run / "index" / "phase_001_focus.json").read_text())
    drop, share = manifest["source_drop_fraction"], manifest["source_share"]
    assert drop["trivial"] >= 0.9
    assert drop["learnable"] <= 0.1
    # Noise is the hardest text and nothing is learned from it, yet loss-based selection keeps all of it and,
    # weighting by perplexity, draws it well beyond its share of the data (docs/lfr.md, "noise").
    noise_blocks = manifest["source_blocks"]["noise"]
    with capsys.disabled():
        print(f"\nplanted corpus, Focus @0.5 after a 2-pass Learn: dropped {drop}, draw shares {share}")
    assert drop["noise"] == 0.0
    assert share["noise"] > 2 * noise_blocks / manifest["eligible"]


def _position_drop_correlation(learn_order: np.ndarray, keep: np.ndarray, num_blocks: int) -> float:
    position = np.full(num_blocks, -1)
    ids = np.asarray(learn_order[:num_blocks], dtype=np.int64)
    position[ids] = np.arange(len(ids))  # the Learn phase's first pass is a permutation
    return float(np.corrcoef(position, ~keep)[0, 1])


def test_selection_is_not_decided_by_visit_order(equal_dataset, tmp_path, capsys):
    run = tmp_path / "run"
    # 40 documents x 3,000 tokens / 64 = 1,874 blocks; Learn is one pass (59 steps of 32).
    launch(
        [
            f"data.path={equal_dataset}",
            "model.vocab_size=256",
            f"run_dir={run}",
            *SMALL_MODEL,
            "engine.micro_batch_size=32",
            "engine.global_batch_size=32",
            "steps=60",
            "lfr.schedule=learn:59,focus:*@0.5",
            "checkpoint.interval=59",
        ],
        nproc=1,
        launcher="python",
    )
    learn, manifest = read_sample_index(run / "index" / "phase_000_learn.npy")
    n = manifest.num_blocks
    relative = read_kept_mask(
        run / "index" / "phase_001_focus.npy", read_manifest(run / "index" / "phase_001_focus.npy")
    )
    assert (
        offline.main([str(run / "checkpoints" / "step_00000059"), "--out", str(tmp_path / "raw.npy"), "lfr.score=raw"])
        == 0
    )
    raw = read_kept_mask(tmp_path / "raw.npy", read_manifest(tmp_path / "raw.npy"))
    r_relative = _position_drop_correlation(learn, relative, n)
    r_raw = _position_drop_correlation(learn, raw, n)
    with capsys.disabled():
        print(f"\ncorrelation(position in Learn, dropped): relative {r_relative:+.3f}, raw {r_raw:+.3f}")
    assert abs(r_relative) < 0.1
    assert abs(r_raw) > 0.3  # the paper's raw ranking drops what was seen last, when the model was best
