#!/usr/bin/env python3
"""Where one training step's wall time goes, and every device-to-host sync it makes (issue 28).

Runs ``lfr_ds.train.train`` in this process (1 rank, fp32, ZeRO-2 unless ``--zero 3``) on random tokens, at
the micro shape (the demo's model: 2 layers, 128 wide, seq 64, vocab 512, batch 32) and the tiny shape
(4 layers, 256 wide, seq 256, vocab 8,192, batch 16), with the random and the LFR (``recipe``) schedules.
The functions a step calls are wrapped with timers that count exclusive time (a part called inside another
is taken out of its caller's), so the parts and ``other`` (the loop itself) add up to the step's wall time:

    data       the sampler and the block reads          forward    the model's forward and the per-block losses
    backward   DeepSpeed's backward (ZeRO's gradient    optimizer  DeepSpeed's step: clipping, AdamW, ZeRO
               hooks and reduction included)                       copies (its LR scheduler step taken out)
    gather     the step's rows and their all-gather     table      the loss table update
    guard      the guard's loss and gradient checks     metrics    the console/TensorBoard metrics and trace
    lr         the LR lookup and the scheduler's step   probes     probe scoring (none here: no probe set)
    boundary   phase boundaries (the rewriter)

The syncs: while measuring, ``Tensor.item``, ``.cpu``, ``.tolist``, ``.numpy``, ``float()``, ``int()`` and
``bool()`` of a tensor are counted with their call site (the first frame outside torch). On CPU none of them
waits for anything; on a GPU each ``.item``/``.cpu``/``.tolist``/``float``/``int``/``bool`` of a device tensor
is a device-to-host sync, and ``.numpy`` of a host tensor is free (listed because it is where a step reads rows).

    .venv/bin/python bench/step_profile.py [--shapes micro,tiny] [--schedules random,lfr] [--steps 40]

Last stdout line: ``{"results": [{"shape", "schedule", "zero", "step_ms", "parts_ms": {...}, "syncs": [...]}]}``.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
import warnings
from collections import Counter, defaultdict

import torch
from reference import SHAPES, Shape
from runs import random_token_dataset

PARTS = ("data", "forward", "backward", "optimizer", "gather", "table", "guard", "metrics", "lr", "probes", "boundary")
SYNC_METHODS = ("item", "cpu", "tolist", "numpy", "__float__", "__int__", "__bool__")


def overrides(shape: Shape, schedule: str, data: str, run_dir: str, zero: int, steps: int) -> list[str]:
    """lfr-train settings for ``shape``: fp32, 1 rank, no checkpoints, TensorBoard on as a user would have it."""
    return [
        f"data.path={data}",
        f"run_dir={run_dir}",
        f"model.vocab_size={shape.vocab_size}",
        "model.preset=null",
        f"model.num_layers={shape.num_layers}",
        f"model.hidden_size={shape.hidden_size}",
        f"model.num_attention_heads={shape.num_attention_heads}",
        f"model.seq_length={shape.seq_length}",
        f"engine.micro_batch_size={shape.batch}",
        f"engine.global_batch_size={shape.batch}",
        f"engine.zero_stage={zero}",
        "engine.precision=fp32",
        f"lfr.schedule={'recipe' if schedule == 'lfr' else 'random'}",
        f"steps={steps}",
        "optim.warmup_steps=5",
        "checkpoint.interval=0",
        "log.interval=20",
        "log.progress_bar=false",
    ]


class Clock:
    """Exclusive wall time per part: a wrapped call's time goes to its part, less its wrapped callees'."""

    def __init__(self) -> None:
        self.total: dict[str, float] = defaultdict(float)
        self._stack: list[list[float]] = []  # per open call: [time spent in nested wrapped calls]
        self.on = False

    def wrap(self, owner: object, name: str, part: str) -> None:
        fn = getattr(owner, name)
        clock = self

        def timed(*args, **kwargs):
            if not clock.on:
                return fn(*args, **kwargs)
            clock._stack.append([0.0])
            t0 = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                spent = time.perf_counter() - t0
                nested = clock._stack.pop()[0]
                clock.total[part] += spent - nested
                if clock._stack:
                    clock._stack[-1][0] += spent

        setattr(owner, name, timed)


def instrument(clock: Clock) -> None:
    """Wrap what a step calls, by part (before ``train`` builds anything, so bound methods see the wrappers)."""
    from deepspeed.runtime.engine import DeepSpeedEngine

    import lfr_ds.model.gpt as gpt
    import lfr_ds.train as train
    from lfr_ds.data.blend import BlendView
    from lfr_ds.data.sampler import DataParallelSampler
    from lfr_ds.guard import Guard
    from lfr_ds.lfr.loss_table import LossTable
    from lfr_ds.lfr.probes import Probes
    from lfr_ds.metrics import Metrics

    for owner, name, part in [
        (BlendView, "batch", "data"),
        (DataParallelSampler, "micro_batches", "data"),
        (gpt, "per_block_loss", "forward"),
        (DeepSpeedEngine, "backward", "backward"),
        (DeepSpeedEngine, "step", "optimizer"),
        (DeepSpeedEngine, "get_global_grad_norm", "optimizer"),
        (train, "step_rows", "gather"),
        (train, "gather_step", "gather"),
        (LossTable, "update", "table"),
        (LossTable, "end_phase", "table"),
        (Guard, "check_loss", "guard"),
        (Guard, "check_grad_norm", "guard"),
        (Guard, "skips", "guard"),
        (Metrics, "step", "metrics"),
        (Metrics, "loss_table", "metrics"),
        (train, "_step_stats", "metrics"),
        (train, "_trace_step", "metrics"),
        (DeepSpeedEngine, "get_lr", "lr"),
        (torch.optim.lr_scheduler.LambdaLR, "step", "lr"),
        (Probes, "score", "probes"),
        (train, "_enter_phase", "boundary"),
        (Metrics, "phase_start", "boundary"),
    ]:
        clock.wrap(owner, name, part)


class Syncs:
    """Counts host reads of tensors by call site while ``on``."""

    def __init__(self) -> None:
        self.sites: Counter[tuple[str, str]] = Counter()
        self.on = False
        for name in SYNC_METHODS:
            self._wrap(name)

    def _wrap(self, name: str) -> None:
        fn = getattr(torch.Tensor, name)
        syncs = self

        def counted(t, *args, **kwargs):
            if syncs.on:
                syncs.on = False  # torch's own frames below may read tensors too: count the outermost only
                try:
                    syncs.sites[(name.strip("_"), _call_site())] += 1
                finally:
                    syncs.on = True
            return fn(t, *args, **kwargs)

        setattr(torch.Tensor, name, counted)


def _call_site() -> str:
    """``package/file.py:line (function)`` of the first frame outside torch and this script."""
    frame = sys._getframe(2)
    while frame is not None:
        path = frame.f_code.co_filename
        if "/torch/" not in path and not path.endswith("step_profile.py"):
            short = path.split("site-packages/")[-1].split("/w28/")[-1]
            for root in ("lfr_ds/", "deepspeed/", "megatron/"):
                if root in short:
                    short = short[short.index(root) :]
            return f"{short}:{frame.f_lineno} ({frame.f_code.co_name})"
        frame = frame.f_back
    return "?"


def profile(shape_name: str, schedule: str, data: str, tmp: str, args: argparse.Namespace) -> dict:
    """Run ``args.warmup`` steps, then time ``args.steps`` more part by part; returns one result row."""
    from lfr_ds.config import load_config
    from lfr_ds.train import train

    shape = SHAPES[shape_name]
    run_dir = f"{tmp}/{shape_name}-{schedule}-z{args.zero}"
    total = args.warmup + args.steps
    cfg = load_config(None, overrides(shape, schedule, data, run_dir, args.zero, total))
    clock, syncs = args.clock, args.syncs
    clock.total.clear()
    syncs.sites.clear()
    run = train(cfg)
    for _ in range(args.warmup):
        next(run)
    clock.on = syncs.on = True
    t0 = time.perf_counter()
    for _ in range(args.steps):
        next(run)
    wall = time.perf_counter() - t0
    clock.on = syncs.on = False
    run.close()
    n = args.steps
    parts = {p: 1000 * clock.total.get(p, 0.0) / n for p in PARTS}
    parts["other"] = 1000 * wall / n - sum(parts.values())
    return {
        "shape": shape_name,
        "schedule": schedule,
        "zero": args.zero,
        "steps": n,
        "step_ms": round(1000 * wall / n, 2),
        "parts_ms": {k: round(v, 3) for k, v in parts.items()},
        "syncs_per_step": [
            {"what": what, "site": site, "per_step": round(count / n, 2)}
            for (what, site), count in sorted(syncs.sites.items(), key=lambda kv: -kv[1])
        ],
    }


def print_table(row: dict) -> None:
    print(
        f"\n{row['shape']} / {row['schedule']} / ZeRO-{row['zero']}: {row['step_ms']:.1f} ms a step "
        f"({row['steps']} steps)",
        file=sys.stderr,
    )
    for part, ms in row["parts_ms"].items():
        print(f"  {part:<10} {ms:8.2f} ms  {100 * ms / row['step_ms']:5.1f}%", file=sys.stderr)
    print("  host reads of tensors a step (a device-to-host sync on a GPU, except .numpy):", file=sys.stderr)
    for s in row["syncs_per_step"]:
        print(f"    {s['per_step']:6.2f} x .{s['what']:<7} {s['site']}", file=sys.stderr)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--shapes", default="micro,tiny")
    p.add_argument("--schedules", default="random,lfr")
    p.add_argument("--steps", type=int, default=40, help="steps measured per run, after the warm-up")
    p.add_argument("--warmup", type=int, default=10)
    p.add_argument("--zero", type=int, default=2, choices=(2, 3))
    args = p.parse_args()
    warnings.filterwarnings("ignore")
    args.clock, args.syncs = Clock(), Syncs()
    instrument(args.clock)
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        datasets = {}
        for shape_name in args.shapes.split(","):
            vocab = SHAPES[shape_name].vocab_size
            if vocab not in datasets:  # small: LFR's phase boundaries fall inside the measured steps
                datasets[vocab] = random_token_dataset(f"{tmp}/tokens{vocab}", vocab, 15_000)
            for schedule in args.schedules.split(","):
                row = profile(shape_name, schedule, datasets[vocab], tmp, args)
                print_table(row)
                results.append(row)
    print(json.dumps({"results": results}))


if __name__ == "__main__":
    main()
