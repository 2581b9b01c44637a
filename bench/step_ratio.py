#!/usr/bin/env python3
"""Throughput ratios of lfr-ds's training step, each from one process that alternates its two sides (issue 28).

Both sides live in this process and alternate step by step, ``--steps`` steps each a round, ``--rounds``
rounds (the side that goes first swaps every round), after ``--warmup`` steps each, so load from other jobs
on the machine falls on both. Beside the tokens/s ratio (wall time), ``cpu_ratio`` is the same ratio in CPU
seconds of the process: the work a step costs, nearly blind to how busy the machine is. lfr-ds runs
``lfr_ds.train.train`` (1 rank, fp32) on random tokens with TensorBoard on; a step is timed from one
yield to the next, so the data reads, the loss table, the guard, the metrics and phase boundaries all count.

    --compare reference   lfr-ds (ZeRO-2, random order) against the plain PyTorch loop (bench/reference.py)
    --compare zero3       lfr-ds ZeRO-3 against ZeRO-2 (1 process: nothing to partition)
    --compare lfr         lfr-ds with the LFR schedule (``recipe``) against random order, both ZeRO-2

    .venv/bin/python bench/step_ratio.py --shape micro --compare reference [--rounds 3 --steps 30]

Last stdout line: ``{"shape", "compare", "a", "b", "rounds": [{"a_tps", "b_tps", "ratio", "cpu_ratio"}], "min",
"max", "cpu_min", "cpu_max", "a_tps", "b_tps"}`` (ratio = a's tokens/s over b's).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
import warnings
from collections.abc import Callable

from reference import SHAPES, ReferenceLoop, Shape
from runs import random_token_dataset
from step_profile import overrides

#: The two sides of each comparison: (a, b), each ``reference`` or lfr-ds's ``(zero stage, schedule)``.
COMPARISONS = {
    "reference": ((2, "random"), "reference"),
    "zero3": ((3, "random"), (2, "random")),
    "lfr": ((2, "lfr"), (2, "random")),
}


def side(spec, shape: Shape, data: str, run_dir: str, steps: int, extra: list[str]) -> Callable[[], None]:
    """A function that runs one training step of ``spec``."""
    if spec == "reference":
        loop = ReferenceLoop(shape)
        return loop.step
    from lfr_ds.config import load_config
    from lfr_ds.train import train

    zero, schedule = spec
    cfg = load_config(None, [*overrides(shape, schedule, data, run_dir, zero, steps), *extra])
    run = train(cfg)
    return lambda: next(run)


def timed(step: Callable[[], None], n: int) -> tuple[float, float]:
    """Wall and CPU seconds (all of this process's threads) of ``n`` steps."""
    t0, c0 = time.perf_counter(), time.process_time()
    for _ in range(n):
        step()
    return time.perf_counter() - t0, time.process_time() - c0


def one_round(a: Callable[[], None], b: Callable[[], None], steps: int, a_first: bool) -> dict:
    """``steps`` steps of each side, alternating step by step, so load that comes and goes falls on both."""
    spent = {"a": [0.0, 0.0], "b": [0.0, 0.0]}
    order = (("a", a), ("b", b)) if a_first else (("b", b), ("a", a))
    for _ in range(steps):
        for name, side_step in order:
            wall, cpu = timed(side_step, 1)
            spent[name][0] += wall
            spent[name][1] += cpu
    return spent


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--shape", default="micro", choices=sorted(SHAPES))
    p.add_argument("--compare", default="reference", choices=sorted(COMPARISONS))
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--steps", type=int, default=30, help="steps a side runs per turn")
    p.add_argument("--warmup", type=int, default=10)
    p.add_argument("--tokens", type=int, default=40_000, help="dataset size (sets the LFR phase lengths)")
    p.add_argument("overrides", nargs="*", help="lfr-train settings for both lfr-ds sides, e.g. model.compile=true")
    args = p.parse_args()
    warnings.filterwarnings("ignore")
    shape = SHAPES[args.shape]
    tokens_per_step = shape.batch * shape.seq_length
    total = args.warmup + args.rounds * args.steps
    with tempfile.TemporaryDirectory() as tmp:
        data = random_token_dataset(f"{tmp}/tokens", shape.vocab_size, args.tokens)
        a_spec, b_spec = COMPARISONS[args.compare]
        a = side(a_spec, shape, data, f"{tmp}/a", total, args.overrides)
        b = side(b_spec, shape, data, f"{tmp}/b", total, args.overrides)
        timed(a, args.warmup)
        timed(b, args.warmup)
        rounds = []
        for r in range(args.rounds):
            spent = one_round(a, b, args.steps, a_first=r % 2 == 0)  # neither side always goes first
            a_tps, b_tps = (args.steps * tokens_per_step / spent[k][0] for k in "ab")
            cpu_ratio = spent["b"][1] / spent["a"][1]  # CPU seconds per step, b's over a's: as a tok/s ratio
            rounds.append(
                {
                    "a_tps": round(a_tps, 1),
                    "b_tps": round(b_tps, 1),
                    "ratio": round(a_tps / b_tps, 4),
                    "cpu_ratio": round(cpu_ratio, 4),
                }
            )
            print(
                f"round {r + 1}: {a_tps:,.0f} vs {b_tps:,.0f} tok/s = {a_tps / b_tps:.3f} (CPU time {cpu_ratio:.3f})",
                file=sys.stderr,
            )
    ratios = [r["ratio"] for r in rounds]
    result = {
        "shape": args.shape,
        "compare": args.compare,
        "a": str(a_spec),
        "b": str(b_spec),
        "overrides": args.overrides,
        "rounds": rounds,
        "min": min(ratios),
        "max": max(ratios),
        "cpu_min": min(r["cpu_ratio"] for r in rounds),
        "cpu_max": max(r["cpu_ratio"] for r in rounds),
        "a_tps": round(sum(r["a_tps"] for r in rounds) / len(rounds), 1),
        "b_tps": round(sum(r["b_tps"] for r in rounds) / len(rounds), 1),
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
