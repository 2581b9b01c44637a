"""A planted-difficulty corpus that lfr-ds generates itself: the demo's default data and LFR's test bed.

Three sources of documents, each with a known difficulty for a language model:

- ``trivial``: one of a handful of fixed sentence templates repeated with a counter: after a few
  visits a model predicts almost every token, so these blocks teach nothing more (Focus should drop them).
- ``learnable``: facts about a fixed population of people (home town, job, pet, friend), stated in
  varied sentence patterns and consistent across the corpus: learnable, but only with effort.
- ``noise``: words drawn uniformly at random from the whole word list: nothing beyond word frequency
  can be learned, so its loss stays high however long you train (loss-based selection keeps it).

Generation is deterministic for a seed and needs no download.
"""

from __future__ import annotations

import json
import os
import random
from collections.abc import Sequence

from lfr_ds import atomic
from lfr_ds.errors import ArgumentParser, cli

#: ``lfr-train`` overrides for a 2-layer, 64-wide GPT on 64-token blocks: each step takes milliseconds on a
#: CPU, and it still tells this corpus' three kinds of text apart within two passes (tests and benchmarks).
SMALL_MODEL = [
    "model.preset=null",
    "model.num_layers=2",
    "model.hidden_size=64",
    "model.num_attention_heads=4",
    "model.seq_length=64",
    "optim.lr=3e-3",
    "optim.warmup_steps=5",
    "log.tensorboard=false",
    # Off by default for users; on here so the tests and benchmarks keep the sketch path exercised.
    "model.sketch_dim=16",
]

_NAMES = [
    "Ada",
    "Alan",
    "Grace",
    "Edsger",
    "Barbara",
    "Donald",
    "Frances",
    "Ken",
    "Dennis",
    "Margaret",
    "Claude",
    "John",
    "Radia",
    "Leslie",
    "Tim",
    "Vint",
    "Shafi",
    "Silvio",
    "Judea",
    "Yann",
    "Geoffrey",
    "Yoshua",
    "Fei",
    "Daphne",
    "Andrew",
    "Michael",
    "Jeff",
    "Sanjay",
    "Sophie",
    "Linus",
]
_CITIES = [
    "Lisbon",
    "Oslo",
    "Lagos",
    "Lima",
    "Kyoto",
    "Perth",
    "Quito",
    "Dakar",
    "Hanoi",
    "Tunis",
    "Turin",
    "Leeds",
    "Bergen",
    "Austin",
    "Boston",
    "Denver",
    "Geneva",
    "Malmo",
    "Poznan",
    "Porto",
]
_JOBS = [
    "baker",
    "pilot",
    "nurse",
    "farmer",
    "painter",
    "teacher",
    "sailor",
    "doctor",
    "miner",
    "tailor",
    "judge",
    "chemist",
    "poet",
    "potter",
    "builder",
]
_PETS = ["cat", "dog", "parrot", "horse", "goat", "rabbit", "tortoise", "hamster", "canary", "ferret"]
_TEMPLATES = (
    "The quick brown fox jumps over the lazy dog number {i}.",
    "Item {i} is in stock and ships today.",
    "Hello world, this is line {i} of the log.",
)
_FACT_PATTERNS = (
    "{n} lives in {c}.",
    "{n} works as a {j}.",
    "{n} has a {p}.",
    "{n} is a friend of {f}.",
    "In {c} you may meet {n}, who is a {j}.",
    "The {p} of {n} lives in {c} too.",
    "{f} often visits {n} in {c}.",
    "Ask {n} about being a {j} in {c}.",
)


def generate(n_docs: int, seed: int = 0, mix: tuple[float, float, float] = (0.5, 0.35, 0.15)) -> list[dict]:
    """``n_docs`` documents ``{"text", "source"}`` in shuffled order; ``mix`` = trivial/learnable/noise shares
    of the documents (by default web-like: mostly boilerplate, some text worth learning, a little
    garbage). Documents are long (~900 tokens) so that most blocks hold one kind of text."""
    # The facts are one fixed world whatever the seed, so documents of any seed (training or held-out)
    # state the same facts.
    facts = random.Random(0)
    world = {
        n: dict(c=facts.choice(_CITIES), j=facts.choice(_JOBS), p=facts.choice(_PETS), f=facts.choice(_NAMES))
        for n in _NAMES
    }
    rng = random.Random(seed)
    text_words = " ".join(_TEMPLATES + _FACT_PATTERNS).replace("{", " ").replace("}", " ").split()
    words = sorted({w for w in _NAMES + _CITIES + _JOBS + _PETS + text_words if len(w) > 1})
    counts = [round(share * n_docs) for share in mix]
    counts[1] = n_docs - counts[0] - counts[2]
    docs = []
    for _ in range(counts[0]):
        template, start = rng.choice(_TEMPLATES), rng.randrange(1000)
        docs.append(
            {
                "text": " ".join(template.format(i=start + k) for k in range(rng.randint(50, 80))),
                "source": "trivial",
            }
        )
    for _ in range(counts[1]):
        sentences = []
        for _ in range(rng.randint(50, 80)):
            n = rng.choice(_NAMES)
            sentences.append(rng.choice(_FACT_PATTERNS).format(n=n, **world[n]))
        docs.append({"text": " ".join(sentences), "source": "learnable"})
    for _ in range(counts[2]):
        docs.append({"text": " ".join(rng.choice(words) for _ in range(rng.randint(300, 450))), "source": "noise"})
    rng.shuffle(docs)
    return docs


def write_jsonl(path: str | os.PathLike, docs: list[dict]) -> None:
    atomic.write_bytes(path, "".join(json.dumps(d) + "\n" for d in docs).encode())


@cli
def main(argv: Sequence[str] | None = None) -> int:
    p = ArgumentParser(
        prog="lfr-synthetic",
        description="Write the planted-difficulty corpus (trivial / learnable / noise) as .jsonl.",
    )
    p.add_argument("output", help=".jsonl file to write")
    p.add_argument("--docs", type=int, default=3000, help="number of documents (default 3000)")
    p.add_argument("--seed", type=int, default=0, help="generator seed (default 0)")
    args = p.parse_args(argv)
    out_dir = os.path.dirname(os.path.abspath(args.output))
    if not os.path.isdir(out_dir):
        from lfr_ds.errors import UserError

        raise UserError(f"{args.output}: directory {out_dir} does not exist; create it first")
    write_jsonl(args.output, generate(args.docs, args.seed))
    return 0
