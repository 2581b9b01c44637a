"""A redundant training corpus shaped like a web crawl: data for experiments, not selection policy.

Real crawls repeat text. Lee et al. (2022, "Deduplicating Training Data Makes Language Models
Better") found a single 61-word sentence more than 60,000 times in C4 and near-duplicates across
every corpus they studied; Fröbe et al. (2021, "CopyCat") measured 14-52% of the documents of a
ClueWeb or Common Crawl snapshot to be near-duplicates of another. Cluster-size histograms of such
duplicates fall roughly on a line in log-log axes: most duplicated documents appear a few times, a
few appear thousands of times (Lee et al. 2022; Zyphra's 2024 analysis of DCLM and FineWeb-Edu).

:func:`build` imitates that: to a set of unique documents it adds copies of them until a fraction
``share`` (R) of the corpus' length (tokens, for a training corpus) is copies.

- **Which documents are copied, and how often:** documents are visited in a seeded order; each draws
  its number of copies from a Zipf (zeta) law, P(c) ∝ c^-``tail`` for 1 ≤ c ≤ ``max_copies``
  (``tail`` = 2: 61% of repeated documents get one copy, 1 in 100 gets about 25 or more), until the
  copies fill R of the total. The share of documents that have copies follows from R and the tail:
  at R = 0.5 on 350k tokens of webmix, 70 of 541 unique documents have copies, the most-copied 57
  of them (:class:`Stats` records it).
- **Exact and near copies:** a copy is exact, or (``near`` of them) a near-copy with about ``edits``
  of its words replaced by other words of the same document, as templated pages, syndicated
  articles and scraped mirrors differ by a date, a name or a link text.
- **Order:** originals and copies are shuffled together, as a crawl interleaves them.

A *repeat token* is a token of a copy (near-copies count whole); the originals are not repeats.
Each output document carries ``repeat_of``: the index (in the output) of the document it copies, or
``None``. Deterministic for a seed; nothing is downloaded.
"""

from __future__ import annotations

import itertools
import random
from dataclasses import asdict, dataclass


@dataclass(frozen=True)
class Redundancy:
    """How the copies are made (the defaults are the shape described above; R comes separately)."""

    tail: float = 2.0
    """Exponent of the Zipf law of copy counts per repeated document (larger: fewer heavy repeaters)."""
    max_copies: int = 1000
    """Most copies of one document."""
    near: float = 0.5
    """Share of copies that are near-copies rather than exact."""
    edits: float = 0.03
    """Share of a near-copy's words replaced."""

    def __post_init__(self) -> None:
        if not (self.tail > 1 and self.max_copies >= 1 and 0 <= self.near <= 1 and 0 <= self.edits <= 1):
            raise ValueError(f"bad redundancy shape {self}")


@dataclass
class Stats:
    """What :func:`build` made (recorded next to the corpus)."""

    unique_documents: int
    repeated_documents: int
    copies: int
    near_copies: int
    max_copies_of_one: int
    repeat_share: float
    """Copies' share of the total length, in the unit of ``lengths``."""

    def as_dict(self) -> dict:
        return asdict(self)


def build(
    unique: list[dict], lengths: list[int], share: float, seed: int, shape: Redundancy = Redundancy()
) -> tuple[list[dict], Stats]:
    """The ``unique`` documents (``{"text", "source"}``) plus copies, shuffled together: documents
    ``{"text", "source", "repeat_of"}`` of which a fraction ``share`` of the length is copies.
    ``lengths`` is each unique document's length in the unit the share is measured in (tokens, for
    a training corpus)."""
    if not 0 <= share < 1:
        raise ValueError(f"share {share} must be in [0, 1)")
    rng = random.Random(seed)
    have = sum(lengths)
    copies = _copies(unique, lengths, share / (1 - share) * have, rng, shape) if share > 0 and unique else []
    docs = [(d, None) for d in unique] + [(c, orig) for c, orig, _ in copies]
    rng.shuffle(docs)
    position = {id(d): i for i, (d, _) in enumerate(docs)}
    out = [
        {"text": d["text"], "source": d["source"], "repeat_of": None if orig is None else position[id(orig)]}
        for d, orig in docs
    ]
    counts: dict[int, int] = {}
    for _, orig, _ in copies:
        counts[id(orig)] = counts.get(id(orig), 0) + 1
    copied = sum(n for _, _, n in copies)
    return out, Stats(
        len(unique),
        len(counts),
        len(copies),
        sum(c["near"] for c, _, _ in copies),
        max(counts.values(), default=0),
        copied / max(1, copied + have),
    )


def _copies(
    unique: list[dict], lengths: list[int], budget: float, rng: random.Random, shape: Redundancy
) -> list[tuple[dict, dict, int]]:
    """(copy, original, length) triples until the copies' lengths add up to ``budget``. A copy that would overshoot
    the budget by more than half its length is skipped, and filling goes on with shorter documents, so
    one long document (a 10k-token speech) cannot leave the share far from its target."""
    counts = range(1, shape.max_copies + 1)
    cum = list(itertools.accumulate(c**-shape.tail for c in counts))
    order = list(range(len(unique)))
    out, have, added = [], 0, True
    while have < budget and added:  # more than one round only when R is so high that every document has copies
        rng.shuffle(order)
        added = False
        for i in order:
            original, n = unique[i], lengths[i]
            for _ in range(rng.choices(counts, cum_weights=cum)[0]):
                if have + n / 2 > budget:
                    break
                near = rng.random() < shape.near
                text = _near_copy(original["text"], rng, shape.edits) if near else original["text"]
                out.append(({"text": text, "source": original["source"], "near": near}, original, n))
                have += n
                added = True
    return out


def _near_copy(text: str, rng: random.Random, edits: float) -> str:
    words = text.split(" ")
    for _ in range(max(1, round(edits * len(words)))):
        words[rng.randrange(len(words))] = rng.choice(words)
    return " ".join(words)
