"""A blend of datasets, Megatron's weighted ``--data-path``: one space of blocks with stable ids.

``data.path`` names a blend in one of three forms, all the same blend when they say the same thing:

* one prefix, ``data/web`` (a blend of one: exactly the single-dataset run, bit for bit);
* Megatron's string, ``"0.3 data/web 0.7 data/code"``: weight and prefix, alternating;
* a YAML list, ``[{weight: 0.3, path: data/web}, {weight: 0.7, path: data/code}]`` (an optional
  ``name`` labels the corpus in reports; by default it is the shortest tail of the prefix's path
  that tells the corpora apart).

Weights are relative (Megatron normalises them too): ``"3 a 7 b"`` is ``"0.3 a 0.7 b"``.

**Why a concatenation, not megatron-core's BlendedDataset.** ``BlendedDataset`` draws a fixed-size
list of samples by weight (``helpers_cpp.build_blending_indices``) and its sample ``i`` is "the i-th
draw": change the weights, the size or the seed and every id moves, some blocks appear twice and some
never. LFR keys its loss table, phase files and reports on ids that must stay put while Focus rewrites
the order phase after phase, and it must be able to name every block of every corpus (a block never
drawn is one Focus keeps). So a blend here is the concatenation of the corpora's own block spaces
(each megatron-core's ``GPTDataset`` with an identity shuffle, :class:`~lfr_ds.data.blocks.BlockView`):
corpus ``c``'s local block ``j`` has the global id ``offsets[c] + j``, forever. The weights act where
LFR draws its orders: :func:`blended_order` (Learn, Review) and Focus's draw use megatron-core's own
``build_blending_indices`` to say which corpus each position of a phase order comes from (the greedy
interleave that keeps every prefix of the order within one block of the weights), and each corpus
fills its positions from its own seeded shuffle.

The **fingerprint** of a blend of one is its dataset's; of a blend of several, a hash of every
corpus's fingerprint with its normalised weight, in order. One tokenizer serves every corpus.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from dataclasses import dataclass
from functools import cached_property

import numpy as np

from lfr_ds.data.dataset import TokenDataset, open_dataset
from lfr_ds.errors import UserError

_FORMS = "a prefix, Megatron's 'W1 PREFIX1 W2 PREFIX2 ...' or a YAML list of {weight, path}"


@dataclass(frozen=True)
class BlendEntry:
    """One corpus of a blend, as written."""

    weight: float
    path: str
    name: str | None = None


def parse_blend(value: object, key: str = "data.path") -> list[BlendEntry]:
    """The corpora ``value`` names (see the module docstring), checked without opening the files:
    ``key`` names the setting in errors."""
    if isinstance(value, str):
        entries = _parse_string(value, key)
    elif isinstance(value, list) and value:
        entries = [_parse_item(item, key) for item in value]
    else:
        raise UserError(f"{key}: {value!r}; give {_FORMS}")
    for e in entries:
        if not e.path or "\0" in e.path:
            raise UserError(f"{key}: {e.path!r} is not a dataset prefix; give {_FORMS}")
    if len({e.path for e in entries}) < len(entries):
        raise UserError(f"{key}: a prefix appears twice in the blend; give each corpus once, with its total weight")
    if not sum(e.weight for e in entries) > 0:
        raise UserError(f"{key}: the blend's weights sum to zero; give at least one corpus a positive weight")
    return entries


def _parse_string(text: str, key: str) -> list[BlendEntry]:
    tokens = text.split()
    if len(tokens) <= 1 or os.path.exists(text + ".idx"):  # a prefix (which may hold spaces)
        return [BlendEntry(1.0, text.strip() or text)]
    if len(tokens) % 2:
        raise UserError(
            f"{key}: {text!r} has {len(tokens)} tokens, an odd number; Megatron's blend alternates weight and "
            "prefix: 'W1 PREFIX1 W2 PREFIX2 ...'"
        )
    return [BlendEntry(_weight(w, key), p) for w, p in zip(tokens[::2], tokens[1::2], strict=True)]


def _parse_item(item: object, key: str) -> BlendEntry:
    if not isinstance(item, dict) or not {"weight", "path"} <= set(item) or not set(item) <= {"weight", "path", "name"}:
        raise UserError(f"{key}: blend entry {item!r}; each entry is {{weight: W, path: PREFIX}} (and optionally name)")
    name = item.get("name")
    return BlendEntry(_weight(item["weight"], key), str(item["path"]), None if name is None else str(name))


def _weight(raw: object, key: str) -> float:
    try:
        w = float(raw) if not isinstance(raw, bool) else math.nan
    except (TypeError, ValueError):
        w = math.nan
    if not math.isfinite(w):
        raise UserError(f"{key}: weight {raw!r} does not parse as a number; write e.g. 0.3")
    if w < 0:
        raise UserError(f"{key}: weight {raw!r} is negative; blend weights are shares, 0 or more")
    return w


def blend_spec(value: object, key: str = "data.path") -> str:
    """The blend as one string: the prefix of a blend of one, else Megatron's form (names the dataset in
    messages and checkpoints)."""
    entries = parse_blend(value, key)
    if len(entries) == 1:
        return entries[0].path
    return " ".join(f"{e.weight:g} {e.path}" for e in entries)


def blend_prefixes(value: object, key: str = "data.path") -> list[str]:
    """The dataset prefixes a blend names."""
    return [e.path for e in parse_blend(value, key)]


def _names(entries: list[BlendEntry]) -> list[str]:
    """Each corpus's label: its given name, else the shortest tail of its path that no other corpus shares."""
    parts = [os.path.normpath(e.path).split(os.sep) for e in entries]
    for depth in range(1, max(map(len, parts)) + 1):
        tails = ["/".join(p[-depth:]) for p in parts]
        if len(set(tails)) == len(tails):
            break
    names = [e.name or t for e, t in zip(entries, tails, strict=True)]
    if len(set(names)) < len(names):
        raise UserError("data.path: two corpora of the blend share a name; give each a different name")
    return names


