"""Zero-shot tasks scored by log-likelihood, defined as EleutherAI's lm-evaluation-harness defines them.

Every task reduces to *requests*: a context and a continuation; the score of a request is the summed
log-probability of the continuation's tokens given the context, and whether greedy decoding would
have produced exactly those tokens. As in the harness (``_encode_pair``), trailing whitespace of the
context moves to the continuation, ``context + continuation`` is tokenized as one string and the
continuation is whatever follows the context's own tokens; an empty (or all-whitespace) context
becomes ``<eod>``, so the first token is scored too. Log-probabilities are over the model's full (padded) output
vocabulary, as in training.

* **multiple choice** (``{"context", "choices", "label"}``): each choice is a continuation of the
  context, literally (include its leading space). ``acc``: the choice with the highest total
  log-likelihood is the label; ``acc_norm``: the same with each log-likelihood divided by the
  choice's length in characters.
* **BLiMP** (``{"sentence_good", "sentence_bad"}``): each sentence is a continuation of ``<eod>``;
  ``acc``: the good sentence has the higher total log-probability. Reported per file and over all pairs.
* **LAMBADA** (``{"text"}``): the continuation is the passage's last word (with the space before it),
  the context everything before. ``acc``: greedy decoding reproduces every token of the word;
  ``ppl``: ``exp(-mean log-likelihood of the word)`` over passages (the harness's per-word perplexity).

Requests are scored longest first in padded batches, like the harness. A request longer than the
model's ``seq_length + 1`` tokens is cut from the left (the start of the context is dropped); a
continuation longer than ``seq_length`` tokens has only its last ``seq_length`` tokens scored.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from lfr_ds.data.reader import BadLine, check_encodable, json_lines
from lfr_ds.data.tokenizer import EOD_ID, PAD_ID, Tokenizer
from lfr_ds.errors import UserError
from lfr_ds.eval.perplexity import progress_bar


@dataclass(frozen=True)
class Score:
    """The model's verdict on one continuation."""

    logprob: float
    """Summed log-probability (nats) of the continuation's tokens."""
    greedy: bool
    """Greedy decoding, token by token, would produce exactly the continuation."""


# ---- reading task files ----------------------------------------------------------------------------

_KINDS = {str: "a string", int: "an integer", list: "a list"}


def read_jsonl(path: str | os.PathLike, fields: dict[str, type]) -> list[tuple[int, dict]]:
    """(line number, object) for each JSON line of ``path``; each must have ``fields`` with the given
    types. Bad input raises a one-line :class:`UserError` naming ``file:line``."""
    path = str(path)
    if not os.path.isfile(path):
        raise UserError(f"{path}: file not found; check the path")
    rows = []
    for lineno, row in json_lines(path):
        for key, kind in fields.items():
            if not isinstance(row, dict) or key not in row:
                raise UserError(f"{path}:{lineno}: no {key!r} field; each line needs {', '.join(fields)}")
            if not isinstance(row[key], kind) or isinstance(row[key], bool):
                raise UserError(f"{path}:{lineno}: {key!r} must be {_KINDS[kind]}")
            try:
                check_encodable(*[v for v in (row[key] if kind is list else [row[key]]) if isinstance(v, str)])
            except BadLine as e:
                raise UserError(f"{path}:{lineno}: {e}") from None
        rows.append((lineno, row))
    if not rows:
        raise UserError(f"{path}: no examples found; the file is empty")
    return rows


@dataclass(frozen=True)
class MCItem:
    context: str
    choices: list[str]
    label: int


def load_mc(path: str | os.PathLike) -> list[MCItem]:
    """Multiple-choice items ``{"context": str, "choices": [str, ...], "label": int}``."""
    items = []
    for lineno, row in read_jsonl(path, {"context": str, "choices": list, "label": int}):
        choices, label = row["choices"], row["label"]
        where = f"{path}:{lineno}"
        if len(choices) < 2 or not all(isinstance(c, str) and c for c in choices):
            raise UserError(f"{where}: 'choices' must be at least two non-empty strings")
        if not 0 <= label < len(choices):
            raise UserError(f"{where}: 'label' {label} is not an index into its {len(choices)} choices")
        items.append(MCItem(row["context"], choices, label))
    return items


def load_blimp(paths: Sequence[str | os.PathLike]) -> dict[str, list[tuple[str, str]]]:
    """(good, bad) sentence pairs per file; a directory stands for its ``*.jsonl`` files."""
    files: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            found = sorted(p.glob("*.jsonl"))
            if not found:
                raise UserError(f"{p}: directory holds no .jsonl files; give BLiMP's directory or its files")
            files.extend(found)
        else:
            files.append(p)
    return {
        f.stem: [
            (r["sentence_good"], r["sentence_bad"])
            for _, r in read_jsonl(f, {"sentence_good": str, "sentence_bad": str})
        ]
        for f in files
    }


def load_lambada(path: str | os.PathLike) -> list[tuple[str, str]]:
    """(context, last word with its leading space) per passage."""
    pairs = []
    for lineno, row in read_jsonl(path, {"text": str}):
        context, space, word = row["text"].rpartition(" ")
        if not space or not word:
            raise UserError(f"{path}:{lineno}: the passage has no last word after a space")
        pairs.append((context, " " + word))
    return pairs


# ---- scoring ---------------------------------------------------------------------------------------


def encode_pair(tokenizer: Tokenizer, context: str, continuation: str) -> tuple[list[int], list[int]]:
    """Context and continuation tokens, split as lm-evaluation-harness splits them (see the module docstring)."""
    spaces = len(context) - len(context.rstrip())
    if spaces:
        context, continuation = context[:-spaces], context[-spaces:] + continuation
    if not context:
        return [EOD_ID], tokenizer.encode([continuation])[0]
    whole, context_ids = tokenizer.encode([context + continuation, context])
    # A continuation that merges into the context's last token leaves nothing to score (the harness
    # fails there); it is then scored as tokenized on its own.
    return context_ids, whole[len(context_ids) :] or tokenizer.encode([continuation])[0]


