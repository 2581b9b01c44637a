#!/usr/bin/env python3
"""Wall time and peak memory of one Focus rewrite from a synthetic loss table of N blocks.

Per size, in a fresh process (so peak RSS is that size's alone): build a synthetic table (untimed), then
time the rewrite: standardise 4 trajectory-like features, ``hierarchical_clusters`` (32 clusters, 256
centroids), ``focus_keep_mask`` (capped, drop 0.5, cap 0.75), perplexity weights (T = 1), ``draw_order``
of N // 2 samples (clusters weighted by the mean perplexity of their kept blocks), and ``save_npy`` of
that order as uint32 (the sample-index dtype below 2³² blocks) into a temp dir. ``seconds`` is the rewrite alone; ``peak_rss_gb`` (10⁹ bytes) is the whole child process,
synthetic table included. Stage times go to stderr. Last stdout line:
``{"results": [{"blocks": N, "seconds": ..., "peak_rss_gb": ...}, ...]}``. Target: 1e8 blocks in under
60 s and 6 GB on 2 cores.

    .venv/bin/python bench/rewrite.py [--sizes 1e6,1e7,1e8 | --quick]
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

from lfr_ds.atomic import save_npy
from lfr_ds.lfr.cluster import hierarchical_clusters
from lfr_ds.lfr.select import draw_order, focus_keep_mask, perplexity_weights

N_CLUSTERS = 32
N_DOMAINS = 12  # latent sources in the synthetic data, each with its own loss level and learning speed
SEEN = 0.98  # blocks with a loss so far; the rest are never-seen and always kept
SLICE = 1 << 18  # rows per slice when building or standardising the table (small temporaries stay in cache)


def synthetic_table(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per block: raw features [n, 4] (last loss, mean loss, loss slope, log loss variance), the score
    (last loss; NaN if never seen) and the seen mask. Built in slices, all float32."""
    rng = np.random.default_rng(seed)
    base = rng.uniform(2.5, 7.0, N_DOMAINS).astype(np.float32)
    speed = rng.uniform(0.0, 0.3, N_DOMAINS).astype(np.float32)
    feats = np.empty((n, 4), dtype=np.float32)
    seen = np.empty(n, dtype=bool)
    for s in range(0, n, SLICE):
        m = min(SLICE, n - s)
        dom = rng.integers(0, N_DOMAINS, m)
        level = base[dom] + 0.4 * rng.standard_normal(m, dtype=np.float32)
        slope = -speed[dom] + 0.05 * rng.standard_normal(m, dtype=np.float32)
        f = feats[s : s + m]
        f[:, 1] = level
        f[:, 0] = level + 2 * slope + 0.1 * rng.standard_normal(m, dtype=np.float32)
        f[:, 2] = slope
        f[:, 3] = np.log(level) - 2 + 0.3 * rng.standard_normal(m, dtype=np.float32)
        seen[s : s + m] = rng.random(m, dtype=np.float32) < SEEN
    score = feats[:, 0].copy()
    score[~seen] = np.nan
    feats[~seen] = feats.mean(0, dtype=np.float64)  # never-seen blocks: imputed (about) at the mean
    return feats, score, seen


def standardise(feats: np.ndarray) -> None:
    """Zero mean, unit variance per column, in place. Sums are float32 BLAS per slice, float64 across."""
    total = np.zeros(feats.shape[1])
    squares = np.zeros(feats.shape[1])
    ones = np.ones(SLICE, dtype=np.float32)
    for s in range(0, len(feats), SLICE):
        x = feats[s : s + SLICE]
        total += ones[: len(x)] @ x
        squares += np.diag(x.T @ x)
    mean = total / len(feats)
    std = np.sqrt(np.maximum(squares / len(feats) - mean**2, 1e-12))
    for j in range(feats.shape[1]):  # column by column: one long strided loop each, not N short ones
        feats[:, j] -= np.float32(mean[j])
        feats[:, j] /= np.float32(std[j])


def child(n: int) -> None:
    t0 = time.perf_counter()
    print(f"  load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores", file=sys.stderr, flush=True)
    feats, score, seen = synthetic_table(n)
    print(f"  synthetic table {time.perf_counter() - t0:.1f}s (untimed)", file=sys.stderr, flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        t = [("start", time.perf_counter())]
        standardise(feats)
        t.append(("standardise", time.perf_counter()))
        labels = hierarchical_clusters(feats, N_CLUSTERS, seed=0)
        del feats  # a rewriter needs the features for clustering only
        t.append(("cluster", time.perf_counter()))
        keep = focus_keep_mask(score, labels, 0.5, eligible=seen, max_cluster_drop=0.75)
        t.append(("keep", time.perf_counter()))
        w = perplexity_weights(score)
        w[~seen] = 1.0  # never-seen blocks weigh like the hardest seen one
        t.append(("weights", time.perf_counter()))
        order = draw_order(keep, labels, w, None, n // 2, seed=0)  # clusters by mean perplexity
        t.append(("draw", time.perf_counter()))
        save_npy(Path(tmp) / "order.npy", order.astype(np.uint32))
        t.append(("save", time.perf_counter()))
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / 1e9  # Linux reports KiB
    stages = ", ".join(f"{name} {end - t[i][1]:.1f}s" for i, (name, end) in enumerate(t[1:]))
    print(f"  {stages}", file=sys.stderr, flush=True)
    row = {"blocks": n, "seconds": round(t[-1][1] - t[0][1], 2), "peak_rss_gb": round(rss, 2)}
    print(json.dumps(row))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--sizes", default="1e6,1e7,1e8", help="comma-separated block counts (default 1e6,1e7,1e8)"
    )
    p.add_argument("--quick", action="store_true", help="only 1e6 and 1e7")
    p.add_argument("--child", type=int, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child is not None:
        child(args.child)
        return
    sizes = [10**6, 10**7] if args.quick else [int(float(s)) for s in args.sizes.split(",")]
    results = []
    for n in sizes:
        print(f"rewrite of {n:,} blocks ...", file=sys.stderr, flush=True)
        run = subprocess.run(
            [sys.executable, str(Path(__file__).resolve()), "--child", str(n)],
            stdout=subprocess.PIPE,
            text=True,
            check=True,
        )
        row = json.loads(run.stdout.strip().splitlines()[-1])
        print(f"  {row['seconds']:.1f}s, peak RSS {row['peak_rss_gb']:.2f} GB", file=sys.stderr, flush=True)
        results.append(row)
    print(json.dumps({"results": results}))


if __name__ == "__main__":
    main()