@dataclass(frozen=True)
class Corpora:
    """What selection and reporting know of a blend: corpus ``c`` holds global block ids
    ``offsets[c]`` to ``offsets[c + 1] - 1`` and should make ``weights[c]`` of a phase's draws."""

    names: list[str]
    weights: np.ndarray
    """Normalised weights (float64, summing to 1)."""
    offsets: np.ndarray
    """int64 ``[len(names) + 1]``: where each corpus's blocks start, then the total."""

    @property
    def count(self) -> int:
        return len(self.names)

    def slice(self, c: int) -> slice:
        return slice(int(self.offsets[c]), int(self.offsets[c + 1]))

    def corpus_of(self, ids: np.ndarray) -> np.ndarray:
        """The corpus of each global block id."""
        return np.searchsorted(self.offsets, np.asarray(ids), side="right") - 1

    def counts(self, ids: np.ndarray) -> np.ndarray:
        """How many of ``ids`` each corpus holds."""
        return np.bincount(self.corpus_of(ids), minlength=self.count)

    def block_corpus(self) -> np.ndarray:
        """The corpus of every block (int16 ``[num_blocks]``)."""
        return np.repeat(np.arange(self.count, dtype=np.int16), np.diff(self.offsets))

    def draw_positions(self, length: int) -> np.ndarray:
        """Which corpus each of ``length`` positions of a phase order comes from (int16): megatron-core's
        ``build_blending_indices``, the greedy interleave that gives the next position to the corpus
        furthest behind its weight, so any prefix of the order is within one block of the weights."""
        from megatron.core.datasets import helpers_cpp

        which = np.zeros(length, dtype=np.int16)
        position = np.zeros(length, dtype=np.int64)
        helpers_cpp.build_blending_indices(which, position, self.weights, self.count, length, False)
        return which


