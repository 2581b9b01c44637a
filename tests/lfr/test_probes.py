"""Probe blocks (issue 21): scored inside the step, recorded beside the loss table, never changing training."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from corpora import SMALL_MODEL
from launch import launch

from lfr_ds import synthetic
from lfr_ds.checkpoint import ARRAYS_FILE
from lfr_ds.data.preprocess import preprocess
from lfr_ds.lfr.loss_table import LossTable
from lfr_ds.lfr.probes import probe_ids, split_probe_rows
from lfr_ds.safe_load import load_arrays


@pytest.fixture(scope="module")
def probe_set(planted_small, tmp_path_factory) -> str:
    """Planted documents of another seed, tokenized with the training set's tokenizer: never trained on."""
    d = tmp_path_factory.mktemp("probe")
    synthetic.write_jsonl(d / "probe.jsonl", synthetic.generate(12, seed=7))
    preprocess(
        [str(d / "probe.jsonl")], str(d / "probe"), str(Path(planted_small).parent / "tok.model"), progress=False
    )
    return str(d / "probe")


def _run(dataset: str, run: Path, *extra: str) -> None:
    launch(
        [
            f"data.path={dataset}",
            f"run_dir={run}",
            *SMALL_MODEL,
            "engine.micro_batch_size=8",
            "engine.global_batch_size=16",
            "steps=8",
            "checkpoint.interval=4",
            "lfr.schedule=random",
            *extra,
        ],
        nproc=1,
        launcher="python",
    )


def _weights(run: Path) -> dict[str, torch.Tensor]:
    (states,) = (run / "checkpoints" / "step_00000008").rglob("*model_states.pt")
    return torch.load(states, map_location="cpu", weights_only=False)["module"]


def test_probes_never_change_training_and_resume_exactly(planted_small, probe_set, tmp_path):
    plain, probed = tmp_path / "plain", tmp_path / "probed"
    _run(planted_small, plain)
    _run(planted_small, probed, f"lfr.probe_path={probe_set}", "lfr.probe_blocks=6")
    a, b = _weights(plain), _weights(probed)
    assert a.keys() == b.keys()
    tensors = [name for name in a if isinstance(a[name], torch.Tensor)]
    assert len(tensors) > 10
    for name in tensors:  # bit for bit: CPU fp32, no gradient, no RNG draw, no optimizer state from the probes
        assert torch.equal(a[name], b[name]), name

    arrays = load_arrays(probed / "checkpoints" / "step_00000008" / ARRAYS_FILE)
    table = LossTable.from_arrays(arrays)
    assert table.has_probes and len(table.probe_step) == 8 * 6
    assert np.array_equal(np.unique(table.probe_step), np.arange(8))
    # The step's probes are a function of (seed, step): the recorded ids are the ones the draw names.
    for step in (0, 5):
        assert np.array_equal(
            np.sort(table.probe_id[table.probe_step == step]), probe_ids(1234, step, _blocks(probe_set), 6)
        )
    assert np.isfinite(table.probe_relative).all() and table.probe_relative.std() > 0

    # Resumed at step 4, the run scores the same probes and records the same relative losses, bit for bit.
    resumed = tmp_path / "resumed"
    import shutil

    shutil.copytree(probed, resumed)
    shutil.rmtree(resumed / "checkpoints" / "step_00000008")
    (resumed / "checkpoints" / "latest").write_text("step_00000004")
    _run(planted_small, resumed, f"lfr.probe_path={probe_set}", "lfr.probe_blocks=6")
    again = load_arrays(resumed / "checkpoints" / "step_00000008" / ARRAYS_FILE)
    for name in ("probe_step", "probe_id", "probe_relative", "prev_step", "loss"):
        assert np.array_equal(again[name], arrays[name], equal_nan=True), name


def _blocks(prefix: str) -> int:
    from lfr_ds.lfr.probes import probe_set_blocks

    return probe_set_blocks(prefix, 64)


def test_probe_rows_are_split_from_the_gather_and_recorded_relative_to_the_batch():
    table = LossTable(10, 1, probes=True)
    rows = np.array([[3, 2.0, 64], [-1, 3.0, 64], [5, 4.0, 64], [-8, 1.5, 64]], dtype=np.float64)
    train_rows, probe_rows = split_probe_rows(rows)
    assert train_rows[:, 0].tolist() == [3, 5]
    table.update(train_rows, 7, probe_rows)
    assert table.ref[3] == 3.0  # the batch mean is the training blocks' alone
    assert table.probe_id.tolist() == [0, 7] and table.probe_step.tolist() == [7, 7]
    assert table.probe_relative.tolist() == [0.0, -1.5]
    table.update(train_rows[:1], 9)
    assert table.prev_step[3] == 7 and table.last_step[3] == 9
    back = LossTable.from_arrays(table.arrays())
    assert back.probe_relative.tolist() == [0.0, -1.5] and back.prev_step[3] == 7
    assert LossTable(10, 1).arrays().keys() == {"loss", "ref", "prev_relative", "seen", "last_step", "phase_loss"}


