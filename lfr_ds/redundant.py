"""A redundant training corpus shaped like a web crawl: data for experiments, not selection policy.

Real crawls repeat text. Lee et al. (2022, "Deduplicating Training Data Makes Language Models
Better") found a single 61-word sentence more than 60,000 times in C4 and near-duplicates across
every corpus they studied; Fröbe et al. (2021, "CopyCat") measured 14-52% of the documents of a
ClueWeb or Common Crawl snapshot to be near-duplicates of another. Cluster-size histograms of such
duplicates fall roughly on a line in log-log axes: most duplicated documents appear a few times, a
few appear thousands of times (Lee et al. 2022; Zyphra's 2024 analysis of DCLM and FineWeb-Edu).

:func:`build` imitates that: a fraction ``share`` (R) of the corpus' characters are copies of other
documents of the same corpus.

- **Which documents are copied, and how often:** documents are visited in a seeded order; each draws
  its number of copies from a Zipf (zeta) law, P(c) ∝ c^-``tail`` for 1 ≤ c ≤ ``max_copies``
  (``tail`` = 2: 61% of repeated documents get one copy, 1 in 100 gets about 25 or more), until the
  copies fill R of the budget. The share of documents that have copies follows from R and the tail:
  at R = 0.5, about one unique document in five. :class:`Stats` records it.
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
    repeat_char_share: float

    def as_dict(self) -> dict:
        return asdict(self)


def build(pool: list[dict], budget_chars: float, share: float, seed: int,
          shape: Redundancy = Redundancy()) -> tuple[list[dict], Stats]:
    """Documents (``{"text", "source", "repeat_of"}``) of about ``budget_chars`` characters, a fraction
    ``share`` of them copies. ``pool`` is the unique documents to draw from, in the order to take them."""
    if not 0 <= share < 1:
        raise ValueError(f"share {share} must be in [0, 1)")
    unique, have = [], 0
    for doc in pool:
        if have >= (1 - share) * budget_chars:
            break
        unique.append({"text": doc["text"], "source": doc["source"]})
        have += len(doc["text"])
    rng = random.Random(seed)
    # Copies fill R of the total as built, so the unique part's overshoot (its last document) keeps R exact.
    copies = _copies(unique, share / (1 - share) * have, rng, shape) if share > 0 and unique else []
    docs = [(d, None) for d in unique] + copies
    rng.shuffle(docs)
    position = {id(d): i for i, (d, _) in enumerate(docs)}
    out = [{"text": d["text"], "source": d["source"],
            "repeat_of": None if orig is None else position[id(orig)]} for d, orig in docs]
    counts = {}
    for _, orig in copies:
        counts[id(orig)] = counts.get(id(orig), 0) + 1
    copied_chars = sum(len(d["text"]) for d, _ in copies)
    return out, Stats(len(unique), len(counts), len(copies), sum(d.get("near", False) for d, _ in copies),
                      max(counts.values(), default=0), copied_chars / max(1, copied_chars + have))


def _copies(unique: list[dict], budget: float, rng: random.Random, shape: Redundancy) -> list[tuple[dict, dict]]:
    """(copy, original) pairs until the copies hold ``budget`` characters."""
    counts = range(1, shape.max_copies + 1)
    cum = list(itertools.accumulate(c ** -shape.tail for c in counts))
    order = list(range(len(unique)))
    out, have = [], 0
    while have < budget:
        rng.shuffle(order)  # a second round only when R is so high that every document has copies
        for i in order:
            original = unique[i]
            for _ in range(rng.choices(counts, cum_weights=cum)[0]):
                near = rng.random() < shape.near
                text = _near_copy(original["text"], rng, shape.edits) if near else original["text"]
                if have + len(text) / 2 > budget:  # the copy that lands closest to the budget is the last
                    return out
                out.append(({"text": text, "source": original["source"], "near": near}, original))
                have += len(text)
    return out


def _near_copy(text: str, rng: random.Random, edits: float) -> str:
    words = text.split(" ")
    for _ in range(max(1, round(edits * len(words)))):
        words[rng.randrange(len(words))] = rng.choice(words)
    return " ".join(words)
