"""Issue 28's faster step trains on the same batches to the same losses, bit for bit, as the plain path it
replaces, each pair run here side by side: the batches read ahead (``data.prefetch``) or each step's own, and
ZeRO-3 on one rank with every parameter resident (the auto ds_config) or partitioned as on many ranks."""

from __future__ import annotations

import json

import pytest
from corpora import SMALL_MODEL, planted
from launch import launch, read_trace

from lfr_ds.config import load_config
from lfr_ds.engine import DS_CONFIG_DIR, PERSIST_ALL, build_ds_config


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> str:
    return planted(tmp_path_factory, 30, "planted_step_paths")  # ~420 blocks: 13 steps an epoch


def _run(corpus: str, run_dir, *extra: str) -> list[dict]:
    launch(
        [
            f"data.path={corpus}",
            f"run_dir={run_dir}",
            *SMALL_MODEL,
            "engine.micro_batch_size=16",  # 2 micro-batches a step: accumulation reads a step's batches as one
            "engine.global_batch_size=32",
            "steps=14",
            "lfr.schedule=learn:8,focus:*@0.5",  # a phase boundary: a new sampler mid-run
            "checkpoint.interval=0",
            "log.trace_blocks=true",
            *extra,
        ],
        nproc=1,
        launcher="python",
    )
    return read_trace(run_dir)


def test_prefetched_batches_train_to_the_same_losses(corpus, tmp_path):
    ahead = _run(corpus, tmp_path / "ahead")
    own = _run(corpus, tmp_path / "own", "data.prefetch=false")
    assert len(ahead) == 14
    assert [t["ids"] for t in ahead] == [t["ids"] for t in own]
    assert [t["losses"] for t in ahead] == [t["losses"] for t in own]


def test_zero3_on_one_rank_keeps_parameters_resident_with_the_same_losses(corpus, tmp_path):
    partitioned = json.loads((DS_CONFIG_DIR / "zero3_cpu.json").read_text())
    partitioned["zero_optimization"]["stage3_param_persistence_threshold"] = 0  # every parameter gathered per module
    (tmp_path / "zero3.json").write_text(json.dumps(partitioned))
    resident = _run(corpus, tmp_path / "resident", "engine.zero_stage=3")
    gathered = _run(corpus, tmp_path / "gathered", "engine.zero_stage=3", f"engine.ds_config={tmp_path / 'zero3.json'}")
    assert [t["losses"] for t in resident] == [t["losses"] for t in gathered]


@pytest.mark.parametrize(("zero", "world_size", "ds_config", "resident"), [(3, 1, "auto", True), (3, 2, "auto", False)])
def test_only_one_rank_keeps_every_parameter_resident(zero, world_size, ds_config, resident, webmix_dataset):
    cfg = load_config(
        None, [f"data.path={webmix_dataset}", f"engine.zero_stage={zero}", f"engine.ds_config={ds_config}"]
    )
    threshold = build_ds_config(cfg, world_size, bf16=False)["zero_optimization"]["stage3_param_persistence_threshold"]
    assert (threshold == PERSIST_ALL) == resident


def test_a_users_ds_config_is_left_as_it_is(webmix_dataset):
    user = DS_CONFIG_DIR / "zero3_cpu.json"
    cfg = load_config(None, [f"data.path={webmix_dataset}", "engine.zero_stage=3", f"engine.ds_config={user}"])
    ds = build_ds_config(cfg, 1, bf16=False)
    assert ds["zero_optimization"]["stage3_param_persistence_threshold"] == 100_000


def test_a_compare_run_recorded_before_data_prefetch_existed_is_reused():
    from lfr_ds.compare.runs import identity

    def rec(**data) -> dict:
        config = {"run_dir": "/out/lfr-seed1", "data": {"seed": 1} | data, "lfr": {"schedule": "recipe"}, "model": {}}
        return {"config": config, "corpus": "abc", "threads": 2}

    assert identity(rec()) == identity(rec(prefetch=True)) == identity(rec(prefetch=False))
    assert identity(rec(seed=2)) != identity(rec())