def test_auto_with_probes_drops_absorbed_blocks_and_replays_offline(planted_small, probe_set, tmp_path):
    """``@auto`` after a one-pass Learn, calibrated by the probes: it drops what the absorbed test flags, the
    manifest says how many and at which quantile, and lfr-rewrite replays the same kept set from the checkpoint."""
    import json

    from lfr_ds.data.dataset import open_dataset
    from lfr_ds.data.sample_index import read_manifest
    from lfr_ds.lfr import offline
    from lfr_ds.lfr.rewriter import read_kept_mask

    learn = -(-((open_dataset(planted_small).num_tokens - 1) // 64) // 16)  # 1ep = ceil(blocks / global batch)
    run = tmp_path / "run"
    launch(
        [
            f"data.path={planted_small}",
            f"run_dir={run}",
            *SMALL_MODEL,
            "engine.micro_batch_size=16",
            "engine.global_batch_size=16",
            f"steps={2 * learn + 4}",
            "lfr.schedule=learn:1ep,focus:1kp@auto,review:*",
            f"lfr.probe_path={probe_set}",
            "lfr.absorbed_alpha=0.2",
            f"checkpoint.interval={learn}",
        ],
        nproc=1,
        launcher="python",
    )
    focus = run / "index" / "phase_001_focus.npy"
    manifest = json.loads(focus.with_suffix(".json").read_text())
    assert manifest["start_step"] == learn
    assert manifest["dropped"] > 0 and manifest["absorbed_one_visit"] > 0
    assert manifest["dropped"] <= manifest["absorbed_one_visit"] + manifest["absorbed_two_visits"]
    assert manifest["auto_drop"]["alpha"] == 0.2 and np.isfinite(manifest["probe_quantile"])
    # One visit each, unseen text at that visit: about alpha of the blocks.
    assert 0.05 < manifest["absorbed_one_visit"] / manifest["eligible"] < 0.6

    # A pure function of the saved table: lfr-rewrite writes the same kept set from the boundary's checkpoint.
    assert offline.main([str(run / "checkpoints" / f"step_{learn:08d}"), "--out", str(tmp_path / "replay.npy")]) == 0
    replay = read_kept_mask(tmp_path / "replay.npy", read_manifest(tmp_path / "replay.npy"))
    assert np.array_equal(replay, read_kept_mask(focus, read_manifest(focus)))


def test_preprocess_splits_off_a_probe_set_of_whole_documents(webmix_dataset, tmp_path):
    """lfr-preprocess --probe-fraction: the probe documents leave the dataset whole, both halves are complete
    datasets, and a split that would take more than half the tokens is refused."""
    import shutil

    from lfr_ds.data.dataset import open_dataset
    from lfr_ds.data.probe_split import probe_documents, split_probe_set
    from lfr_ds.errors import UserError

    prefix = str(tmp_path / "train")
    for ext in (".bin", ".idx", ".meta.json", ".doc_source.npy"):
        shutil.copy(f"{webmix_dataset}{ext}", prefix + ext)
    before = open_dataset(prefix)
    docs = {bytes(np.asarray(before.indexed[i]).tobytes()) for i in range(before.num_documents)}
    split = split_probe_set(prefix, 0.01, seed=3)
    train, probe = open_dataset(prefix), open_dataset(split["probe_prefix"])  # checksums and sidecars verified
    assert train.num_documents + probe.num_documents == before.num_documents
    assert train.num_tokens + probe.num_tokens == before.num_tokens
    assert 512 * 1025 <= probe.num_tokens < 0.1 * before.num_tokens
    train_docs = {bytes(np.asarray(train.indexed[i]).tobytes()) for i in range(train.num_documents)}
    probe_docs = {bytes(np.asarray(probe.indexed[i]).tobytes()) for i in range(probe.num_documents)}
    # Whole documents: a text in both halves is one the corpus itself holds twice (web text repeats).
    assert train_docs | probe_docs == docs and len(train_docs & probe_docs) <= before.num_documents - len(docs)
    assert probe.meta["probe_split"] == {"role": "probe", "fraction": 0.01, "seed": 3}
    with pytest.raises(UserError, match="more than half"):
        probe_documents(np.full(100, 10_000), 0.01, 0)


def test_probes_switched_on_at_a_resume_start_their_records_there():
    table = LossTable.from_arrays(LossTable(4, 1).arrays())
    table.update(np.array([[1, 2.0, 64]]), 3, np.array([[-2, 2.5, 64]]))
    assert table.has_probes and table.probe_id.tolist() == [1] and table.prev_step.tolist() == [-1, -1, -1, -1]
