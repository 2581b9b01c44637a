"""Held-out loss and perplexity, overall and per source.

The unit scored is the training block: ``seq_length + 1`` tokens of a document stream where every
document ends with ``<eod>``, inputs plus labels shifted by one, so the held-out loss is the training
loss (``lm loss``) measured on data the model has not trained on, context across document boundaries
included. Every label token counts once; the loss is the mean negative log-likelihood in nats per token
over the model's full (padded) output vocabulary, exactly the training objective.

Two kinds of held-out data:

* a ``.bin/.idx`` dataset from ``lfr-preprocess``, or a blend of them (as ``data.path``: then each
  corpus gives up to ``max_blocks`` blocks and the loss is reported per corpus): its blocks are megatron-core's,
  cut with the run's
  ``data.seed`` (:class:`~lfr_ds.data.blocks.BlockView`); with ``max_blocks`` a fixed, evenly spaced
  subset is scored. A block's tokens all count towards the source of its middle token
  (:attr:`~lfr_ds.data.blocks.BlockView.block_source`).
* raw text (any input lfr-preprocess reads: ``.jsonl``, ``.txt``, compressed or not, ``.parquet``, a
  directory or a glob of them), tokenized on the fly with the run's tokenizer: the
  documents, in a seeded shuffle (files such as webmix's ``valid.jsonl`` are grouped by source, so a
  prefix of file order would be one source), are joined into one stream and cut every ``seq_length``
  tokens. The last, short block is padded and its padding masked, so every token but the stream's
  first is scored once. With ``max_blocks``, the first blocks of the shuffled stream are scored (only
  the documents they need are tokenized). Each token counts towards its own document's ``source``.

:func:`heldout_loss` is the core; the training loop calls it with the DeepSpeed engine on every rank.
"""

from __future__ import annotations

import glob
import math
import os
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
import torch.distributed as dist

from lfr_ds.data.inputs import SUFFIXES
from lfr_ds.data.reader import DEFAULT_READ, iter_documents
from lfr_ds.data.tokenizer import EOD_ID, PAD_ID, Tokenizer
from lfr_ds.errors import UserError

#: ``token_source`` value of a label position that is not scored (padding of the last raw-text block).
NOT_SCORED = -1
#: Documents tokenized per sentencepiece call when reading raw text.
_ENCODE_BATCH = 256


@dataclass
class HeldOutSet:
    """Blocks to score, read on demand."""

    name: str
    sources: list[str]
    num_blocks: int
    seq_length: int
    read: Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]]
    """Block indices ``[b]`` -> (tokens ``[b, seq_length + 1]`` int64, source of each label ``[b, seq_length]``
    int64 as an index into :attr:`sources`, ``NOT_SCORED`` where the label is padding)."""


def is_raw_text(path: str) -> bool:
    """Raw text (a file of a known type, a directory, a glob) rather than a dataset prefix."""
    if os.path.exists(path + ".idx"):
        return False
    return path.endswith(SUFFIXES) or os.path.isdir(path) or glob.has_magic(path)


def load_heldout(
    path: str,
    seq_length: int,
    *,
    tokenizer: Tokenizer | None = None,
    max_blocks: int | None = None,
    seed: int = 1234,
    rank: int = 0,
    barrier: Callable[[], None] | None = None,
) -> HeldOutSet:
    """Held-out blocks from a dataset prefix or a raw-text file (by suffix); see the module docstring.

    ``tokenizer`` is required for raw text and checked against a dataset's sidecar. ``seed`` is the
    run's ``data.seed``. In a distributed job pass ``rank`` and ``barrier``: rank 0 builds a dataset's
    block index cache first (as :class:`~lfr_ds.data.blocks.BlockView` does for training data).
    """
    if max_blocks is not None and max_blocks < 1:
        raise UserError(f"max_blocks {max_blocks}: must be at least 1")
    if isinstance(path, str) and is_raw_text(path):
        if tokenizer is None:
            raise ValueError("a tokenizer is needed to score raw text")
        return _raw_text(path, seq_length, tokenizer, max_blocks, seed)
    return _dataset(path, seq_length, tokenizer, max_blocks, seed, rank, barrier)


