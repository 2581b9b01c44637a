"""Corpora with known difficulty, and the small model that learns them in seconds: shared by the LFR
and the multi-node / fault-tolerance tests (each folder's conftest builds its own once per session)."""

from __future__ import annotations

from lfr_ds import synthetic
from lfr_ds.data.preprocess import preprocess
from lfr_ds.data.tokenizer import train_tokenizer

SMALL_MODEL = synthetic.SMALL_MODEL


def planted(tmp_path_factory, docs: int, name: str) -> str:
    """A planted corpus of ``docs`` documents, its 512-piece tokenizer and dataset; returns the prefix."""
    d = tmp_path_factory.mktemp(name)
    corpus = d / "planted.jsonl"
    synthetic.write_jsonl(corpus, synthetic.generate(docs, seed=0))
    train_tokenizer([str(corpus)], str(d / "tok.model"), 512)
    preprocess([str(corpus)], str(d / "data"), str(d / "tok.model"), progress=False)
    return str(d / "data")
