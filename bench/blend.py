#!/usr/bin/env python3
"""Wall time and peak memory of building a blend of corpora (issue 20), as rank 0 does at a run's start.

Writes (untimed, once per ``--workdir``) ``--corpora`` synthetic Megatron datasets of ``--blocks`` blocks
each at ``--seq-length`` (random uint16 tokens in documents of 1,000 tokens, a plain ``.bin/.idx``
with no sidecar). Then, in a fresh process so that peak RSS is the build's alone, times exactly what
``lfr-train`` does with ``data.path="W1 P1 W2 P2 W3 P3"`` before its first step:

1. ``open``: parse the blend and open every prefix (each ``.idx`` checked and hashed: the fingerprint);
2. ``index``: :class:`~lfr_ds.data.blend.BlendView`, megatron-core's ``GPTDataset`` index arrays per
   corpus built cold into the ``.lfr_cache`` (``helpers_cpp.build_sample_idx``) and loaded;
3. ``block_source``: every block's source label (the manifests' per-source shares);
4. ``learn_order``: one Learn pass over all blocks by the blend's weights
   (:func:`~lfr_ds.data.blend.blended_order`, megatron-core's ``build_blending_indices``).

The last stdout line is ``{"corpora": 3, "blocks_per_corpus": ..., "seq_length": ..., "stages": {...},
"seconds": ..., "import_seconds": ..., "peak_rss_gb": ...}``: ``seconds`` sums the stages, importing
megatron-core (once per process) is apart; peak RSS in 10⁹ bytes, the whole child process.

    .venv/bin/python bench/blend.py [--blocks 1e7] [--corpora 3] [--seq-length 8] [--workdir DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

DOC_TOKENS = 1000
WEIGHTS = (0.5, 0.3, 0.2)


def write_dataset(prefix: Path, num_tokens: int, seed: int) -> None:
    """A plain Megatron ``.bin/.idx`` of ``num_tokens`` uint16 tokens (layout in docs/data_format.md)."""
    rng = np.random.default_rng(seed)
    with open(f"{prefix}.bin", "wb") as f:
        for start in range(0, num_tokens, 1 << 24):
            rng.integers(3, 8192, min(1 << 24, num_tokens - start), dtype=np.uint16).tofile(f)
    lengths = np.full(num_tokens // DOC_TOKENS, DOC_TOKENS, dtype=np.int32)
    lengths[-1] += num_tokens - int(lengths.sum())
    pointers = np.concatenate([[0], np.cumsum(lengths[:-1].astype(np.int64) * 2)])
    with open(f"{prefix}.idx", "wb") as f:
        f.write(b"MMIDIDX\x00\x00" + struct.pack("<QBQQ", 1, 8, len(lengths), len(lengths) + 1))
        f.write(lengths.tobytes() + pointers.tobytes() + np.arange(len(lengths) + 1, dtype=np.int64).tobytes())


def measure(spec: str, seq_length: int) -> dict:
    t = time.perf_counter()
    import megatron.core.datasets.gpt_dataset  # noqa: F401  (5-8 s once per process: reported apart)

    from lfr_ds.data.blend import Blend, BlendView, blended_order

    imported = time.perf_counter() - t
    stages = {}
    t = time.perf_counter()
    blend = Blend(spec)
    stages["open"] = time.perf_counter() - t
    t = time.perf_counter()
    view = BlendView(blend, seq_length, 1234)
    stages["index"] = time.perf_counter() - t
    t = time.perf_counter()
    source = view.block_source
    stages["block_source"] = time.perf_counter() - t
    t = time.perf_counter()
    order = blended_order(view.corpora, view.num_blocks, [1234, 0])
    stages["learn_order"] = time.perf_counter() - t
    share = view.corpora.counts(order) / len(order)
    assert len(source) == view.num_blocks and np.abs(share - view.corpora.weights).max() < 1e-6
    return {
        "blocks": view.num_blocks,
        "stages": {k: round(v, 2) for k, v in stages.items()},
        "seconds": round(sum(stages.values()), 2),
        "import_seconds": round(imported, 2),
        "learn_shares": [round(float(s), 6) for s in share],
        "peak_rss_gb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / 1e9, 3),
    }


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--blocks", type=float, default=1e7, help="blocks per corpus (default 1e7)")
    p.add_argument("--corpora", type=int, default=3, choices=(1, 2, 3))
    p.add_argument(
        "--seq-length", type=int, default=8, help="model.seq_length (default 8: short blocks keep the files small)"
    )
    p.add_argument("--workdir", help="keep the synthetic datasets here (default: a temp dir, removed)")
    p.add_argument("--measure", help=argparse.SUPPRESS)  # the child: the blend spec to build
    args = p.parse_args()
    if args.measure:
        print(json.dumps(measure(args.measure, args.seq_length)))
        return 0
    blocks = int(args.blocks)
    work = Path(args.workdir or tempfile.mkdtemp(prefix="lfr-blend-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    try:
        prefixes = []
        for c in range(args.corpora):
            prefix = work / f"corpus{c}"
            if not Path(f"{prefix}.idx").exists():
                print(f"writing {prefix} ({blocks * args.seq_length + 1:,} tokens)", file=sys.stderr)
                write_dataset(prefix, blocks * args.seq_length + 1, c)
            shutil.rmtree(f"{prefix}.lfr_cache", ignore_errors=True)  # time the index build cold
            prefixes.append(prefix)
        weights = WEIGHTS[: args.corpora]
        spec = " ".join(f"{w} {p}" for w, p in zip(weights, prefixes, strict=True))
        child = subprocess.run(
            [sys.executable, __file__, "--measure", spec, "--seq-length", str(args.seq_length)],
            capture_output=True,
            text=True,
            check=True,
            env={**os.environ, "PYTHONWARNINGS": "ignore"},
        )
        result = json.loads(child.stdout.strip().splitlines()[-1])
    finally:
        if not args.workdir:
            shutil.rmtree(work, ignore_errors=True)
    print(json.dumps({"corpora": args.corpora, "blocks_per_corpus": blocks, "seq_length": args.seq_length, **result}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
