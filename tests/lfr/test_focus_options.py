"""Focus beyond the paper, on a real planted run: the adaptive drop (``@auto``) and learnability weighting."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
from corpora import SMALL_MODEL
from launch import launch

from lfr_ds.config import LFRConfig
from lfr_ds.data.blocks import BlockView
from lfr_ds.data.dataset import open_dataset
from lfr_ds.errors import UserError
from lfr_ds.lfr import reporter
from lfr_ds.lfr.focus import focus_selection
from lfr_ds.lfr.loss_table import LossTable
from lfr_ds.lfr.offline import load_checkpoint_state
from lfr_ds.lfr.rewriter import Rewriter
from lfr_ds.lfr.schedule import Phase


@pytest.fixture(scope="module")
def auto_run(planted_dataset, tmp_path_factory):
    """A 2-pass Learn (88 steps a pass) on the planted corpus, then Focus @auto; checkpointed at the boundary."""
    run = tmp_path_factory.mktemp("auto") / "run"
    launch(
        [
            f"data.path={planted_dataset}",
            f"run_dir={run}",
            *SMALL_MODEL,
            "engine.micro_batch_size=32",
            "engine.global_batch_size=32",
            "steps=180",
            "lfr.schedule=learn:176,focus:*@auto",
            "checkpoint.interval=176",
        ],
        nproc=1,
        launcher="python",
    )
    return run


def test_auto_drops_what_is_learned(auto_run, capsys):
    manifest = json.loads((auto_run / "index" / "phase_001_focus.json").read_text())
    drop, why = manifest["source_drop_fraction"], manifest["auto_drop"]
    with capsys.disabled():
        print(
            f"\nplanted corpus, Focus @auto after a 2-pass Learn: chose {manifest['drop_fraction']}, "
            f"dropped {drop}, because {why}"
        )
    assert drop["trivial"] >= 0.9
    assert drop["learnable"] <= 0.1
    assert drop["noise"] <= 0.1
    assert why["learned"] <= why["eligible"] and manifest["drop_fraction"] <= why["target_fraction"] <= why["max_drop"]
    assert manifest["dropped"] == round(manifest["drop_fraction"] * manifest["eligible"])


def test_learnable_weighting_draws_noise_no_more_than_its_share(auto_run, planted_dataset, capsys):
    """Perplexity weighting draws the noise (hardest, never learned) far beyond its share of the data; the
    learnability weighting, from the same table and the same kept set, at or below it."""
    state, table = load_checkpoint_state(str(auto_run / "checkpoints" / "step_00000176"))
    dataset = open_dataset(planted_dataset)
    block_source = BlockView(dataset, 64, state.config["data"]["seed"]).block_source
    noise = dataset.sources.index("noise")
    data_share = float(np.mean(block_source == noise))
    focus = Phase(1, "focus", 176, 100, drop=0.5)  # 3,200 draws: shares to about +-0.01
    shares = {}
    for weighting in ("perplexity", "learnable"):
        rewriter = Rewriter(
            auto_run,
            LFRConfig(weighting=weighting),
            1,
            dataset.fingerprint,
            dataset.sources,
            block_source,
            seq_length=64,
            global_batch=32,
        )
        built = rewriter.build(focus, table)
        shares[weighting] = float(np.mean(block_source[built.order] == noise))
    with capsys.disabled():
        print(
            f"\nnoise: {data_share:.3f} of the blocks, {shares} of Focus @0.5 draws; "
            f"learnability {built.manifest.cluster_learnability}"
        )
    assert shares["perplexity"] > 2 * data_share
    assert shares["learnable"] <= data_share


def _focus(table: LossTable, phase: Phase, options: LFRConfig) -> tuple[dict, np.ndarray]:
    """The Focus manifest fields and the kept mask of ``phase`` over ``table``, every block from one source."""
    sel = focus_selection(table, phase, global_batch=32, seed=[1, 1], options=options)
    return reporter.focus_fields(
        sel, table.seen, np.zeros(table.num_blocks, dtype=int), ["all"], options, phase.drop
    ), sel.keep


def test_auto_drops_almost_nothing_before_anything_is_learned():
    """Every block scored twice at about its batch's mean (nothing learned yet, or equally hard text):
    @auto drops (almost) nothing, so leaving it on costs almost nothing."""
    rng = np.random.default_rng(0)
    table = LossTable(4000, 2)
    rows = np.column_stack([np.arange(4000), 5.0 + rng.normal(0, 0.3, 4000), np.full(4000, 64.0)])
    for step, batch in enumerate(np.split(rows, 125)):
        table.update(batch, step)
    for step, batch in enumerate(np.split(rows[rng.permutation(4000)] + [0, -0.5, 0], 125)):
        table.update(batch, 125 + step)
    phase = Phase(1, "focus", 250, 10, auto_drop=True)
    fields, keep = _focus(table, phase, LFRConfig())
    assert fields["drop_fraction"] <= 0.01 and keep.mean() >= 0.99
    # The same table with a quarter of the blocks learned (a third of their batch's mean, at both visits).
    table.loss[:1000] = table.ref[:1000] / 3
    table.prev_relative[:1000] = -1.0
    fields, keep = _focus(table, phase, LFRConfig())
    # Only learned blocks go; the per-cluster cap (lfr.max_cluster_drop 0.95) may keep a few of them.
    assert keep[1000:].all() and keep[:1000].mean() <= 0.06 and fields["auto_drop"]["learned"] == 1000
    fields, keep = _focus(table, phase, LFRConfig(auto_max_drop=0.1))
    assert fields["drop_fraction"] == 0.1 and keep[1000:].all()  # the cap: only learned blocks, at most 10%


@pytest.mark.parametrize(
    ("field", "value", "needle"),
    [
        ("weighting", "loss", "lfr.weighting: 'loss'; use perplexity or learnable"),
        ("auto_max_drop", 1.0, "lfr.auto_max_drop: must be a finite number in (0.0, 1.0), got 1.0"),
        ("auto_max_drop", 0.0, "lfr.auto_max_drop: must be a finite number in (0.0, 1.0), got 0.0"),
    ],
)
def test_bad_option_values(field, value, needle):
    with pytest.raises(UserError, match=re.escape(needle)):
        LFRConfig(**{field: value})
