#!/usr/bin/env python3
"""Preprocessing throughput on webmix with 1 and 2 workers.

Trains the 8k tokenizer on webmix train once, then times ``preprocess()`` (worker start-up included)
for each worker count. Prints progress to stderr and, as its last stdout line, one JSON object:
``{"tokens_per_s_1": ..., "tokens_per_s_2": ..., "speedup": ...}``. Target: speedup >= 1.6 on 2 cores.

    .venv/bin/python bench/preprocess.py [--input ../shared/data/webmix/train.jsonl] [--repeats 2]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

from lfr_ds.data.preprocess import preprocess
from lfr_ds.data.tokenizer import train_tokenizer

DEFAULT_INPUT = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "webmix" / "train.jsonl"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--input", default=str(DEFAULT_INPUT))
    p.add_argument("--repeats", type=int, default=2, help="best of N runs per worker count")
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        tok = Path(tmp) / "tok.model"
        train_tokenizer([args.input], str(tok), 8192)
        rates = {}
        for workers in (1, 2):
            best = 0.0
            for r in range(args.repeats):
                t0 = time.perf_counter()
                meta = preprocess(
                    [args.input], f"{tmp}/w{workers}", str(tok), workers=workers, progress=False
                )
                rate = meta["num_tokens"] / (time.perf_counter() - t0)
                print(f"workers={workers} run={r}: {rate:,.0f} tokens/s", file=sys.stderr)
                best = max(best, rate)
            rates[workers] = best
    print(
        json.dumps(
            {
                "tokens_per_s_1": round(rates[1]),
                "tokens_per_s_2": round(rates[2]),
                "speedup": round(rates[2] / rates[1], 3),
            }
        )
    )


if __name__ == "__main__":
    main()
