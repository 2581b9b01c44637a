"""``lfr-inspect-data``: summarise a ``.bin/.idx`` dataset or a blend of them, or decode one of its documents or blocks.

lfr-inspect-data data/web                                  # one dataset
lfr-inspect-data "0.3 data/web 0.7 data/code"              # a blend: each corpus, its weight and size
"""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence

import numpy as np

from lfr_ds.data.blend import Blend, BlendView
from lfr_ds.data.dataset import TokenDataset
from lfr_ds.data.tokenizer import Tokenizer
from lfr_ds.errors import ArgumentParser, UserError, cli


def summary(ds: TokenDataset) -> dict:
    """Counts a user checks before training: documents, tokens, dtype, tokenizer, per-source shares."""
    lengths = ds.indexed.sequence_lengths
    codes = np.asarray(ds.doc_source)
    per_source = {}
    for code, name in enumerate(ds.sources):
        mask = codes == code
        per_source[name] = {"documents": int(mask.sum()), "tokens": int(lengths[mask].sum(dtype=np.int64))}
    tok = (ds.meta or {}).get("tokenizer")
    return {
        "prefix": ds.prefix,
        "documents": ds.num_documents,
        "tokens": ds.num_tokens,
        "dtype": ds.dtype.name,
        "tokens_per_document": {
            "mean": float(lengths.mean()),
            "median": float(np.median(lengths)),
            "max": int(lengths.max()),
        },
        "tokenizer": tok if tok else "unknown (no lfr-ds sidecar: a plain Megatron dataset)",
        "fingerprint": ds.fingerprint,
        "sources": per_source,
    }


def _format(s: dict) -> str:
    lines = [
        f"dataset     {s['prefix']}",
        f"documents   {s['documents']:,}",
        f"tokens      {s['tokens']:,} ({s['dtype']}), per document mean {s['tokens_per_document']['mean']:.0f}, "
        f"median {s['tokens_per_document']['median']:.0f}, max {s['tokens_per_document']['max']:,}",
    ]
    tok = s["tokenizer"]
    lines.append(
        f"tokenizer   {tok['path']} (vocab {tok['vocab_size']}, sha256 {tok['sha256'][:12]})"
        if isinstance(tok, dict)
        else f"tokenizer   {tok}"
    )
    lines.append(f"fingerprint {s['fingerprint'][:16]}")
    lines.append(f"{'source':<12}{'documents':>12}{'tokens':>14}{'share':>8}")
    for name, c in s["sources"].items():
        lines.append(f"{name:<12}{c['documents']:>12,}{c['tokens']:>14,}{c['tokens'] / max(s['tokens'], 1):>8.1%}")
    return "\n".join(lines)


def blend_summary(blend: Blend) -> dict:
    """A blend: its fingerprint and tokenizer, and per corpus its weight, prefix and :func:`summary`."""
    corpora = {
        name: {"weight": float(w), **summary(ds)}
        for name, w, ds in zip(blend.names, blend.weights, blend.datasets, strict=True)
    }
    tokens = sum(c["tokens"] for c in corpora.values())
    for c in corpora.values():
        c["token_share"] = c["tokens"] / max(tokens, 1)
    return {
        "blend": blend.spec,
        "fingerprint": blend.fingerprint,
        "tokens": tokens,
        "tokenizer": next(iter(corpora.values()))["tokenizer"],
        "corpora": corpora,
    }


def _format_blend(s: dict) -> str:
    lines = [
        f"blend       {s['blend']}",
        f"fingerprint {s['fingerprint'][:16]}",
        f"tokens      {s['tokens']:,}",
        f"{'corpus':<12}{'weight':>8}{'tokens':>14}{'share':>8}{'documents':>12}  prefix",
    ]
    for name, c in s["corpora"].items():
        lines.append(
            f"{name:<12}{c['weight']:>8.1%}{c['tokens']:>14,}{c['token_share']:>8.1%}"
            f"{c['documents']:>12,}  {c['prefix']}"
        )
    lines.append("(weight: the corpus's share of the blocks drawn; share: its share of the tokens)")
    return "\n".join(lines)


def _tokenizer_for(ds: TokenDataset, path: str | None) -> Tokenizer:
    if path is None:
        if ds.meta is None:
            raise UserError(f"{ds.prefix}: no sidecar names its tokenizer; pass --tokenizer")
        path = ds.meta["tokenizer"]["path"]
    tok = Tokenizer(path)
    ds.check_tokenizer(tok)
    return tok


@cli
def main(argv: Sequence[str] | None = None) -> int:
    p = ArgumentParser(
        prog="lfr-inspect-data",
        description="Summarise a Megatron .bin/.idx dataset, or decode a document or block.",
    )
    p.add_argument("prefix", help='dataset prefix (PREFIX.bin / PREFIX.idx), or a blend: "0.3 data/web 0.7 data/code"')
    p.add_argument("--json", action="store_true", help="print the summary as JSON")
    p.add_argument("--doc", type=int, help="decode this document")
    p.add_argument("--block", type=int, help="decode this block (needs --seq-length and --seed of the run)")
    p.add_argument(
        "--seq-length",
        type=int,
        default=256,
        help="block length minus one, as model.seq_length (default 256)",
    )
    p.add_argument("--seed", type=int, default=1234, help="data.seed of the run (default 1234)")
    p.add_argument("--tokenizer", help="tokenizer .model (default: the one recorded in the sidecar)")
    args = p.parse_args(argv)
    blend = Blend(args.prefix, "prefix")
    if len(blend.datasets) > 1:
        return _inspect_blend(blend, args)
    ds = blend.datasets[0]
    if args.doc is None and args.block is None:
        s = summary(ds)
        print(json.dumps(s, indent=2) if args.json else _format(s))
        return 0
    tok = _tokenizer_for(ds, args.tokenizer)
    if args.doc is not None:
        ids = ds.document(args.doc)
        print(
            f"# document {args.doc}: source {ds.sources[int(ds.doc_source[args.doc])]}, {len(ids)} tokens",
            file=sys.stderr,
        )
        print(tok.render(ids))
    if args.block is not None:
        from lfr_ds.data.blocks import BlockView

        view = BlockView(ds, args.seq_length, args.seed)
        ids = view.tokens(args.block)
        docs = view.documents(args.block)
        srcs = ", ".join(f"{int(d)} ({ds.sources[int(ds.doc_source[int(d)])]})" for d in docs)
        print(
            f"# block {args.block} of {view.num_blocks} (seq_length {args.seq_length}, seed {args.seed}): "
            f"documents {srcs}",
            file=sys.stderr,
        )
        print(tok.render(ids))
    return 0


def _inspect_blend(blend: Blend, args) -> int:
    """A blend's summary, or one of its blocks by global id (a document needs its corpus's own prefix)."""
    if args.doc is not None:
        raise UserError("--doc: a blend's documents are numbered per corpus; pass that corpus's prefix instead")
    if args.block is None:
        s = blend_summary(blend)
        print(json.dumps(s, indent=2) if args.json else _format_blend(s))
        return 0
    tok = _tokenizer_for(blend.datasets[0], args.tokenizer)
    view = BlendView(blend, args.seq_length, args.seed)
    c, docs = view.documents(args.block)
    print(
        f"# block {args.block} of {view.num_blocks} (seq_length {args.seq_length}, seed {args.seed}): corpus "
        f"{blend.names[c]}, documents {', '.join(str(int(d)) for d in docs)}",
        file=sys.stderr,
    )
    print(tok.render(view.tokens(args.block)))
    return 0
