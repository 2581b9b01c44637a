#!/usr/bin/env python3
"""Probe cost (issue 21): the share of a training step that scoring its probe blocks adds, at the small preset.

The small preset's model and batch (``lfr-compare --preset small``: the tiny GPT, seq 256, global batch
16 in one micro-batch, fp32, 1 thread), ``lfr.probe_blocks`` probes a step (default 1). One process
builds the engine once and times :func:`lfr_ds.train.train_step` with and without probes, interleaved,
plus the probe forward (:meth:`Probes.score`) alone; medians, so the other processes on a shared machine
move both alike. Random tokens: the cost depends on the shapes only. Last stdout line:
``{"probe_blocks": p, "step_s": ..., "step_with_probes_s": ..., "probe_s": ..., "probe_share": ..., "ab_share": ...}``
(``probe_share`` = probe forward / step without probes; ``ab_share`` = the interleaved A/B difference).

    .venv/bin/python bench/probes.py [--steps 40] [--probe-blocks 1]

**The arithmetic.** A forward is ~1/3 of a training step's FLOPs per block (2N forward + 4N backward per
token), so p probes in a global batch of G cost p / (3G) of the step's compute. At the small preset (G = 16)
that is 2.1% at p = 1 and 17% at p = 8 (measured: 15.5% at p = 8), which is why the default is 1: one probe
a step per rank. For GPT-2 1.5B (N = 1.56e9,
seq 1024) with G = 512 and p = 8 (one probe per rank on 8 GPUs): 8 / 1536 = 0.52% of the compute, a
forward of one block per rank, 2 × 1.56e9 × 1024 = 3.2 TFLOP, ~8 ms at 400 TFLOP/s, against a step of
512 × 1024 × 6 × 1.56e9 / (8 × 400e12 × 0.4 MFU) ≈ 3.8 s; the gather grows by 8 rows of 24 B.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from runs import random_token_dataset

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--steps", type=int, default=40, help="timed steps of each kind (after 3 warm-up steps)")
    p.add_argument("--probe-blocks", type=int, default=1, help="probes a step (default 1, lfr.probe_blocks's default)")
    args = p.parse_args()
    os.environ["OMP_NUM_THREADS"] = "1"  # one process, no launcher: init_distributed sets its rank and address
    import torch

    torch.set_num_threads(1)
    from lfr_ds.config import load_config
    from lfr_ds.data.blend import BlendView
    from lfr_ds.guard import Guard
    from lfr_ds.launch import init_distributed
    from lfr_ds.lfr.probes import Probes
    from lfr_ds.lfr.schedule import phase_at
    from lfr_ds.model.compat import setup_megatron
    from lfr_ds.train import Stepper, _build, preflight, train_step

    with tempfile.TemporaryDirectory() as tmp:
        data = random_token_dataset(f"{tmp}/train", 4096, 600_000)
        probe = random_token_dataset(f"{tmp}/probe", 4096, 100_000, seed=1)
        cfg = load_config(
            None,
            [
                f"data.path={data}",
                "model.vocab_size=4096",
                "model.preset=tiny",
                f"run_dir={tmp}/run",
                "engine.micro_batch_size=16",
                "engine.global_batch_size=16",
                "engine.precision=fp32",
                "optim.lr=2e-3",
                "steps=1000",
                f"lfr.probe_path={probe}",
                f"lfr.probe_blocks={args.probe_blocks}",
            ],
        )
        plan = preflight(cfg)
        info = init_distributed(cfg.engine.backend)
        setup_megatron(cfg.seed)
        blocks = BlendView(plan.dataset, plan.model.seq_length, cfg.data.seed)
        _, engine = _build(cfg, plan)
        probes = Probes.for_run(cfg, plan.model.seq_length, 0, 1, None)
        runs = {
            kind: Stepper(
                engine, info.device, "", Guard(cfg.train, plan.model.vocab_size), probes if kind == "probes" else None
            )
            for kind in ("plain", "probes")
        }
        phase = phase_at(plan.phases, 0)
        rng = np.random.default_rng(0)
        times: dict[str, list[float]] = {"plain": [], "probes": [], "probe": []}
        for i in range(args.steps + 3):
            for kind in ("plain", "probes"):
                ids = rng.choice(blocks.num_blocks, 16, replace=False)
                t0 = time.perf_counter()
                train_step(runs[kind], [(ids, blocks.batch(ids))], i, phase)
                if i >= 3:
                    times[kind].append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            probes.score(engine, i, info.device)
            if i >= 3:
                times["probe"].append(time.perf_counter() - t0)
    step, with_probes, probe_s = (statistics.median(times[k]) for k in ("plain", "probes", "probe"))
    result = {
        "probe_blocks": probes.per_step,
        "global_batch": 16,
        "model": "tiny",
        "steps": args.steps,
        "step_s": round(step, 5),
        "step_with_probes_s": round(with_probes, 5),
        "probe_s": round(probe_s, 5),
        "probe_share": round(probe_s / step, 4),
        "ab_share": round(with_probes / step - 1, 4),
    }
    print(
        f"step {step * 1e3:.1f} ms, with probes {with_probes * 1e3:.1f} ms, probe forward {probe_s * 1e3:.1f} ms "
        f"({result['probe_share']:.1%} of a step)",
        file=sys.stderr,
    )
    print(json.dumps(result))


if __name__ == "__main__":
    main()
