"""One comparison's data, built once per ``--out`` and shared by every seed and arm.

``OUT/data/`` holds:

- ``train.jsonl``: whole documents of ``--train`` in a seeded order (``subset_seed``) until about
  (1 - R) ``unique_tokens`` tokens, plus copies of them (:mod:`lfr_ds.redundant`) that make up a
  fraction ``redundancy`` R of the tokens, so every R trains on the same number of tokens. Any document whose text
  is also in the held-out file is left out: held-out text never reaches training.
- ``tokenizer.model`` (trained on the unique documents) and ``train.{bin,idx,meta.json}``.
- ``train.repeat.npy``: per document of the dataset (in ``.bin`` order), 1 if the builder copied it.
- ``heldout.jsonl``: the fixed held-out set, whole documents of ``--valid`` (the dev split) chosen
  once: in a seeded order, each source takes documents until its share of the valid file's tokens
  (at least one document) of ``heldout_blocks`` blocks is covered, so every source is present.
  Every run scores its first ``heldout_blocks`` blocks, cut with one fixed seed.
- ``probe.{bin,idx,meta.json}`` (``--probe-fraction`` F > 0, issue 21): the probe set every arm scores
  (``lfr.probe_path``) and none trains on: whole original documents taken from the shuffled pool before
  the training subset, so before the redundancy builder makes copies (no copy's twin is a probe), at
  least F × ``unique_tokens`` tokens and :data:`PROBE_MIN_BLOCKS` blocks. The
  training subset is then the pool's next documents: a corpus with probes is a new corpus (its own
  digest, its own ``--out``); one without keeps the digest it had.
- ``corpus.json``: the inputs (with the checksums of the source files), their digest and what the
  builder made; written last, it marks the build complete.

A build whose inputs differ from ``corpus.json``'s is refused in one line naming the differences:
compare arms within one corpus, and give another corpus its own ``--out``.
"""

from __future__ import annotations

import hashlib
import json
import random
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from lfr_ds import atomic, redundant
from lfr_ds.data.dataset import open_dataset, sha256_file
from lfr_ds.data.preprocess import preprocess
from lfr_ds.data.reader import DEFAULT_READ, check_inputs, iter_documents
from lfr_ds.data.tokenizer import Tokenizer, train_tokenizer
from lfr_ds.errors import UserError
from lfr_ds.lfr.probes import MIN_PROBE_BLOCKS

#: Bumped whenever the build itself changes, so corpora built by older code are not taken for new ones.
BUILDER_VERSION = 2
#: The held-out file holds this many more tokens than its blocks need, so cutting never runs short.
_HELDOUT_SLACK = 1.05


@dataclass(frozen=True)
class CorpusSpec:
    """What a comparison's data is built from."""

    train: str
    valid: str
    redundancy: float
    subset_seed: int
    vocab_size: int
    unique_tokens: int
    seq_length: int
    heldout_blocks: int
    split: str | None = None
    """The split of ``train`` (a directory or glob holding several) to train on, as ``lfr-preprocess --split``."""
    probe_fraction: float = 0.0
    """Split off a probe set of this share of ``unique_tokens`` (at least 512 blocks); 0 = none."""

    def inputs(self) -> dict:
        """Everything the build depends on, files by checksum (``split`` and ``probe_fraction`` only when
        set: the digests of corpora built before they existed stay the same)."""
        fields = {
            k: v
            for k, v in asdict(self).items()
            if not (k == "split" and v is None) and not (k == "probe_fraction" and not v)
        }
        return {
            **fields,
            "train": {"path": self.train, "sha256": _sha256(self.train, self.split)},
            "valid": {"path": self.valid, "sha256": _sha256(self.valid, None)},
            "builder": BUILDER_VERSION,
        }


def _sha256(path: str, split: str | None) -> str:
    """A file's sha256; a directory's or glob's: of its files' names and sha256s, in reading order."""
    files = check_inputs([path], split)
    if files == [path]:
        return sha256_file(path)
    return hashlib.sha256("".join(f"{f}:{sha256_file(f)}\n" for f in files).encode()).hexdigest()


