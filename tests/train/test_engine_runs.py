"""The engine on 2 gloo ranks: ZeRO-2 and ZeRO-3 train, resume exactly, and the data order ignores world size."""

from __future__ import annotations

import numpy as np
from launch import STEPS, base_overrides, copy_run, launch, read_trace
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from lfr_ds.config import ModelConfig
from lfr_ds.data.blocks import BlockView
from lfr_ds.data.dataset import open_dataset
from lfr_ds.data.sample_index import read_sample_index
from lfr_ds.model.gpt import count_parameters


def _losses(run_dir):
    return np.array([t["loss"] for t in read_trace(run_dir)])


def _assert_learns(run_dir):
    losses = _losses(run_dir)
    assert len(losses) == STEPS
    assert np.isfinite(losses).all()
    # From ln(8192) = 9.0 at init; 12 steps of 8 blocks learn at least the unigram statistics.
    assert losses[:3].mean() > losses[-3:].mean() + 0.5, losses


def test_zero2_two_ranks_learns(zero2_run):
    run_dir, proc = zero2_run
    _assert_learns(run_dir)
    assert "2 rank(s)" in proc.stderr and "ZeRO-2" in proc.stderr


def test_zero3_two_ranks_learns_under_deepspeed_launcher(zero3_run):
    run_dir, proc = zero3_run
    _assert_learns(run_dir)
    assert "ZeRO-3" in proc.stderr


def test_zero3_start_line_counts_the_whole_model_and_the_rank_share(zero3_run):
    """Under ZeRO-3 the start line counts all of the model, and this rank's half."""
    n = count_parameters(ModelConfig(preset="tiny"), 8192)  # base_overrides' model, the webmix tokenizer's vocab
    assert f"({n / 1e6:.1f}M params, {-(-n // 2) / 1e6:.1f}M on rank 0)" in zero3_run[1].stderr


def test_zero2_and_zero3_see_the_same_blocks(zero2_run, zero3_run):
    a, b = read_trace(zero2_run[0]), read_trace(zero3_run[0])
    assert [t["ids"] for t in a] == [t["ids"] for t in b]


def test_resume_reproduces_losses_exactly(zero2_run, tmp_path, webmix_dataset):
    run_dir, _ = zero2_run
    resumed = copy_run(run_dir, tmp_path / "resumed", "step_00000006")
    proc = launch(base_overrides(webmix_dataset, resumed, **{"engine.zero_stage": 2}), nproc=2)
    assert "resumed from" in proc.stderr
    full, again = read_trace(run_dir), read_trace(resumed)
    assert [t["step"] for t in again] == list(range(1, STEPS + 1))
    # Bit for bit: CPU fp32, same reduction order, RNG and LR scheduler restored.
    assert [t["losses"] for t in again] == [t["losses"] for t in full]


def test_one_and_two_ranks_consume_the_same_global_order(zero2_run, tmp_path, webmix_dataset):
    one = tmp_path / "one"
    launch(
        base_overrides(webmix_dataset, one, **{"engine.zero_stage": 2, "checkpoint.interval": 0}),
        nproc=1,
        launcher="python",
    )
    a, b = read_trace(zero2_run[0]), read_trace(one)
    assert [t["ids"] for t in a] == [t["ids"] for t in b]
    # Same model and data; only the all-reduce order differs, so losses agree to float tolerance.
    np.testing.assert_allclose(_losses(one), _losses(zero2_run[0]), rtol=1e-4)


def test_order_is_the_phase_index_file(zero2_run, webmix_dataset):
    run_dir, _ = zero2_run
    ds = open_dataset(str(webmix_dataset))
    order, manifest = read_sample_index(run_dir / "index" / "phase_000_random.npy", dataset=ds.fingerprint)
    assert manifest.kind == "random" and manifest.length == STEPS * 8
    view = BlockView(ds, 256, 1234)
    # The first epoch of a random phase is a permutation: in range, no repeats.
    assert int(order.max()) < view.num_blocks and len(set(order.tolist())) == len(order)
    trace = read_trace(run_dir)
    assert np.array_equal(np.concatenate([t["ids"] for t in trace]), order[: STEPS * 8])


def test_checkpoints_kept_and_complete(zero2_run):
    ckpts = zero2_run[0] / "checkpoints"
    assert (ckpts / "latest").read_text() == f"step_{STEPS:08d}"
    tags = sorted(p.name for p in ckpts.iterdir() if p.is_dir())
    assert tags == ["step_00000006", f"step_{STEPS:08d}"]
    for tag in tags:
        assert (ckpts / tag / "lfr" / "state.json").is_file()
        assert (ckpts / tag / "lfr" / "arrays.npz").is_file()


TB_SCALARS = {
    "lm loss",
    "lm loss ppl",
    "learning-rate",
    "grad-norm",
    "loss-scale",
    "samples",
    "tokens",
    "batch-size",
    "throughput(tps)",
    "tflops",
    "iteration-time",
    "mem-max-rss-bytes",
    "lm loss vs samples",
    "lm loss vs tokens",
    "learning-rate vs samples",
    "learning-rate vs tokens",
}


def test_tensorboard_has_every_scalar(zero2_run):
    acc = EventAccumulator(str(zero2_run[0] / "tb"))
    acc.Reload()
    tags = set(acc.Tags()["scalars"])
    assert tags >= TB_SCALARS, TB_SCALARS - tags
    assert "mfu(%)" not in tags  # a CPU has no peak to divide by (tests/train/test_metrics.py)
    loss = acc.Scalars("lm loss")
    assert [e.step for e in loss] == [3, 6, 9, 12]
    vs_tokens = acc.Scalars("lm loss vs tokens")
    assert [e.step for e in vs_tokens] == [3 * 8 * 256, 6 * 8 * 256, 9 * 8 * 256, 12 * 8 * 256]
    lr = [e.value for e in acc.Scalars("learning-rate")]
    assert lr[0] > lr[-1] > 0  # cosine decay towards the floor
