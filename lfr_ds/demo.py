"""The README's main job: random sampling vs LFR, end to end, on a corpus lfr-ds writes itself.

    make demo                       # the built-in planted-difficulty corpus
    make demo DATA=my_corpus.jsonl  # your own documents ({"text": ..., "source": ...} per line)

Steps: write the corpus (or split DATA 95/5 into train and held-out documents) → for the corpus as it
is, and again with web-shaped copies making up a quarter of its tokens (:data:`COPIES`, the
redundancy builder :mod:`lfr_ds.redundant`): train a tokenizer and preprocess to ``.bin/.idx`` → train
a small GPT with random sampling and with LFR (the shipped default, ``lfr.schedule=recipe``), each at
65%, 80% and 100% of the full budget (each budget its own full schedule: the budget sweep that gives the
token ratio against random's best budget), evaluating held-out loss as they go → print, for each
corpus, LFR's difference from random and the token ratio; write the LFR run's report. Twelve training
runs of up to a minute each, two side by side on 2 CPU cores (``lfr-compare --jobs``).
"""

from __future__ import annotations

import json
import random
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from lfr_ds import atomic, report, synthetic
from lfr_ds.compare import cli as compare
from lfr_ds.data.reader import ReadOptions, check_inputs, iter_documents
from lfr_ds.errors import ArgumentParser, UserError, cli

#: Token budgets, as fractions of the full one, for both arms: the budget sweep that gives the token ratio.
BUDGETS = ("0.65", "0.8", "1.0")
#: The second run's share of copies (R): web-shaped duplication (lfr_ds/redundant.py), where LFR has something to skip.
COPIES = 0.25


def verdict(results: dict) -> str:
    """The demo's answer in three lines: LFR's held-out loss against random's at the full budget, the
    budget-sweep token ratio, and the source LFR helped least."""
    lfr, rand = results["arms"]["lfr"], results["arms"]["random"]
    paired, ratio = lfr["paired"], lfr["token_ratio"]
    source, worst = max(paired["per_source_relative"].items(), key=lambda kv: kv[1])
    target = (
        "the held-out loss of random's best budget"
        if ratio.get("baseline") == "random's best budget"
        else "random's final held-out loss"
    )
    if ratio["reached"]:
        saving = (
            f"token ratio {ratio['mean']:.2f}: LFR (each budget its own full schedule) reaches {target} "
            f"with {ratio['mean']:.0%} of the tokens random needed for it"
        )
    else:
        saving = f"token ratio: never (no LFR budget, the full one included, reached {target})"
    return (
        f"LFR vs random, same tokens: held-out loss {lfr['mean']['valid_loss']:.4f} "
        f"vs {rand['mean']['valid_loss']:.4f} "
        f"({paired['relative']:+.2%})\n{saving}\nleast helped source: {source} {worst:+.2%} against random"
    )


def _step(msg: str) -> None:
    print(f"[demo] {msg}", file=sys.stderr, flush=True)


def split_corpus(src: str, out: Path, held_out: float = 0.05, seed: int = 0) -> tuple[Path, Path]:
    """Whole documents of ``src``, shuffled, into ``train.jsonl`` and ``valid.jsonl``."""
    docs = [{"text": d.text, "source": d.source or "unknown"} for d in iter_documents([src], ReadOptions())]
    if len(docs) < 20:
        raise UserError(
            f"DATA={src}: {len(docs)} documents; the demo needs at least 20 (it holds 5% out for evaluation)"
        )
    random.Random(seed).shuffle(docs)
    n_valid = max(1, round(held_out * len(docs)))
    paths = out / "train.jsonl", out / "valid.jsonl"
    for path, part in zip(paths, (docs[n_valid:], docs[:n_valid]), strict=True):
        atomic.write_bytes(path, "".join(json.dumps(d) + "\n" for d in part).encode())
    return paths


@cli
def main(argv: Sequence[str] | None = None) -> int:
    p = ArgumentParser(prog="python -m lfr_ds.demo", description="Random sampling vs LFR end to end on a small corpus.")
    p.add_argument("--data", help="your own .jsonl corpus (default: the built-in planted-difficulty corpus)")
    p.add_argument("--out", default="demo_out", help="work directory (default: demo_out)")
    args = p.parse_args(argv)
    t0 = time.time()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if args.data:
        check_inputs([args.data])
        train, valid = split_corpus(args.data, out)
        _step(f"split {args.data} into {train} and {valid} (5% of the documents, held out)")
        vocab = 4096
    else:
        _step("writing the planted-difficulty corpus: trivial templates, learnable facts, random-word noise")
        train, valid = out / "train.jsonl", out / "valid.jsonl"
        synthetic.write_jsonl(train, synthetic.generate(150, seed=0))
        synthetic.write_jsonl(valid, synthetic.generate(30, seed=1))
        vocab = 512
    comparisons = {
        "as it is": (out / "compare", 0.0),
        f"with {COPIES:.0%} copies": (out / f"compare-r{COPIES:g}", COPIES),
    }
    for name, (runs, share) in comparisons.items():
        _step(
            f"the corpus {name}: training random sampling and LFR at {', '.join(BUDGETS)} of the full budget, each "
            "budget with its own full schedule (up to a minute a run, two side by side)"
        )
        compare.main(
            [
                "--preset",
                "demo",
                "--seeds",
                "1",
                "--arms",
                "random,lfr",
                "--budgets",
                ",".join(BUDGETS),
                "--redundancy",
                str(share),
                "--out",
                str(runs),
                "--train",
                str(train),
                "--valid",
                str(valid),
                "--blimp",
                "",
                "--vocab-size",
                str(vocab),
                "--valid-blocks",
                "256",
            ]
        )
    runs = comparisons["as it is"][0]
    report.main([str(runs / "lfr-seed1")])
    _step(f"done in {time.time() - t0:.0f}s")
    for name, (where, _) in comparisons.items():
        print(
            f"\nThe corpus {name} ({where / 'results.md'}):\n"
            + verdict(json.loads((where / "results.json").read_text()))
        )
    print(
        f"\nheld-out loss vs tokens: {runs / 'heldout.png'}\nresults: {runs / 'results.json'}, {runs / 'results.md'}\n"
        f"what LFR kept and dropped: {runs / 'lfr-seed1' / 'report' / 'report.md'}\n"
        f"TensorBoard: .venv/bin/tensorboard --logdir {out}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