def _dataset(path, seq_length, tokenizer, max_blocks, seed, rank, barrier) -> HeldOutSet:
    from lfr_ds.data.blend import Blend, BlendView

    blend = Blend(path, "eval.valid_path")
    if tokenizer is not None:
        blend.check_tokenizer(tokenizer)
    view = BlendView(blend, seq_length, seed, rank=rank, barrier=barrier)
    # Per corpus, evenly spaced over its whole (document-shuffled) stream: a fixed, representative subset.
    block_ids = []
    for c in range(view.corpora.count):
        sl = view.corpora.slice(c)
        size = sl.stop - sl.start
        n = size if max_blocks is None else min(max_blocks, size)
        block_ids.append(sl.start + np.arange(n, dtype=np.int64) * size // n)
    block_ids = np.concatenate(block_ids)
    # A blend of several corpora is scored per corpus (blend, issue 20); one dataset per source.
    many = view.corpora.count > 1
    label = (view.corpora.block_corpus() if many else view.block_source).astype(np.int64)

    def read(indices: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        ids = block_ids[indices]
        return view.batch(ids), np.repeat(label[ids][:, None], seq_length, axis=1)

    name = "+".join(blend.names) if many else os.path.basename(blend.prefix)
    return HeldOutSet(name, blend.names if many else blend.sources, len(block_ids), seq_length, read)


def _raw_text(path, seq_length, tokenizer, max_blocks, seed) -> HeldOutSet:
    docs = [d for d in iter_documents([path], DEFAULT_READ) if d.text]
    if not docs:
        raise UserError(f"{path}: no documents found; the file holds no non-empty text")
    sources = sorted({d.source or "unknown" for d in docs})
    code = {s: i for i, s in enumerate(sources)}
    order = np.random.default_rng(seed).permutation(len(docs))
    # Tokenize in shuffled order until the stream covers the blocks asked for (all of them by default).
    need = math.inf if max_blocks is None else max_blocks * seq_length + 1
    tokens, source, have = [], [], 0
    for start in range(0, len(order), _ENCODE_BATCH):
        batch = [docs[i] for i in order[start : start + _ENCODE_BATCH]]
        for doc, ids in zip(batch, tokenizer.encode([d.text for d in batch]), strict=True):
            tokens.append(np.asarray([*ids, EOD_ID], dtype=np.int64))
            source.append(np.full(len(ids) + 1, code[doc.source or "unknown"], dtype=np.int64))
            have += len(ids) + 1
        if have >= need:
            break
    stream, stream_source = np.concatenate(tokens), np.concatenate(source)
    n = -(-(len(stream) - 1) // seq_length)  # every label once; the last block may be short
    if max_blocks is not None:
        n = min(n, max_blocks)
    if n < 1:
        raise UserError(f"{path}: a single token is not enough to score; give more text")
    # Pad the stream so the last block is whole; padded labels are not scored.
    total = n * seq_length + 1
    pad = max(0, total - len(stream))
    stream = np.concatenate([stream, np.full(pad, PAD_ID, np.int64)])[:total]
    stream_source = np.concatenate([stream_source, np.full(pad, NOT_SCORED, np.int64)])[:total]
    starts = np.arange(n) * seq_length
    block_tokens = stream[starts[:, None] + np.arange(seq_length + 1)]
    label_source = stream_source[starts[:, None] + np.arange(1, seq_length + 1)]

    def read(indices: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return block_tokens[indices], label_source[indices]

    return HeldOutSet(os.path.basename(path), sources, n, seq_length, read)


@torch.no_grad()
def heldout_loss(
    model: torch.nn.Module, data: HeldOutSet, *, micro_batch_size: int = 8, progress: bool = False
) -> dict:
    """Mean loss (nats/token), perplexity and token count of ``data``, overall and per source.

    ``model`` is a GPTModel or a DeepSpeed engine wrapping one; it is put in eval mode for the call and
    returned to the mode it was in. Under torch.distributed every rank must call this (ZeRO-3 gathers
    parameters in each forward): the micro-batches are dealt out round-robin, each rank runs the same
    number of forward passes, and the sums are all-reduced, so every rank returns the same numbers.
    """
    world, rank = (dist.get_world_size(), dist.get_rank()) if dist.is_initialized() else (1, 0)
    device = next(model.parameters()).device
    batches = [
        np.arange(i, min(i + micro_batch_size, data.num_blocks)) for i in range(0, data.num_blocks, micro_batch_size)
    ]
    rounds = -(-len(batches) // world)
    # Per source: summed loss and tokens (float64: sums of millions of tokens keep their precision).
    sums = torch.zeros(len(data.sources), 2, dtype=torch.float64, device=device)
    was_training = model.training
    model.eval()
    try:
        bar = progress_bar(rounds, f"valid {data.name}", progress and rank == 0)
        for r in range(rounds):
            k = r * world + rank
            # A rank with no batch left in the last round repeats batch 0 and discards it, so that
            # every rank runs the same forward passes.
            tokens, label_source = data.read(batches[k if k < len(batches) else 0])
            tokens = torch.from_numpy(tokens).to(device)
            label_source = torch.from_numpy(label_source).to(device)
            b, s = label_source.shape
            position_ids = torch.arange(s, device=device).unsqueeze(0).expand(b, s)
            token_loss = model(tokens[:, :-1], position_ids, None, labels=tokens[:, 1:]).double()
            if k < len(batches):
                scored = label_source != NOT_SCORED
                index = label_source[scored]
                sums[:, 0].index_add_(0, index, token_loss[scored])
                sums[:, 1].index_add_(0, index, torch.ones_like(token_loss[scored]))
            bar.update()
        bar.close()
    finally:
        model.train(was_training)
    if world > 1:
        dist.all_reduce(sums)
    sums = sums.cpu().numpy()
    per_source = {
        name: _summary(loss, tokens) for name, (loss, tokens) in zip(data.sources, sums, strict=True) if tokens > 0
    }
    return {**_summary(*sums.sum(axis=0)), "blocks": data.num_blocks, "per_source": per_source}


def _summary(loss_sum: float, tokens: float) -> dict:
    loss = float(loss_sum / max(tokens, 1))
    return {"loss": loss, "ppl": math.exp(loss), "tokens": int(tokens)}


def progress_bar(total: int, desc: str, enabled: bool):
    """A tqdm bar on stderr, shown only on a terminal."""
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit="batch", leave=False, disable=None if enabled else True)
