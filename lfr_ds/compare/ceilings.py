"""The two experiment-only ceilings of a comparison on a corpus with copies: what each needs, built as data.

Neither is a training option; both need copy labels (:meth:`Corpus.repeats`): the redundancy builder's
(``--labels builder``, the default: ``lfr-compare`` refuses the ceilings at ``--redundancy 0``), or those of
``lfr-dedup`` run on the training documents (``--labels lfr-dedup``, any corpus; :func:`with_labels`): the
documents it removes are the copies. The tool's labels get their own dedup dataset and oracle masks
(``dedup-lfr-dedup``, ``oracle-lfr-dedup``), so runs on either labels never mix.

- ``dedup``: random sampling over the originals alone, for the same steps as random: what deduplicating
  before training gives, the ceiling of any removal of copies. Its data is a second dataset beside the
  comparison's training prefix, ``OUT/data/dedup.{bin,idx,...}``: the training corpus' documents that the
  builder did not make as copies, in the same order and tokenized by the same tokenizer (so token for
  token the originals), with ``dedup.train_doc.npy`` (written last: it marks the build complete) giving
  each of its documents' index in the training dataset.
- ``oracle``: LFR's own schedule, but every Focus drops exactly the copy blocks and keeps every other
  block, through the training hook ``lfr.drop_mask`` (:mod:`lfr_ds.lfr.drop_mask`). A **copy block** is a
  block more than :data:`REPEAT_BLOCK` of whose label tokens come from documents the builder made as
  copies: the same labels the results score every arm's drops against ("dropped that were repeats"), so
  the oracle's drops are those labels exactly (precision and recall 1). Block ids depend on the seed
  (the document shuffle of the block view), so each seed has its own mask,
  ``OUT/data/oracle/seed<N>.drop.npy``.
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np

from lfr_ds import atomic
from lfr_ds.compare.corpus import Corpus
from lfr_ds.data.blocks import BlockView
from lfr_ds.data.dataset import open_dataset
from lfr_ds.data.dedup import dedup, read_removed
from lfr_ds.data.preprocess import preprocess
from lfr_ds.errors import UserError
from lfr_ds.lfr.drop_mask import write_drop_mask

#: Arms that need copy labels.
ARMS = ("dedup", "oracle")
#: Whose copy labels: the redundancy builder's, or lfr-dedup's (its defaults) on the training documents.
LABELS = ("builder", "lfr-dedup")
#: A block is a repeat (copy) block when more than this share of its tokens were copied by the builder.
REPEAT_BLOCK = 0.5


def prepare(corpus: Corpus, arms: list[str], seeds: list[int], seq_length: int) -> None:
    """Build what ``arms``' ceilings need (once per comparison; reused after): the dedup dataset, each
    seed's oracle mask. Refuses a ceiling on a corpus whose builder made no copies: nothing to remove."""
    wanted = [a for a in arms if a in ARMS]
    if wanted and not corpus.repeats().any():
        why = "its builder made none" if corpus.labels == "builder" else "lfr-dedup found none"
        raise UserError(
            f"--arms {','.join(wanted)}: this corpus has no copies to remove ({why}); "
            "give --redundancy R > 0 with a training set large enough to copy from"
        )
    if "dedup" in arms:
        _build_dedup(corpus)
    if "oracle" in arms:
        for seed in seeds:
            _write_oracle_mask(corpus, seq_length, seed)


def _labelled(corpus: Corpus, name: str) -> str:
    return name if corpus.labels == "builder" else f"{name}-{corpus.labels}"


def dedup_prefix(corpus: Corpus) -> str:
    """The originals-only dataset's prefix (see the module docstring)."""
    return str(Path(corpus.prefix).with_name(_labelled(corpus, "dedup")))


def _build_dedup(corpus: Corpus) -> None:
    prefix = dedup_prefix(corpus)
    if Path(prefix + ".train_doc.npy").is_file():
        return
    docs = _documents(corpus)
    originals = np.flatnonzero(~corpus.repeats())
    if corpus.labels == "builder" and not np.array_equal(
        originals, [i for i, d in enumerate(docs) if d["repeat_of"] is None]
    ):
        raise AssertionError(f"{corpus.prefix}.jsonl and its repeat labels disagree")
    subset = Path(prefix + ".jsonl")
    atomic.write_bytes(subset, "".join(json.dumps(docs[i]) + "\n" for i in originals).encode())
    meta = preprocess([str(subset)], prefix, corpus.tokenizer, progress=False)
    if meta["num_documents"] != len(originals):
        raise AssertionError("preprocess dropped documents; the dedup dataset would not line up")
    atomic.save_npy(prefix + ".train_doc.npy", np.array(originals, dtype=np.int64))


def run_prefix(corpus: Corpus, data_path: str) -> str:
    """Where the dataset a run recorded as ``data.path`` is now: the dedup one or the comparison's (the
    comparison may have moved since the run was made)."""
    return dedup_prefix(corpus) if Path(data_path).name == Path(dedup_prefix(corpus)).name else corpus.prefix


