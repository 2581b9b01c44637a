"""The sentencepiece BPE tokenizer: training, and the wrapper every other module uses.

Normalisation is the identity: no Unicode normalisation, no whitespace collapsing, no dummy prefix, and
``"\\n"`` is a piece of its own. With byte fallback, any UTF-8 text therefore decodes back to exactly
itself (the round-trip test checks every webmix document). Special ids are fixed: 0 ``<pad>``,
1 ``<unk>``, 2 ``<eod>`` (ends every document); there is no BOS.

Training is deterministic: sentencepiece sees the documents in file order (no sampling) unless
``max_docs`` caps them, and then an evenly spaced, seed-free subset is used.
"""

from __future__ import annotations

import hashlib
import io
import os
import sys
import time
from collections.abc import Sequence
from functools import cached_property
from pathlib import Path

import sentencepiece as spm

from lfr_ds import atomic
from lfr_ds.data.inputs import check_inputs
from lfr_ds.data.reader import DEFAULT_READ, ReadOptions, add_read_arguments, iter_documents, read_options
from lfr_ds.errors import ArgumentParser, UserError, cli

PAD_ID, UNK_ID, EOD_ID = 0, 1, 2
#: Pieces that exist whatever the corpus: 3 specials, the newline piece, and 256 byte-fallback pieces.
MIN_VOCAB = 3 + 1 + 256
#: megatron-core's int32/uint16 switch: token ids must fit the dataset dtype.
MAX_VOCAB = 1 << 31


class Tokenizer:
    """A trained sentencepiece model, duck-typed to what megatron-core's GPTDataset asks of a tokenizer
    (``vocab_size``, ``eod``, ``pad``, ``unique_identifiers``)."""

    def __init__(self, model_path: str | os.PathLike) -> None:
        self.path = os.fspath(model_path)
        if not os.path.isfile(self.path):
            raise UserError(f"{self.path}: tokenizer model not found; train one with lfr-train-tokenizer")
        self.model_bytes = Path(self.path).read_bytes()
        self.sp = spm.SentencePieceProcessor()
        try:
            self.sp.LoadFromSerializedProto(self.model_bytes)
        except Exception:
            raise UserError(f"{self.path}: not a sentencepiece model; train one with lfr-train-tokenizer") from None
        if self.sp.piece_to_id("<eod>") != EOD_ID or self.sp.pad_id() != PAD_ID:
            raise UserError(
                f"{self.path}: not an lfr-ds tokenizer (no <eod> at id {EOD_ID}); train one with lfr-train-tokenizer"
            )

    @cached_property
    def sha256(self) -> str:
        return hashlib.sha256(self.model_bytes).hexdigest()

    @property
    def vocab_size(self) -> int:
        return self.sp.get_piece_size()

    @property
    def eod(self) -> int:
        return EOD_ID

    @property
    def pad(self) -> int:
        return PAD_ID

    @property
    def unique_identifiers(self) -> dict[str, str | int]:
        # megatron-core hashes these into its index-cache key, so a new tokenizer never reuses old indices.
        return {"class": "lfr_ds.SentencePieceBPE", "sha256": self.sha256, "vocab_size": self.vocab_size}

    def identity(self) -> dict[str, str | int]:
        """What a dataset's sidecar records, so a dataset is never silently paired with another tokenizer."""
        return {
            "sha256": self.sha256,
            "vocab_size": self.vocab_size,
            "eod": EOD_ID,
            "pad": PAD_ID,
            "path": os.path.abspath(self.path),
        }

    def encode(self, texts: list[str]) -> list[list[int]]:
        # One thread: parallelism comes from worker processes (sentencepiece would otherwise take every
        # core per call, and N workers would oversubscribe the machine N-fold).
        return self.sp.encode(texts, num_threads=1)

    def decode(self, ids: Sequence[int]) -> str:
        return self.sp.decode([int(i) for i in ids])

    def render(self, ids: Sequence[int]) -> str:
        """Decode for people: document boundaries (``<eod>``, which ``decode`` drops) shown as a marker."""
        ids = [int(i) for i in ids]
        parts, start = [], 0
        for pos, i in enumerate(ids):
            if i == EOD_ID:
                parts.append(self.sp.decode(ids[start:pos]))
                start = pos + 1
        parts.append(self.sp.decode(ids[start:]))
        return " ⟨eod⟩ ".join(parts)