@dataclass(frozen=True)
class Corpus:
    """A built comparison corpus (paths under ``OUT/data``)."""

    prefix: str
    tokenizer: str
    heldout: str
    digest: str
    info: dict
    probe: str | None = None
    """The probe set's prefix (``--probe-fraction``), or ``None``."""
    labels: str = "builder"
    """Whose copy labels :meth:`repeats` gives: the redundancy ``builder``'s, or ``lfr-dedup``'s
    (:func:`lfr_ds.compare.ceilings.with_labels`)."""

    def repeats(self) -> np.ndarray:
        """Per document of the training dataset: whether it is a copy (by :attr:`labels`)."""
        suffix = ".repeat.npy" if self.labels == "builder" else f".{self.labels}.repeat.npy"
        return np.load(self.prefix + suffix, allow_pickle=False).astype(bool)


def digest(inputs: dict) -> str:
    return hashlib.sha256(json.dumps(inputs, sort_keys=True).encode()).hexdigest()


def differences(old: dict, new: dict, prefix: str = "") -> list[str]:
    """``key: old -> new`` for every leaf that differs between two nested dicts."""
    out = []
    for key in sorted(set(old) | set(new)):
        a, b = old.get(key), new.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            out += differences(a, b, f"{prefix}{key}.")
        elif a != b:
            out.append(f"{prefix}{key}: {a!r} -> {b!r}")
    return out


def prepare(spec: CorpusSpec, out: Path) -> Corpus:
    """Build ``OUT/data`` for ``spec``, or reuse it when it was built from the same inputs."""
    data = out / "data"
    record_path = data / "corpus.json"
    inputs = spec.inputs()
    if record_path.is_file():
        record = json.loads(record_path.read_text())
        if record["digest"] != digest(inputs):
            diff = "; ".join(differences(record["inputs"], inputs))
            raise UserError(f"--out {out}: its corpus was built from other inputs ({diff}); use a new --out")
    else:
        data.mkdir(parents=True, exist_ok=True)
        record = {"inputs": inputs, "digest": digest(inputs), **_build(spec, data)}
        atomic.write_json(record_path, record)
    return Corpus(
        str(data / "train"),
        str(data / "tokenizer.model"),
        str(data / "heldout.jsonl"),
        record["digest"],
        {k: v for k, v in record.items() if k not in ("inputs", "digest")},
        str(data / "probe") if "probe_documents" in record else None,
    )


def _build(spec: CorpusSpec, data: Path) -> dict:
    valid = _read(spec.valid)
    held_texts = {d["text"] for d in valid}
    everything = _read(spec.train, spec.split)
    pool = [d for d in everything if d["text"] not in held_texts]
    left_out = len(everything) - len(pool)
    random.Random(spec.subset_seed).shuffle(pool)
    probes = _prefix(pool, _probe_chars(spec)) if spec.probe_fraction else []  # probes (issue 21): originals only
    probe_texts = {d["text"] for d in probes}  # web text repeats: a probe's exact twin must not train either
    pool = [d for d in pool[len(probes) :] if d["text"] not in probe_texts]
    subset, prefix, tok = data / "train.jsonl", str(data / "train"), str(data / "tokenizer.model")
    # The unique part: whole documents until (1 - R) of the tokens. The tokenizer is trained on it alone,
    # so the copies are measured in tokens of the same tokenizer and fill R of the total exactly (a
    # tokenizer trained with the copies would compress them, and the share would drift below R).
    target, chars_per_token = (1 - spec.redundancy) * spec.unique_tokens, 4.0
    for _ in range(3):
        unique = _prefix(pool, target * chars_per_token)
        atomic.write_bytes(subset, "".join(json.dumps(d) + "\n" for d in unique).encode())
        train_tokenizer([str(subset)], tok, spec.vocab_size)
        lengths = [len(ids) + 1 for ids in Tokenizer(tok).encode([d["text"] for d in unique])]  # + <eod>
        chars_per_token *= target / sum(lengths)
        if abs(sum(lengths) / target - 1) < 0.05:
            break
    docs, stats = redundant.build(unique, lengths, spec.redundancy, spec.subset_seed)
    atomic.write_bytes(subset, "".join(json.dumps(d) + "\n" for d in docs).encode())
    meta = preprocess([str(subset)], prefix, tok, progress=False)
    if meta["num_documents"] != len(docs):
        raise AssertionError("preprocess dropped documents; the repeat labels would not line up")
    repeats = np.array([d["repeat_of"] is not None for d in docs])
    dataset = open_dataset(prefix)  # held: its mmap must outlive the lengths read from it
    share = float(dataset.indexed.sequence_lengths[repeats].sum()) / meta["num_tokens"]
    atomic.save_npy(prefix + ".repeat.npy", repeats.astype(np.uint8))
    probe_info = _write_probes(probes, data, tok) if probes else {}
    heldout = _heldout(valid, Tokenizer(tok), spec)
    atomic.write_bytes(data / "heldout.jsonl", "".join(json.dumps(d) + "\n" for d in heldout).encode())
    return {
        "train_documents": len(docs),
        "train_tokens": meta["num_tokens"],
        "repeat_token_share": share,
        "left_out_as_heldout": left_out,
        "heldout_documents": len(heldout),
        "heldout_sources": sorted({d["source"] for d in heldout}),
        "builder": stats.as_dict(),
        **probe_info,
    }


