"""The README's main job: the end-to-end pipeline on the built-in planted-difficulty corpus (or ``--data``).

Steps: write the corpus → train the tokenizer → preprocess to ``.bin/.idx`` → summarise.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Sequence

from lfr_ds import synthetic
from lfr_ds.data.dataset import open_dataset
from lfr_ds.data.inspect import _format, summary
from lfr_ds.data.preprocess import preprocess
from lfr_ds.data.reader import check_inputs
from lfr_ds.data.tokenizer import train_tokenizer
from lfr_ds.errors import ArgumentParser, cli


def _step(msg: str) -> None:
    print(f"[demo] {msg}", file=sys.stderr, flush=True)


@cli
def main(argv: Sequence[str] | None = None) -> int:
    p = ArgumentParser(prog="python -m lfr_ds.demo", description="lfr-ds end to end on a small corpus.")
    p.add_argument("--data", help="your own .jsonl corpus (default: the built-in planted-difficulty corpus)")
    p.add_argument("--out", default="demo_out", help="work directory (default: demo_out)")
    p.add_argument("--vocab-size", type=int, default=1024, help="tokenizer vocabulary (default 1024)")
    args = p.parse_args(argv)
    t0 = time.time()
    os.makedirs(args.out, exist_ok=True)
    if args.data:
        corpus = check_inputs([args.data])[0]
    else:
        corpus = os.path.join(args.out, "planted.jsonl")
        _step(f"writing the planted-difficulty corpus to {corpus}")
        synthetic.write_jsonl(corpus, synthetic.generate(3000, seed=0))
    tok_path = os.path.join(args.out, "tokenizer.model")
    _step(f"training a {args.vocab_size}-token BPE tokenizer -> {tok_path}")
    train_tokenizer([corpus], tok_path, args.vocab_size)
    prefix = os.path.join(args.out, "data")
    _step(f"preprocessing -> {prefix}.bin/.idx")
    preprocess([corpus], prefix, tok_path, workers=os.cpu_count() or 1)
    print(_format(summary(open_dataset(prefix))))
    _step(f"done in {time.time() - t0:.0f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
