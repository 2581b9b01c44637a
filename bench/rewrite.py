#!/usr/bin/env python3
"""Wall time and peak memory of one Focus rewrite at a phase boundary, from a synthetic loss table.

Per size, in a fresh process (so peak RSS is that size's alone): fill a :class:`LossTable` as a Learn
phase of N blocks would leave it (untimed): 12 latent sources, each with its own loss level and
learning speed; 98% of blocks seen, a third of those twice (so they have a trajectory); with
``--sketch-dim`` > 0, a hidden-state sketch that carries the source. Then time exactly what rank 0 does
at the boundary: :meth:`lfr_ds.lfr.rewriter.Rewriter.prepare` with the default :class:`LFRConfig`
(digest of the table, features, hierarchical clusters, capped drop of 50%, perplexity-weighted draw of
N // 2 samples, the ``.npy`` + manifest + kept mask written atomically, read back and checksummed).

``seconds`` is that rewrite alone. ``peak_rss_gb`` (10⁹ bytes) is the whole child process, so it
includes the loss table itself (``table_gb``), which training holds in memory anyway. Stage times go to
stderr. The last stdout line is
``{"results": [{"blocks": N, "sketch_dim": d, "seconds": ..., "peak_rss_gb": ..., "table_gb": ...}, ...]}``.
Target: 1e8 blocks in under 60 s and 6 GB on 2 cores.

    .venv/bin/python bench/rewrite.py [--sizes 1e6,1e7,1e8] [--sketch-dim 0] | --quick
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from lfr_ds.config import LFRConfig
from lfr_ds.lfr.loss_table import LossTable
from lfr_ds.lfr.rewriter import Rewriter
from lfr_ds.lfr.schedule import Phase

N_SOURCES = 12
SEEN = 0.98  # the rest were never seen: Focus keeps them as a cluster of their own
TWICE = 1 / 3  # of the seen blocks, those with a previous visit too
GLOBAL_BATCH = 512
NUM_PHASES = 5  # learn, focus, review, focus, review: the table's trajectory has one column each
SLICE = 1 << 20


def synthetic_table(n: int, sketch_dim: int, seed: int = 0) -> tuple[LossTable, np.ndarray]:
    """A table as Learn leaves it, and each block's source id. Built in slices: no full-length temporaries."""
    rng = np.random.default_rng(seed)
    level = rng.uniform(-1.5, 1.5, N_SOURCES).astype(np.float32)  # relative difficulty of each source
    speed = rng.uniform(0.0, 0.3, N_SOURCES).astype(np.float32)
    axes = rng.standard_normal((N_SOURCES, max(sketch_dim, 1))).astype(np.float32)
    table = LossTable(n, NUM_PHASES, sketch_dim)
    source = np.empty(n, dtype=np.uint8)
    for s in range(0, n, SLICE):
        m = min(SLICE, n - s)
        sl = slice(s, s + m)
        src = rng.integers(0, N_SOURCES, m)
        source[sl] = src
        ref = rng.uniform(3.0, 6.0, m).astype(np.float32)  # the batch's mean loss when the block was seen
        relative = level[src] + 0.5 * rng.standard_normal(m, dtype=np.float32)
        seen = rng.random(m, dtype=np.float32) < SEEN
        twice = seen & (rng.random(m, dtype=np.float32) < TWICE)
        table.loss[sl] = np.where(seen, ref + relative, np.nan)
        table.ref[sl] = np.where(seen, ref, np.nan)
        table.prev_relative[sl] = np.where(twice, relative + speed[src], np.nan)
        table.seen[sl] = seen.astype(np.int32) + twice
        table.last_step[sl] = np.where(seen, rng.integers(0, max(1, n // GLOBAL_BATCH), m), -1)
        table.phase_loss[0, sl] = table.loss[sl]
        if table.sketch is not None:
            table.sketch[sl] = axes[src] + 0.5 * rng.standard_normal((m, sketch_dim), dtype=np.float32)
    return table, source


def child(n: int, sketch_dim: int) -> None:
    print(f"  load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores", file=sys.stderr, flush=True)
    t0 = time.perf_counter()
    table, source = synthetic_table(n, sketch_dim)
    table_gb = sum(a.nbytes for a in table.arrays().values()) / 1e9
    print(
        f"  synthetic table {table_gb:.2f} GB in {time.perf_counter() - t0:.1f}s (untimed)", file=sys.stderr, flush=True
    )
    steps = max(1, n // 2 // GLOBAL_BATCH)
    phase = Phase(1, "focus", start=steps, steps=steps, drop=0.5)
    with tempfile.TemporaryDirectory() as run_dir:
        rewriter = Rewriter(
            Path(run_dir),
            LFRConfig(),
            seed=1,
            dataset="synthetic",
            sources=[f"s{i}" for i in range(N_SOURCES)],
            block_source=source,
            seq_length=1024,
            global_batch=GLOBAL_BATCH,
        )
        t0 = time.perf_counter()
        order, manifest = rewriter.prepare(phase, table)
        seconds = time.perf_counter() - t0
    assert len(order) == steps * GLOBAL_BATCH and manifest.kept < n
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / 1e9  # Linux reports KiB
    row = {
        "blocks": n,
        "sketch_dim": sketch_dim,
        "seconds": round(seconds, 2),
        "peak_rss_gb": round(rss, 2),
        "table_gb": round(table_gb, 2),
    }
    print(json.dumps(row))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sizes", default="1e6,1e7,1e8", help="comma-separated block counts (default 1e6,1e7,1e8)")
    p.add_argument(
        "--sketch-dim",
        type=int,
        default=0,
        help="hidden-state sketch width in the table (default 0, training's default model.sketch_dim)",
    )
    p.add_argument("--quick", action="store_true", help="only 1e6 and 1e7")
    p.add_argument("--child", type=int, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child is not None:
        child(args.child, args.sketch_dim)
        return
    sizes = [10**6, 10**7] if args.quick else [int(float(s)) for s in args.sizes.split(",")]
    results = []
    for n in sizes:
        print(f"rewrite of {n:,} blocks, sketch {args.sketch_dim} ...", file=sys.stderr, flush=True)
        run = subprocess.run(
            [sys.executable, str(Path(__file__).resolve()), "--child", str(n), "--sketch-dim", str(args.sketch_dim)],
            stdout=subprocess.PIPE,
            text=True,
            check=True,
        )
        row = json.loads(run.stdout.strip().splitlines()[-1])
        print(
            f"  {row['seconds']:.1f}s, peak RSS {row['peak_rss_gb']:.2f} GB (table {row['table_gb']:.2f} GB)",
            file=sys.stderr,
            flush=True,
        )
        results.append(row)
    print(json.dumps({"results": results}))


if __name__ == "__main__":
    main()