def train_docs(corpus: Corpus, prefix: str) -> np.ndarray | None:
    """For a run on ``prefix``: each of its documents' index in the training dataset (``None``: it is the
    training dataset itself)."""
    if prefix != dedup_prefix(corpus):
        return None
    return np.load(prefix + ".train_doc.npy", allow_pickle=False)


def copy_labels(corpus: Corpus, prefix: str) -> np.ndarray:
    """Per document of the dataset at ``prefix`` (the training one or the dedup one): whether the builder
    made it as a copy."""
    repeats = corpus.repeats()
    docs = train_docs(corpus, prefix)
    return repeats if docs is None else repeats[docs]


def mask_path(corpus: Corpus, seed: int) -> Path:
    return Path(corpus.prefix).parent / _labelled(corpus, "oracle") / f"seed{seed}.drop.npy"


def _write_oracle_mask(corpus: Corpus, seq_length: int, seed: int) -> Path:
    """Seed ``seed``'s oracle mask: the copy blocks of the training dataset as a run of that seed cuts it."""
    path = mask_path(corpus, seed)
    if not path.is_file():
        share = BlockView(open_dataset(corpus.prefix), seq_length, seed).token_share(corpus.repeats())
        path.parent.mkdir(parents=True, exist_ok=True)
        write_drop_mask(path, share > REPEAT_BLOCK)
    return path


def _documents(corpus: Corpus) -> list[dict]:
    return [json.loads(line) for line in Path(corpus.prefix).with_suffix(".jsonl").read_text().splitlines() if line]


def with_labels(corpus: Corpus, labels: str) -> Corpus:
    """``corpus`` with ``labels``' copy labels. For ``lfr-dedup``: the tool (its defaults) runs once on the training
    documents, into ``OUT/data/lfr-dedup/``, and the documents it removes are the copies
    (``train.lfr-dedup.repeat.npy``, written last)."""
    if labels == "builder":
        return corpus
    path = Path(f"{corpus.prefix}.{labels}.repeat.npy")
    if not path.is_file():
        out = Path(corpus.prefix).with_name(labels)
        dedup([corpus.prefix + ".jsonl"], out, progress=False)
        ids, _, documents = read_removed(str(out / "removed.txt"))
        if documents != open_dataset(corpus.prefix).num_documents:
            raise AssertionError(f"{out}/removed.txt and {corpus.prefix} do not line up")
        mask = np.zeros(documents, dtype=np.uint8)
        mask[ids] = 1
        atomic.save_npy(path, mask)
    return replace(corpus, labels=labels)


def labels_info(corpus: Corpus) -> dict:
    """For the results: whose labels, the share of training tokens they call copies, and for lfr-dedup's on a corpus
    the builder made copies in, their precision and recall against the builder's (:func:`score`)."""
    dataset = open_dataset(corpus.prefix)  # held: its mmap must outlive the lengths read from it
    lengths = dataset.indexed.sequence_lengths
    info = {"labels": corpus.labels, "repeat_token_share": float(lengths[corpus.repeats()].sum() / lengths.sum())}
    docs = _documents(corpus)
    if corpus.labels == "lfr-dedup" and any(d["repeat_of"] is not None for d in docs):
        info["against_builder"] = score(
            docs, kept_of(str(Path(corpus.prefix).with_name(corpus.labels) / "removed.txt"))
        )
    return info


def kept_of(removed_txt: str) -> np.ndarray:
    """Per document: the document kept in its place (itself when kept), from an lfr-dedup ``removed.txt``."""
    ids, kept_ids, documents = read_removed(removed_txt)
    kept = np.arange(documents)
    kept[ids] = kept_ids
    return kept


def score(docs: list[dict], kept: np.ndarray) -> dict:
    """lfr-dedup's clusters against the builder's copies (``docs``: ``{"text", "repeat_of"}``): **recall** of exact
    (same text) and of near copies: the share found in the cluster of the document they copy; **precision**: the
    share of removed documents that copy, or are copied by, the document kept in their place."""
    group = np.array([i if d["repeat_of"] is None else d["repeat_of"] for i, d in enumerate(docs)])
    copies = np.array([d["repeat_of"] is not None for d in docs])
    exact = copies & np.array([d["repeat_of"] is not None and d["text"] == docs[d["repeat_of"]]["text"] for d in docs])
    found = kept == kept[group]
    removed = kept != np.arange(len(kept))
    right = removed & (group == group[kept])
    return {
        "exact_copies": int(exact.sum()),
        "near_copies": int((copies & ~exact).sum()),
        "removed": int(removed.sum()),
        "recall_exact": float(found[exact].mean()) if exact.any() else None,
        "recall_near": float(found[copies & ~exact].mean()) if (copies & ~exact).any() else None,
        "precision": float(right.sum() / removed.sum()) if removed.any() else None,
    }