def train_tokenizer(
    inputs: list[str],
    output: str,
    vocab_size: int,
    *,
    opts: ReadOptions = DEFAULT_READ,
    max_docs: int | None = None,
    threads: int = os.cpu_count() or 1,
    split: str | None = None,
) -> Tokenizer:
    """Train a byte-fallback BPE model on ``inputs`` (files, directories, globs; ``split`` picks a split of
    directories and globs) and write ``output`` (a ``.model`` file) atomically."""
    inputs = check_inputs(inputs, split)
    _check_output(output)
    if not MIN_VOCAB < vocab_size < MAX_VOCAB:
        raise UserError(
            f"--vocab-size {vocab_size}: must be between {MIN_VOCAB + 1} (specials + 256 bytes) and {MAX_VOCAB - 1}"
        )
    texts = [d.text for d in iter_documents(inputs, opts) if d.text]
    if not texts:
        raise UserError(f"{', '.join(inputs)}: no documents found; the input holds no non-empty text")
    if max_docs is not None and len(texts) > max_docs:
        step = len(texts) / max_docs
        texts = [texts[int(i * step)] for i in range(max_docs)]
    model = io.BytesIO()
    try:
        spm.SentencePieceTrainer.train(
            sentence_iterator=iter(texts),
            model_writer=model,
            model_type="bpe",
            vocab_size=vocab_size,
            byte_fallback=True,
            normalization_rule_name="identity",
            remove_extra_whitespaces=False,
            add_dummy_prefix=False,
            allow_whitespace_only_pieces=True,
            split_digits=True,
            user_defined_symbols=["\n"],
            pad_id=PAD_ID,
            unk_id=UNK_ID,
            eos_id=EOD_ID,
            bos_id=-1,
            eos_piece="<eod>",
            # Whole documents are training sentences; the 4 KB default would silently skip long ones.
            max_sentence_length=max(len(t.encode()) for t in texts) + 1,
            input_sentence_size=0,
            num_threads=threads,
            minloglevel=2,
        )
    except RuntimeError as e:
        msg = str(e).strip().splitlines()[-1] if str(e).strip() else "sentencepiece training failed"
        if "Vocabulary size" in msg or "vocab_size" in msg:
            raise UserError(f"--vocab-size {vocab_size}: {msg.split('] ')[-1]}") from None
        raise UserError(f"tokenizer training failed: {msg}") from None
    atomic.write_bytes(output, model.getvalue())
    return Tokenizer(output)


def _check_output(output: str) -> None:
    parent = os.path.dirname(os.path.abspath(output))
    if not os.path.isdir(parent):
        raise UserError(f"{output}: output directory {parent} does not exist; create it first")


@cli
def main(argv: Sequence[str] | None = None) -> int:
    p = ArgumentParser(
        prog="lfr-train-tokenizer",
        description="Train a deterministic sentencepiece BPE tokenizer (byte fallback, <eod> id 2) on raw text.",
    )
    add_read_arguments(p, sources=False)
    p.add_argument("--output", "-o", required=True, help="path of the .model file to write")
    p.add_argument("--vocab-size", type=int, default=8192, help="vocabulary size (default: 8192)")
    p.add_argument(
        "--max-docs",
        type=int,
        default=None,
        help="train on an evenly spaced subset of at most this many documents",
    )
    args = p.parse_args(argv)
    t0 = time.time()
    tok = train_tokenizer(
        args.inputs,
        args.output,
        args.vocab_size,
        opts=read_options(args),
        max_docs=args.max_docs,
        split=args.split,
    )
    print(
        f"wrote {args.output}: vocab {tok.vocab_size}, sha256 {tok.sha256[:12]}, {time.time() - t0:.1f}s",
        file=sys.stderr,
    )
    return 0