#: The fewest blocks a comparison's probe set holds: twice the least a run accepts
#: (:data:`~lfr_ds.lfr.probes.MIN_PROBE_BLOCKS`), so the character estimate's error cannot take it below.
#: lfr-preprocess's floor (512 blocks) suits real corpora; a comparison's is a few hundred thousand tokens,
#: where 512 blocks of the small preset would be more than a third of it. The absorbed test's quantile comes
#: from probes scored per step times steps, not from the set's size.
PROBE_MIN_BLOCKS = 2 * MIN_PROBE_BLOCKS


def _probe_chars(spec: CorpusSpec) -> float:
    """Characters of pool text for the probe set: its tokens at ~4 characters a token, with a fifth to spare
    (the tokenizer is trained after the split, on the training subset)."""
    return 1.2 * 4.0 * max(spec.probe_fraction * spec.unique_tokens, PROBE_MIN_BLOCKS * (spec.seq_length + 1))


def _write_probes(probes: list[dict], data: Path, tok: str) -> dict:
    """``data/probe.*``, tokenized with the training subset's tokenizer."""
    atomic.write_bytes(data / "probe.jsonl", "".join(json.dumps(d) + "\n" for d in probes).encode())
    meta = preprocess([str(data / "probe.jsonl")], str(data / "probe"), tok, progress=False)
    return {"probe_documents": meta["num_documents"], "probe_tokens": meta["num_tokens"]}


def _prefix(pool: list[dict], chars: float) -> list[dict]:
    """Whole documents from the start of ``pool`` until about ``chars`` characters."""
    out, have = [], 0
    for d in pool:
        if have >= chars:
            break
        out.append(d)
        have += len(d["text"])
    return out


def _read(path: str, split: str | None = None) -> list[dict]:
    return [
        {"text": d.text, "source": d.source or "unknown"} for d in iter_documents([path], DEFAULT_READ, split) if d.text
    ]


def _heldout(valid: list[dict], tokenizer: Tokenizer, spec: CorpusSpec) -> list[dict]:
    """Whole documents of every source, each source in proportion to its tokens (see the module docstring)."""
    order = list(range(len(valid)))
    random.Random(spec.subset_seed).shuffle(order)
    lengths = [len(ids) + 1 for ids in tokenizer.encode([valid[i]["text"] for i in order])]  # + <eod>
    total = sum(lengths)
    need = _HELDOUT_SLACK * (spec.heldout_blocks * spec.seq_length + 1)
    if total < need:
        raise UserError(
            f"--valid {spec.valid}: {total:,} tokens, fewer than the {need:,.0f} that "
            f"{spec.heldout_blocks} held-out blocks of {spec.seq_length} need; give more text or fewer --valid-blocks"
        )
    by_source: dict[str, int] = {}
    for i, n in zip(order, lengths, strict=True):
        by_source[valid[i]["source"]] = by_source.get(valid[i]["source"], 0) + n
    quota = {s: n / total * need for s, n in by_source.items()}
    taken = []
    for i, n in zip(order, lengths, strict=True):
        src = valid[i]["source"]
        if quota[src] > 0:
            taken.append(valid[i])
            quota[src] -= n
    return taken
