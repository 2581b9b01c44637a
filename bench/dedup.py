#!/usr/bin/env python3
"""lfr-dedup's speed (documents per second per core) and peak memory, with the arithmetic for 10M and 1B documents;
and, on a corpus lfr-compare built (``--corpus OUT/data``), its precision and recall against the builder's labels.

Each measurement is a fresh process running ``find_duplicates`` with one worker (so its CPU seconds are one core's
and its peak RSS its own; CPU seconds, not wall time, because this machine is shared):

- ``webmix``: the real webmix train file (short and long documents, a few real duplicates);
- ``unique_N``: N documents of 120 words drawn from webmix's vocabulary, every one unique, so every one enters the
  LSH index (the worst case for memory). Two sizes give the memory per document (the slope) and the fixed part.

The projections assume the per-document memory and CPU stay linear (the index holds 14 band keys a document):
``cores_hours`` is CPU time / 3600; ``memory_gb`` the fixed part plus the slope times the documents. The last stdout
line is one JSON object. ``--libraries`` also times MinHash signatures of the same shingles with datasketch when it is
installed (``pip install datasketch==2.0.0``; not a dependency): the measurement behind choosing rensa.

    .venv/bin/python bench/dedup.py [--corpus /work/runs/lr-2e-3/data] [--sizes 20000,80000] [--libraries]
"""

from __future__ import annotations

import argparse
import json
import random
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from lfr_ds.compare.ceilings import kept_of, score
from lfr_ds.data.dedup import DedupConfig, dedup, find_duplicates, shingles
from lfr_ds.data.reader import DEFAULT_READ, iter_documents

WEBMIX = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "webmix" / "train.jsonl"


def _child(path: str) -> dict:
    """One measurement, in this (fresh) process."""
    t0, c0 = time.time(), time.process_time()
    found = find_duplicates([path], workers=1, progress=False)
    cpu = time.process_time() - c0
    docs = len(found.parent)
    return {
        "documents": docs,
        "cpu_s": round(cpu, 2),
        "wall_s": round(time.time() - t0, 2),
        "docs_per_s_per_core": round(docs / cpu),
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
    }


def _measure(path: Path) -> dict:
    out = subprocess.run([sys.executable, __file__, "--child", str(path)], check=True, capture_output=True, text=True)
    return json.loads(out.stdout.splitlines()[-1])


def _unique_corpus(n: int, path: Path) -> Path:
    words = sorted({w for d in iter_documents([str(WEBMIX)], DEFAULT_READ) for w in d.text.split()[:50]})
    rng = random.Random(0)
    with open(path, "w") as f:
        for _ in range(n):
            f.write(json.dumps({"text": " ".join(rng.choices(words, k=120))}) + "\n")
    return path


def _libraries() -> dict:
    """Signatures of webmix's first 2,000 documents' shingles: rensa against datasketch (if installed)."""
    import rensa

    cfg = DedupConfig()
    grams = [shingles(d.text, cfg.ngram) for d in iter_documents([str(WEBMIX)], DEFAULT_READ) if d.text][:2000]
    t0 = time.process_time()
    for g in grams:
        rensa.RMinHash(cfg.num_perm, cfg.seed).update(g)
    out = {"docs": len(grams), "rensa_cpu_s": round(time.process_time() - t0, 3)}
    try:
        from datasketch import MinHash
    except ImportError:
        return {**out, "datasketch_cpu_s": None}
    t0 = time.process_time()
    MinHash.bulk([[s.encode() for s in g] for g in grams], num_perm=cfg.num_perm, seed=cfg.seed)
    return {**out, "datasketch_cpu_s": round(time.process_time() - t0, 3)}


def _corpus_scores(data: Path) -> dict:
    """lfr-dedup (defaults) on an lfr-compare corpus's train.jsonl, scored against the builder's labels."""
    docs = [json.loads(line) for line in (data / "train.jsonl").read_text().splitlines() if line]
    with tempfile.TemporaryDirectory() as tmp:
        dedup([str(data / "train.jsonl")], Path(tmp) / "out", progress=False)
        return {"corpus": str(data), **score(docs, kept_of(str(Path(tmp) / "out" / "removed.txt")))}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--child", help=argparse.SUPPRESS)
    p.add_argument("--sizes", default="20000,80000", help="two sizes of the all-unique corpus")
    p.add_argument("--corpus", help="an lfr-compare OUT/data (train.jsonl with repeat_of): precision and recall")
    p.add_argument("--libraries", action="store_true", help="also time rensa against datasketch's signatures")
    args = p.parse_args()
    if args.child:
        print(json.dumps(_child(args.child)))
        return
    result: dict = {"webmix": _measure(WEBMIX)}
    print(f"webmix: {result['webmix']}", file=sys.stderr)
    small, large = (int(s) for s in args.sizes.split(","))
    with tempfile.TemporaryDirectory() as tmp:
        for n in (small, large):
            result[f"unique_{n}"] = _measure(_unique_corpus(n, Path(tmp) / f"u{n}.jsonl"))
            print(f"unique_{n}: {result[f'unique_{n}']}", file=sys.stderr)
    a, b = result[f"unique_{small}"], result[f"unique_{large}"]
    per_doc = (b["peak_rss_mb"] - a["peak_rss_mb"]) * 2**20 / (large - small)
    fixed_mb = a["peak_rss_mb"] - per_doc * small / 2**20
    rate = min(result["webmix"]["docs_per_s_per_core"], b["docs_per_s_per_core"])
    result["memory_bytes_per_document"] = round(per_doc)
    result["projection"] = {
        f"{n:.0e}": {
            "core_hours": round(n / rate / 3600, 1),
            "memory_gb": round((fixed_mb * 2**20 + per_doc * n) / 2**30, 1),
        }
        for n in (1e7, 1e9)
    }
    if args.libraries:
        result["libraries"] = _libraries()
    if args.corpus:
        result["precision_recall"] = _corpus_scores(Path(args.corpus))
    print(json.dumps(result))


if __name__ == "__main__":
    main()
