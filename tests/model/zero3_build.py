"""Run under torchrun by test_partitioned_build.py: build the tiny GPT partitioned (ZeRO-3's zero.Init) and
unpartitioned from the same seed, gather the first, compare them bit for bit, and write what rank 0 saw."""

from __future__ import annotations

import hashlib
import json
import sys

import torch

from lfr_ds.config import ModelConfig
from lfr_ds.launch import import_deepspeed, init_distributed
from lfr_ds.model.compat import setup_megatron
from lfr_ds.model.gpt import build_model, parameter_counts

SEED = 1234


def main(out: str) -> None:
    info = init_distributed("gloo")
    deepspeed = import_deepspeed()
    cfg = ModelConfig(preset="tiny", vocab_size=8000)
    zero3 = {
        "zero_optimization": {"stage": 3, "stage3_param_persistence_threshold": 1000},
        "train_batch_size": info.world_size,
        "train_micro_batch_size_per_gpu": 1,
    }
    setup_megatron(SEED)
    partitioned = build_model(cfg, bf16=False, zero3=zero3)
    counts = parameter_counts(partitioned)
    gathered, digest = {}, hashlib.sha256()
    for name, p in partitioned.named_parameters():
        with deepspeed.zero.GatheredParameters(p):
            gathered[name] = p.data.clone()
        digest.update(gathered[name].numpy().tobytes())
    setup_megatron(SEED)
    whole = build_model(cfg, bf16=False)
    mismatched = [n for n, p in whole.named_parameters() if not torch.equal(p.data, gathered[n])]
    if info.rank == 0:
        result = {
            "names": sorted(gathered),
            "whole_names": sorted(n for n, _ in whole.named_parameters()),
            "mismatched": mismatched,
            "digest": digest.hexdigest(),
            "counts": counts,
            "whole_counts": parameter_counts(whole),
        }
        with open(out, "w") as f:
            json.dump(result, f)


if __name__ == "__main__":
    main(sys.argv[1])