@torch.no_grad()
def score_requests(
    model: torch.nn.Module,
    requests: Sequence[tuple[list[int], list[int]]],
    *,
    seq_length: int,
    batch_size: int = 8,
    progress: str | None = None,
) -> list[Score]:
    """Score (context tokens, continuation tokens) requests with ``model`` (megatron calling convention:
    ``model(tokens, position_ids, None)`` returns logits ``[b, s, vocab]``); results in request order.
    ``progress`` names a progress bar on stderr (shown on a terminal)."""
    device = next(model.parameters()).device
    windows = []
    for context, continuation in requests:
        if not continuation:
            raise ValueError("a continuation must have at least one token")
        # Keep the last seq_length + 1 tokens: the model sees all but the last, which is only a label.
        full = (context + continuation)[-(seq_length + 1) :]
        windows.append((full, min(len(continuation), len(full) - 1)))
    order = sorted(range(len(windows)), key=lambda i: -len(windows[i][0]))  # longest first, as the harness
    results: list[Score | None] = [None] * len(windows)
    bar = progress_bar(-(-len(order) // batch_size), progress or "", progress is not None)
    for start in range(0, len(order), batch_size):
        chunk = order[start : start + batch_size]
        width = len(windows[chunk[0]][0]) - 1
        # Right padding: with a causal mask it cannot change the logits of the real positions.
        inputs = torch.full((len(chunk), width), PAD_ID, dtype=torch.long)
        for row, i in enumerate(chunk):
            full = windows[i][0]
            inputs[row, : len(full) - 1] = torch.tensor(full[:-1])
        inputs = inputs.to(device)
        position_ids = torch.arange(width, device=device).unsqueeze(0).expand_as(inputs)
        logits = model(inputs, position_ids, None)
        for row, i in enumerate(chunk):
            full, n = windows[i]
            end = len(full) - 1  # the last input position predicts the last token
            logprobs = F.log_softmax(logits[row, end - n : end].float(), dim=-1)
            targets = torch.tensor(full[-n:], device=device)
            results[i] = Score(
                logprob=float(logprobs.gather(1, targets[:, None]).sum()),
                greedy=bool((logprobs.argmax(dim=-1) == targets).all()),
            )
        bar.update()
    bar.close()
    return results


def evaluate_mc(
    model: torch.nn.Module,
    tokenizer: Tokenizer,
    items: Sequence[MCItem],
    *,
    seq_length: int,
    batch_size: int = 8,
    progress: str | None = None,
) -> dict:
    """``acc`` and ``acc_norm`` (lm-evaluation-harness definitions) over ``items``, and per-item log-likelihoods."""
    requests = [encode_pair(tokenizer, it.context, c) for it in items for c in it.choices]
    scores = iter(score_requests(model, requests, seq_length=seq_length, batch_size=batch_size, progress=progress))
    acc = acc_norm = 0
    logprobs = []
    for it in items:
        ll = np.array([next(scores).logprob for _ in it.choices])
        chars = np.array([len(c) for c in it.choices], dtype=np.float64)
        acc += int(np.argmax(ll) == it.label)
        acc_norm += int(np.argmax(ll / chars) == it.label)
        logprobs.append(ll.tolist())
    n = len(items)
    return {"acc": acc / n, "acc_norm": acc_norm / n, "n": n, "logprobs": logprobs}


def evaluate_blimp(
    model: torch.nn.Module,
    tokenizer: Tokenizer,
    sets: dict[str, Sequence[tuple[str, str]]],
    *,
    seq_length: int,
    batch_size: int = 8,
    progress: str | None = None,
) -> dict:
    """BLiMP accuracy over all pairs (``acc``), per file (``per_set``), and the mean of the files (``acc_mean``)."""
    names = list(sets)
    requests = [encode_pair(tokenizer, "", s) for name in names for pair in sets[name] for s in pair]
    scores = iter(score_requests(model, requests, seq_length=seq_length, batch_size=batch_size, progress=progress))
    per_set, correct, logprobs = {}, 0, {}
    for name in names:
        pairs = [(next(scores).logprob, next(scores).logprob) for _ in sets[name]]
        right = sum(good > bad for good, bad in pairs)
        per_set[name] = {"acc": right / len(pairs), "n": len(pairs)}
        correct += right
        logprobs[name] = pairs
    n = sum(len(pairs) for pairs in sets.values())
    return {
        "acc": correct / n,
        "acc_mean": float(np.mean([v["acc"] for v in per_set.values()])),
        "n": n,
        "per_set": per_set,
        "logprobs": logprobs,
    }


def evaluate_lambada(
    model: torch.nn.Module,
    tokenizer: Tokenizer,
    pairs: Sequence[tuple[str, str]],
    *,
    seq_length: int,
    batch_size: int = 8,
    progress: str | None = None,
) -> dict:
    """LAMBADA last-word accuracy (greedy) and the harness's per-word perplexity."""
    requests = [encode_pair(tokenizer, context, word) for context, word in pairs]
    scores = score_requests(model, requests, seq_length=seq_length, batch_size=batch_size, progress=progress)
    mean_logprob = float(np.mean([s.logprob for s in scores]))
    return {
        "acc": float(np.mean([s.greedy for s in scores])),
        "ppl": math.exp(-mean_logprob),
        "n": len(scores),
        "logprobs": [s.logprob for s in scores],
    }
