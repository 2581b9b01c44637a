#!/usr/bin/env python3
"""Preprocessing throughput and peak memory on webmix: .jsonl against .parquet, 1 and 2 workers, and a
file 10 times larger.

Trains the 8k tokenizer on the input once and writes it again as parquet (row groups of 1,000 rows, the
Hugging Face ``datasets`` default, plus an ``id`` column the reader must skip) and as 10x copies of both.
Each measurement is a fresh process (so its peak RSS is its own), timing ``preprocess()`` with worker
start-up included; tokens/s is the best of ``--repeats``. Peak RSS is reported for the main process and
for the largest worker. Progress goes to stderr; the last stdout line is one JSON object:

- ``tokens_per_s_1`` / ``tokens_per_s_2`` / ``speedup``: .jsonl with 1 and 2 workers (target >= 1.6 on 2 cores);
- ``parquet_tokens_per_s_1`` / ``_2``, ``parquet_vs_jsonl``: parquet's rate over jsonl's with 1 worker
  (target >= 0.9);
- ``peak_rss_mb``: {format: {"1x" | "10x": [main, largest worker]}} with 2 workers, and
  ``rss_after_imports_mb`` (the main process before it reads anything: torch and megatron-core): memory is
  bounded when 10x stays level with 1x.

    .venv/bin/python bench/preprocess.py [--input ../shared/data/webmix/train.jsonl] [--repeats 2] [--scale 10]
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

# Imported here so that a measurement's 5-8 s megatron-core import is not counted as preprocessing.
import megatron.core.datasets.indexed_dataset  # noqa: F401
import pyarrow as pa
import pyarrow.parquet as pq

from lfr_ds.data.preprocess import preprocess
from lfr_ds.data.tokenizer import train_tokenizer

DEFAULT_INPUT = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "webmix" / "train.jsonl"
ROW_GROUP = 1000


def peak_rss_mb() -> float:
    """This process's peak RSS since it started. Not ``ru_maxrss``: Linux carries that across ``exec`` from
    the parent, and the parent here holds the whole corpus in memory while writing the inputs."""
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmHWM:")) / 1024


def measure_one(src: str, tok: str, workers: int, out: str) -> dict:
    """One preprocessing run in this process: tokens/s and peak RSS (MB) of this process and its workers
    (forked from it, so they count the pages they share with it: torch and megatron-core's imports)."""
    base = peak_rss_mb()
    t0 = time.perf_counter()
    meta = preprocess([src], out, tok, workers=workers, progress=False)
    rate = meta["num_tokens"] / (time.perf_counter() - t0)
    worker_mb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024 if workers > 1 else 0.0
    return {
        "tokens_per_s": rate,
        "rss_mb": [round(peak_rss_mb()), round(worker_mb)],
        "import_rss_mb": round(base),
        "tokens": meta["num_tokens"],
    }


def run(src: Path, tok: Path, workers: int, tmp: str) -> dict:
    argv = [
        sys.executable,
        __file__,
        "--one",
        str(src),
        "--tokenizer",
        str(tok),
        "--workers",
        str(workers),
        "--out",
        f"{tmp}/out",
    ]
    proc = subprocess.run(argv, capture_output=True, text=True, check=True)
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    print(
        f"{src.name} -j {workers}: {result['tokens_per_s']:,.0f} tokens/s, peak RSS (main, worker) "
        f"{result['rss_mb']} MB",
        file=sys.stderr,
    )
    return result


def write_inputs(src: Path, tmp: Path, scale: int) -> dict[str, Path]:
    rows = [json.loads(line) for line in src.read_text().split("\n") if line.strip()]
    paths = {}
    for name, times in (("1x", 1), (f"{scale}x", scale)):
        paths[f"jsonl {name}"] = tmp / f"{name}.jsonl"
        with open(paths[f"jsonl {name}"], "w") as f:
            for _ in range(times):
                f.writelines(json.dumps(r) + "\n" for r in rows)
        paths[f"parquet {name}"] = tmp / f"{name}.parquet"
        table = pa.table({k: [r.get(k) for r in rows] for k in ("id", "text", "source")})
        with pq.ParquetWriter(paths[f"parquet {name}"], table.schema) as w:
            for _ in range(times):
                w.write_table(table, row_group_size=ROW_GROUP)
    return paths


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--input", default=str(DEFAULT_INPUT))
    p.add_argument("--repeats", type=int, default=2, help="best of N runs per format and worker count")
    p.add_argument("--scale", type=int, default=10, help="size of the large file, in copies of the input")
    p.add_argument("--one", help=argparse.SUPPRESS)
    p.add_argument("--tokenizer", help=argparse.SUPPRESS)
    p.add_argument("--workers", type=int, help=argparse.SUPPRESS)
    p.add_argument("--out", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.one:
        print(json.dumps(measure_one(args.one, args.tokenizer, args.workers, args.out)))
        return
    with tempfile.TemporaryDirectory() as tmp:
        tok = Path(tmp) / "tok.model"
        train_tokenizer([args.input], str(tok), 8192)
        paths = write_inputs(Path(args.input), Path(tmp), args.scale)
        rate: dict[tuple[str, int], float] = {}
        rss: dict[str, dict[str, list[int]]] = {"jsonl": {}, "parquet": {}}
        # Formats alternate within each repeat, so a busy spell on a shared machine hits both alike.
        for _ in range(args.repeats):
            for workers in (1, 2):
                for fmt in rss:
                    result = run(paths[f"{fmt} 1x"], tok, workers, tmp)
                    rate[fmt, workers] = max(rate.get((fmt, workers), 0.0), result["tokens_per_s"])
                    rss[fmt]["1x"] = result["rss_mb"]
        for fmt in rss:
            result = run(paths[f"{fmt} {args.scale}x"], tok, 2, tmp)
            rss[fmt][f"{args.scale}x"] = result["rss_mb"]
            after_imports = result["import_rss_mb"]
    print(
        json.dumps(
            {
                "tokens_per_s_1": round(rate["jsonl", 1]),
                "tokens_per_s_2": round(rate["jsonl", 2]),
                "speedup": round(rate["jsonl", 2] / rate["jsonl", 1], 3),
                "parquet_tokens_per_s_1": round(rate["parquet", 1]),
                "parquet_tokens_per_s_2": round(rate["parquet", 2]),
                "parquet_vs_jsonl": round(rate["parquet", 1] / rate["jsonl", 1], 3),
                "peak_rss_mb": rss,
                "rss_after_imports_mb": after_imports,
            }
        )
    )


if __name__ == "__main__":
    main()
