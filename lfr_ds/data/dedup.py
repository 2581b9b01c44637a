"""``lfr-dedup``: find exact and near-duplicate documents, the way pretraining pipelines remove them.

Two passes over the documents of one reading of the inputs (the same reading as lfr-preprocess: same
files, same order, the same documents with text, so a document's *id* here is its index in the dataset
lfr-preprocess builds from the same inputs):

- **exact duplicates:** documents whose text is byte for byte that of an earlier one (a 16-byte BLAKE2b
  of the text), as CCNet and RefinedWeb remove them before any fuzzy step;
- **near duplicates:** MinHash over the set of word n-grams of each document, LSH banding to find the
  candidate pairs, and every candidate pair joined (union-find) into a cluster, as datatrove's MinHash
  pipeline does for FineWeb. MinHash and the LSH index are rensa's (a Rust library; why rensa and not
  datasketch or datatrove: README, "Removing duplicates"). Words are the ``\\w+`` runs of the lower-cased
  text (datatrove's ``simplify_text`` lower-cases and strips punctuation the same way); a document of
  fewer than n words is one shingle, and one without any word takes part in exact matching only.

Defaults are FineWeb's (Penedo et al. 2024, "The FineWeb Datasets", its MinHash deduplication; datatrove's
``MinhashConfig``): word 5-grams, 112 permutations as 14 bands of 8 rows. The threshold names the
similarity where the banding's S-curve rises: bands b and rows r = perms / b are the divisor pair whose
(1/b)^(1/r) (Leskovec, Rajaraman and Ullman, "Mining of Massive Datasets", ch. 3, the banding technique) is nearest it,
so the default 0.72 gives 14 x 8: a pair of Jaccard similarity 0.70, 0.75, 0.80, 0.85 is found with
probability 56%, 77%, 92%, 98.8%.

Each cluster keeps its first document (lowest id) and removes the rest. Workers (``-j``) shingle and
sketch chunks of documents; the main process takes their results in input order and builds the index,
so every output is byte-identical for any worker count. Output directory (format: docs/data_format.md):
``removed.txt`` (what ``lfr-preprocess --remove`` takes), ``report.json`` (written last: marks the run
complete), ``report.md`` and, with ``--kept``, ``kept.jsonl``.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from importlib.metadata import version
from pathlib import Path

import numpy as np
import rensa

from lfr_ds import atomic
from lfr_ds.data.inputs import check_inputs
from lfr_ds.data.reader import (
    DEFAULT_READ,
    Chunk,
    ReadOptions,
    add_read_arguments,
    byte_progress,
    iter_chunks,
    iter_documents,
    map_chunks,
    parse_chunk,
    read_options,
)
from lfr_ds.errors import ArgumentParser, UserError, cli

_WORD = re.compile(r"\w+")
#: First line of ``removed.txt``; the document count follows it.
REMOVED_HEADER = "# lfr-dedup removed ids (id kept_id); documents="
#: Characters of a document shown in an example of the report.
_SNIPPET = 240


@dataclass(frozen=True)
class DedupConfig:
    """How near duplicates are found (defaults: FineWeb's MinHash, see the module docstring)."""

    ngram: int = 5
    """Words per shingle."""
    num_perm: int = 112
    """MinHash permutations (the signature's length)."""
    threshold: float = 0.72
    """Jaccard similarity of shingle sets where the LSH S-curve rises; sets the bands (see :attr:`bands`)."""
    seed: int = 1
    """Seed of the MinHash permutations."""

    def __post_init__(self) -> None:
        if not 0 < self.threshold <= 1:
            raise UserError(
                f"--threshold {self.threshold}: must be in (0, 1] (the Jaccard similarity from which documents "
                "are near duplicates; default 0.72)"
            )
        if self.ngram < 1 or self.num_perm < 2:
            raise UserError(f"--ngram {self.ngram} / --num-perm {self.num_perm}: need at least 1 word and 2 perms")

    @property
    def bands(self) -> int:
        """The divisor b of ``num_perm`` whose S-curve threshold (1/b)^(1/r), r = num_perm / b, is nearest
        ``threshold`` (the smaller b on a tie)."""
        divisors = [b for b in range(1, self.num_perm + 1) if self.num_perm % b == 0]
        return min(divisors, key=lambda b: abs((1 / b) ** (b / self.num_perm) - self.threshold))

    def as_dict(self) -> dict:
        return {**asdict(self), "bands": self.bands, "rows": self.num_perm // self.bands}


@dataclass
class Sketched:
    """One chunk's documents with text, as a worker returns them."""

    digests: list[bytes]
    minhashes: list  # rensa.RMinHash, or None for a document without a word
    words: np.ndarray
    tokens: np.ndarray | None
    sources: list[str | None]
    empty: int
    disk_bytes: int


_worker: dict = {}


def _init_worker(cfg: DedupConfig, opts: ReadOptions, tokenizer: str | None) -> None:
    from lfr_ds.data.tokenizer import Tokenizer

    _worker.update(cfg=cfg, opts=opts, tokenizer=Tokenizer(tokenizer) if tokenizer else None)


def shingles(text: str, n: int) -> list[str]:
    """The document's set of word n-grams (one shingle of all words when it has fewer than n)."""
    words = _WORD.findall(text.lower())
    if len(words) < n:
        return [" ".join(words)] if words else []
    return list({" ".join(words[i : i + n]) for i in range(len(words) - n + 1)})


def _sketch_chunk(chunk: Chunk) -> Sketched:
    cfg: DedupConfig = _worker["cfg"]
    docs = parse_chunk(chunk, _worker["opts"])
    kept = [d for d in docs if d.text]
    minhashes, words = [], []
    for d in kept:
        grams = shingles(d.text, cfg.ngram)
        m = None
        if grams:
            m = rensa.RMinHash(cfg.num_perm, cfg.seed)
            m.update(grams)
        minhashes.append(m)
        words.append(len(_WORD.findall(d.text)))
    tok = _worker["tokenizer"]
    tokens = np.array([len(x) + 1 for x in tok.encode([d.text for d in kept])]) if tok else None  # + <eod>
    return Sketched(
        [hashlib.blake2b(d.text.encode(), digest_size=16).digest() for d in kept],
        minhashes,
        np.array(words, dtype=np.int64),
        tokens,
        [d.source for d in kept],
        len(docs) - len(kept),
        chunk.disk_bytes,
    )


@dataclass
class Found:
    """Every document's cluster, and what the report counts per document."""

    parent: list[int] = field(default_factory=list)
    """Union-find parents; :meth:`roots` gives each document's cluster's first document."""
    exact: list[bool] = field(default_factory=list)
    """Whether an earlier document has the same text."""
    words: list[np.ndarray] = field(default_factory=list)
    tokens: list[np.ndarray] = field(default_factory=list)
    source: list[str] = field(default_factory=list)
    empty: int = 0

    def find(self, i: int) -> int:
        while self.parent[i] != i:
            self.parent[i] = self.parent[self.parent[i]]
            i = self.parent[i]
        return i

    def union(self, i: int, j: int) -> None:
        a, b = self.find(i), self.find(j)
        self.parent[max(a, b)] = min(a, b)  # the root is the cluster's first document, whatever the order

    def roots(self) -> np.ndarray:
        return np.array([self.find(i) for i in range(len(self.parent))], dtype=np.int64)


def find_duplicates(
    inputs: list[str],
    cfg: DedupConfig = DedupConfig(),
    *,
    opts: ReadOptions = DEFAULT_READ,
    workers: int = 1,
    tokenizer: str | None = None,
    progress: bool = True,
) -> Found:
    """Cluster the documents of ``inputs`` (checked files) into exact and near duplicates."""
    found, first = Found(), {}
    lsh = rensa.RMinHashLSH(cfg.threshold, cfg.num_perm, cfg.bands)
    bar = byte_progress(inputs, "dedup", progress)
    chunks = map_chunks(_sketch_chunk, iter_chunks(inputs, opts), workers, _init_worker, (cfg, opts, tokenizer))
    with bar:
        for sk in chunks:
            for digest, m in zip(sk.digests, sk.minhashes, strict=True):
                i = len(found.parent)
                twin = first.setdefault(digest, i)
                found.parent.append(twin)
                found.exact.append(twin != i)
                if twin != i or m is None:  # an exact copy joins its twin's cluster; it adds nothing to the index
                    continue
                for j in lsh.query(m):
                    found.union(i, j)
                lsh.insert(i, m)
            found.words.append(sk.words)
            found.tokens.append(sk.tokens if sk.tokens is not None else np.zeros(0, dtype=np.int64))
            found.source += [sys.intern(s or "unknown") for s in sk.sources]  # one string a source, not a document
            found.empty += sk.empty
            bar.update(sk.disk_bytes)
            bar.set_postfix_str(f"{len(found.parent):,} docs", refresh=False)
    if not found.parent:
        raise UserError(f"{', '.join(inputs)}: no documents found (all empty); give the input some text")
    return found


def summarise(found: Found, cfg: DedupConfig, inputs: list[str], counted_tokens: bool) -> dict:
    """``report.json`` without its examples: the settings, the removals, clusters by size and by source."""
    roots = found.roots()
    removed = roots != np.arange(len(roots))
    exact = np.array(found.exact) & removed
    words = np.concatenate(found.words)
    tokens = np.concatenate(found.tokens) if counted_tokens else None
    sizes = np.bincount(roots, minlength=len(roots))
    cluster_sizes = sizes[sizes > 1]
    source = np.array(found.source)
    by_source = {}
    for s in sorted(set(found.source)):
        mine = source == s
        by_source[s] = {
            "documents": int(mine.sum()),
            "removed": int((mine & removed).sum()),
            "words_removed": int(words[mine & removed].sum()),
            # clusters whose kept document is of this source, and of those how many hold other sources too
            "clusters": int(((sizes > 1) & mine).sum()),
            "mixed_clusters": int(((sizes > 1) & mine & _mixed(roots, source)).sum()),
            **({"tokens_removed": int(tokens[mine & removed].sum())} if tokens is not None else {}),
        }
    return {
        "format": "lfr-dedup/1",
        "library": f"rensa {version('rensa')}",
        "config": cfg.as_dict(),
        "inputs": [{"path": os.path.abspath(p), "bytes": os.path.getsize(p)} for p in inputs],
        "documents": len(roots),
        "skipped_empty_documents": found.empty,
        "removed": int(removed.sum()),
        "removed_exact": int(exact.sum()),
        "removed_near": int((removed & ~exact).sum()),
        "words": int(words.sum()),
        "words_removed": int(words[removed].sum()),
        **({"tokens": int(tokens.sum()), "tokens_removed": int(tokens[removed].sum())} if tokens is not None else {}),
        "clusters": len(cluster_sizes),
        "cluster_sizes": _size_bins(cluster_sizes),
        "by_source": by_source,
    }


def _mixed(roots: np.ndarray, source: np.ndarray) -> np.ndarray:
    """Per document: whether it is the kept document of a cluster holding more than one source."""
    other = source != source[roots]
    mixed = np.zeros(len(roots), dtype=bool)
    mixed[roots[other]] = True
    return mixed


def _size_bins(sizes: np.ndarray) -> dict[str, int]:
    """Clusters by size in powers of two: ``{"2": n, "3-4": n, "5-8": n, ...}``."""
    out, low = {}, 2
    while len(sizes) and low <= sizes.max():
        high = 2 * low - 2 if low > 2 else 2
        n = int(((sizes >= low) & (sizes <= high)).sum())
        if n:
            out[str(low) if low == high else f"{low}-{high}"] = n
        low = high + 1
    return out


def _example_ids(roots: np.ndarray, exact: list[bool], count: int) -> list[tuple[int, int, int]]:
    """(kept, removed, size) of the ``count`` largest clusters, each with a near member when it has one (an example
    that shows what differs)."""
    sizes = np.bincount(roots, minlength=len(roots))
    largest = sorted(np.flatnonzero(sizes > 1), key=lambda r: (-sizes[r], r))[:count]
    out = []
    for r in largest:
        members = np.flatnonzero(roots == r)[1:]
        near = [int(i) for i in members if not exact[i]]
        out.append((int(r), near[0] if near else int(members[0]), int(sizes[r])))
    return out


def _second_pass(inputs: list[str], opts: ReadOptions, removed: np.ndarray, wanted: set[int], kept: Path | None):
    """Read the documents again: the texts of ``wanted`` ids, and the kept documents written to ``kept``."""
    texts: dict[int, tuple[str, str]] = {}
    out = open(kept, "w", encoding="utf-8") if kept else None  # noqa: SIM115 (closed below, also on error)
    try:
        i = 0
        for d in iter_documents(inputs, opts):
            if not d.text:
                continue
            if i in wanted:
                texts[i] = (d.text, d.source or "unknown")
            if out and not removed[i]:
                out.write(json.dumps({"text": d.text, "source": d.source or "unknown"}, ensure_ascii=False) + "\n")
            i += 1
    finally:
        if out:
            out.close()
    return texts


@dataclass(frozen=True)
class Outputs:
    """What to write besides ``removed.txt`` and the report."""

    kept: bool = False
    """Also write the kept documents, ``kept.jsonl``."""
    examples: int = 5
    """The largest clusters shown in the report, with their texts."""


def dedup(
    inputs: list[str],
    out: str | os.PathLike,
    cfg: DedupConfig = DedupConfig(),
    *,
    outputs: Outputs = Outputs(),
    opts: ReadOptions = DEFAULT_READ,
    workers: int = 1,
    tokenizer: str | None = None,
    progress: bool = True,
    split: str | None = None,
) -> dict:
    """Find the duplicates of ``inputs`` and write ``out/``'s files (module docstring); returns the report."""
    if workers < 1:
        raise UserError(f"--workers {workers}: must be at least 1")
    inputs = check_inputs(inputs, split)
    out = Path(out)
    if not out.parent.is_dir():
        raise UserError(f"--out {out}: directory {out.parent} does not exist; create it first")
    found = find_duplicates(inputs, cfg, opts=opts, workers=workers, tokenizer=tokenizer, progress=progress)
    report = summarise(found, cfg, inputs, tokenizer is not None)
    roots = found.roots()
    removed = roots != np.arange(len(roots))
    examples = _example_ids(roots, found.exact, outputs.examples)
    out.mkdir(exist_ok=True)
    wanted = {i for e in examples for i in e[:2]}
    if outputs.kept:
        with atomic.atomic_path(out / "kept.jsonl") as kept_tmp:
            texts = _second_pass(inputs, opts, removed, wanted, kept_tmp)
    else:
        (out / "kept.jsonl").unlink(missing_ok=True)  # an earlier run's would not match this one's removed.txt
        texts = _second_pass(inputs, opts, removed, wanted, None)
    report["examples"] = [
        {
            "size": size,
            "kept": {"id": k, "source": texts[k][1], "text": texts[k][0][:_SNIPPET]},
            "removed": {"id": r, "source": texts[r][1], "exact": found.exact[r], "text": texts[r][0][:_SNIPPET]},
        }
        for k, r, size in examples
    ]
    ids = np.flatnonzero(removed)
    lines = [f"{REMOVED_HEADER}{len(roots)}\n", *(f"{i} {roots[i]}\n" for i in ids)]
    atomic.write_bytes(out / "removed.txt", "".join(lines).encode())
    atomic.write_bytes(out / "report.md", markdown(report).encode())
    atomic.write_json(out / "report.json", report)  # last: marks the run complete
    return report


def markdown(report: dict) -> str:
    """``report.md``: the report for a reader."""
    c, n = report["config"], report["documents"]
    lines = [
        "# lfr-dedup report",
        "",
        f"{n:,} documents ({report['skipped_empty_documents']:,} empty skipped); word {c['ngram']}-grams, "
        f"{c['num_perm']} permutations as {c['bands']} bands x {c['rows']} rows (threshold {c['threshold']}), "
        f"{report['library']}.",
        "",
        f"Removed {report['removed']:,} documents ({report['removed'] / n:.1%}): {report['removed_exact']:,} exact "
        f"and {report['removed_near']:,} near copies, {report['words_removed']:,} of {report['words']:,} words "
        f"({report['words_removed'] / max(1, report['words']):.1%})"
        + (
            f", {report['tokens_removed']:,} of {report['tokens']:,} tokens "
            f"({report['tokens_removed'] / max(1, report['tokens']):.1%})."
            if "tokens" in report
            else "."
        ),
        "",
        f"{report['clusters']:,} clusters by size: "
        + ", ".join(f"{k}: {v:,}" for k, v in report["cluster_sizes"].items()),
        "",
        "| source | documents | removed | words removed | clusters | of them mixing sources |",
        "|---|---:|---:|---:|---:|---:|",
        *(
            f"| {s} | {v['documents']:,} | {v['removed']:,} | {v['words_removed']:,} | {v['clusters']:,} | "
            f"{v['mixed_clusters']:,} |"
            for s, v in report["by_source"].items()
        ),
        "",
        "## The largest clusters",
    ]
    for e in report["examples"]:
        kind = "exact" if e["removed"]["exact"] else "near"
        lines += [
            "",
            f"**{e['size']} documents.** Kept {e['kept']['id']} ({e['kept']['source']}): {e['kept']['text']!r}",
            "",
            f"Removed {e['removed']['id']} ({e['removed']['source']}, {kind}): {e['removed']['text']!r}",
        ]
    return "\n".join(lines) + "\n"


def read_removed(path: str) -> tuple[np.ndarray, np.ndarray, int]:
    """``removed.txt``: the removed ids (ascending), the id kept in each one's place, and the number of documents
    the list was made for."""
    try:
        with open(path, encoding="utf-8") as f:
            header = f.readline()
            if not header.startswith(REMOVED_HEADER):
                raise ValueError("no lfr-dedup header")
            documents = int(header[len(REMOVED_HEADER) :])
            pairs = np.array([line.split() for line in f if line.strip()], dtype=np.int64).reshape(-1, 2)
    except (OSError, ValueError, UnicodeDecodeError) as e:
        raise UserError(
            f"--remove {path}: not a removed.txt of lfr-dedup ({e}); give the file lfr-dedup wrote"
        ) from None
    ids, kept = pairs[:, 0], pairs[:, 1]
    if len(ids) and (kept.min() < 0 or ids.max() >= documents or np.any(np.diff(ids) <= 0) or np.any(kept >= ids)):
        raise UserError(
            f"--remove {path}: ids out of order or outside 0..{documents - 1}; give the file lfr-dedup wrote"
        )
    return ids, kept, documents


@cli
def main(argv: Sequence[str] | None = None) -> int:
    p = ArgumentParser(
        prog="lfr-dedup",
        description="Find exact and near-duplicate documents (MinHash LSH over word n-grams, FineWeb's settings by "
        "default); write the ids to remove (lfr-preprocess --remove), a report, and optionally the kept documents.",
    )
    add_read_arguments(p, sources=True)
    p.add_argument("--out", "-o", required=True, help="output directory: removed.txt, report.json, report.md")
    p.add_argument("--kept", action="store_true", help="also write the kept documents, OUT/kept.jsonl")
    d = DedupConfig()
    p.add_argument("--ngram", type=int, default=d.ngram, help=f"words per shingle (default {d.ngram})")
    p.add_argument("--num-perm", type=int, default=d.num_perm, help=f"MinHash permutations (default {d.num_perm})")
    p.add_argument(
        "--threshold",
        type=float,
        default=d.threshold,
        help=f"Jaccard similarity in (0, 1] where the LSH S-curve rises; sets bands x rows (default {d.threshold}: "
        "14 x 8 of 112 permutations, FineWeb's)",
    )
    p.add_argument("--seed", type=int, default=d.seed, help=f"MinHash seed (default {d.seed})")
    p.add_argument("--tokenizer", "-t", help="sentencepiece .model: also count the tokens removed")
    p.add_argument("--examples", type=int, default=5, help="largest clusters shown in the report (default 5)")
    p.add_argument("--workers", "-j", type=int, default=os.cpu_count() or 1, help="processes (default: all cores)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    args = p.parse_args(argv)
    cfg = DedupConfig(args.ngram, args.num_perm, args.threshold, args.seed)
    t0 = time.time()
    report = dedup(
        args.inputs,
        args.out,
        cfg,
        outputs=Outputs(args.kept, max(0, args.examples)),
        opts=read_options(args),
        workers=args.workers,
        tokenizer=args.tokenizer,
        progress=not args.no_progress,
        split=args.split,
    )
    secs = time.time() - t0
    print(
        f"wrote {args.out}/removed.txt: {report['removed']:,} of {report['documents']:,} documents "
        f"({report['removed_exact']:,} exact, {report['removed_near']:,} near; {report['clusters']:,} clusters), "
        f"{secs:.1f}s ({report['documents'] / secs:,.0f} docs/s)",
        file=sys.stderr,
    )
    return 0