class Blend:
    """The opened corpora of a blend, checked: every prefix whole, one tokenizer, weights that parse."""

    def __init__(self, value: object, key: str = "data.path") -> None:
        entries = parse_blend(value, key)
        self.spec = blend_spec(value, key)
        self.datasets: list[TokenDataset] = [open_dataset(e.path) for e in entries]
        total = sum(e.weight for e in entries)
        self.weights = np.array([e.weight / total for e in entries], dtype=np.float64)
        self.names = _names(entries) if len(entries) > 1 else [os.path.basename(self.datasets[0].prefix)]
        first = self.datasets[0]
        for ds in self.datasets[1:]:
            if ds.tokenizer_sha256 != first.tokenizer_sha256:
                raise UserError(
                    f"{key}: {first.prefix} was built with tokenizer {_tok(first)} but {ds.prefix} with {_tok(ds)}; "
                    "a blend needs one tokenizer: re-run lfr-preprocess on one of them with the other's"
                )

    @property
    def prefix(self) -> str:
        """How messages name the blend (the prefix itself for a blend of one)."""
        return self.spec

    @property
    def meta(self) -> dict | None:
        return self.datasets[0].meta

    @property
    def tokenizer_sha256(self) -> str | None:
        return self.datasets[0].tokenizer_sha256

    @cached_property
    def fingerprint(self) -> str:
        if len(self.datasets) == 1:
            return self.datasets[0].fingerprint
        key = [[float(w), ds.fingerprint] for w, ds in zip(self.weights, self.datasets, strict=True)]
        return hashlib.sha256(json.dumps(key).encode()).hexdigest()

    @cached_property
    def sources(self) -> list[str]:
        """Every corpus's document sources, each name once, in order of first appearance."""
        return list(dict.fromkeys(s for ds in self.datasets for s in ds.sources))

    def check_tokenizer(self, tokenizer) -> None:
        for ds in self.datasets:
            ds.check_tokenizer(tokenizer)

    def num_blocks(self, seq_length: int) -> int:
        """Blocks of ``seq_length + 1`` tokens over all corpora (Megatron cuts one epoch of a stream of
        ``T`` tokens into ``(T - 1) // seq_length``); a corpus too small for one block is refused."""
        for ds in self.datasets:
            if (ds.num_tokens - 1) // seq_length < 1:
                raise UserError(
                    f"model.seq_length {seq_length}: {ds.prefix} holds {ds.num_tokens:,} tokens, not one block of "
                    f"{seq_length + 1}; use more data or a shorter model.seq_length"
                )
        return sum((ds.num_tokens - 1) // seq_length for ds in self.datasets)


def _tok(ds: TokenDataset) -> str:
    return "none recorded" if ds.meta is None else f"{ds.meta['tokenizer']['path']} (sha256 {ds.tokenizer_sha256[:12]})"


class BlendView:
    """The blocks of every corpus of ``blend`` as one id space (see the module docstring)."""

    def __init__(self, blend: Blend, seq_length: int, seed: int, *, rank: int = 0, barrier=None) -> None:
        from lfr_ds.data.blocks import BlockView

        self.blend = blend
        self.seq_length = seq_length
        self.views = [BlockView(ds, seq_length, seed, rank=rank, barrier=barrier) for ds in blend.datasets]
        offsets = np.concatenate([[0], np.cumsum([v.num_blocks for v in self.views])]).astype(np.int64)
        self.num_blocks = int(offsets[-1])
        self.corpora = Corpora(blend.names, blend.weights, offsets)

    def _local(self, block_id: int) -> tuple[int, int]:
        if not 0 <= block_id < self.num_blocks:
            raise UserError(
                f"block {block_id}: out of range; this dataset has {self.num_blocks} blocks (0..{self.num_blocks - 1}) "
                f"at seq_length {self.seq_length}"
            )
        c = int(self.corpora.corpus_of(block_id))
        return c, int(block_id - self.corpora.offsets[c])

    def tokens(self, block_id: int) -> np.ndarray:
        """The ``seq_length + 1`` tokens (int64) of one block."""
        c, local = self._local(int(block_id))
        return self.views[c].tokens(local)

    def batch(self, block_ids) -> np.ndarray:
        """Tokens of several blocks, ``[len(block_ids), seq_length + 1]`` int64."""
        if not len(block_ids):
            return np.empty((0, self.seq_length + 1), np.int64)
        return np.stack([self.tokens(i) for i in block_ids])

    def documents(self, block_id: int) -> tuple[int, np.ndarray]:
        """The block's corpus and the ids (in that corpus's dataset) of the documents its tokens come from."""
        c, local = self._local(int(block_id))
        return c, self.views[c].documents(local)

    @cached_property
    def block_source(self) -> np.ndarray:
        """Per block, its source as an index into ``blend.sources``."""
        if len(self.views) == 1:
            return self.views[0].block_source
        code = {s: i for i, s in enumerate(self.blend.sources)}
        dtype = np.int16 if len(code) < 2**15 else np.int32
        out = np.empty(self.num_blocks, dtype=dtype)
        for c, (ds, view) in enumerate(zip(self.blend.datasets, self.views, strict=True)):
            remap = np.array([code[s] for s in ds.sources], dtype=dtype)
            out[self.corpora.slice(c)] = remap[view.block_source]
        return out


def blended_order(corpora: Corpora, length: int, seed: list[int]) -> np.ndarray:
    """A Learn/Review order of ``length`` global block ids: each corpus makes its weight of the positions
    (:meth:`Corpora.draw_positions`) and fills them from its own seeded shuffle, epoch after epoch
    (:func:`~lfr_ds.data.sampler.shuffled_order` with seed ``[*seed, corpus]``). A blend of one is that
    shuffle of its blocks under ``seed``, exactly the single-dataset order."""
    from lfr_ds.data.sampler import shuffled_order

    total = int(corpora.offsets[-1])
    if corpora.count == 1:
        return shuffled_order(total, length, seed)
    which = corpora.draw_positions(length)
    out = np.empty(length, dtype=np.uint32 if total < 2**32 else np.int64)
    for c in range(corpora.count):
        mine = which == c
        sl = corpora.slice(c)
        out[mine] = sl.start + shuffled_order(sl.stop - sl.start, int(np.count_nonzero(mine)), [*seed, c])
    return out
