"""``lfr-inspect-index``: what a phase's sample index keeps and drops, by source (and corpus, for a blend) and
difficulty, with texts.

    lfr-inspect-index runs/x/index/phase_003_focus.npy [--examples 3] [--json]
"""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from lfr_ds.data.blend import Blend, BlendView
from lfr_ds.data.sample_index import read_sample_index
from lfr_ds.data.tokenizer import Tokenizer
from lfr_ds.errors import ArgumentParser, UserError, cli
from lfr_ds.lfr.rewriter import read_kept_mask


def _run_data(index_path: Path) -> str | None:
    cfg = index_path.resolve().parent.parent / "config.json"  # RUN_DIR/index/<phase>.npy
    return json.loads(cfg.read_text())["data"]["path"] if cfg.is_file() else None


def summarise(path: Path, data: str | None, examples: int, seed: int = 0) -> dict:
    prefix = data or _run_data(path)
    if prefix is None:
        raise UserError(f"{path}: not inside a run directory, so its dataset is unknown; pass --data")
    dataset = Blend(prefix, "--data")
    order, manifest = read_sample_index(path, dataset=dataset.fingerprint)
    view = BlendView(dataset, manifest.seq_length, manifest.seed[0])
    draws = np.bincount(np.asarray(order, dtype=np.int64), minlength=manifest.num_blocks)
    keep = read_kept_mask(path, manifest)
    if keep is None:
        keep = np.ones(manifest.num_blocks, dtype=bool)
    src = view.block_source
    per_source = {}
    for code, name in enumerate(dataset.sources):
        m = src == code
        per_source[name] = {
            "blocks": int(m.sum()),
            "dropped": int((m & ~keep).sum()),
            "drop_fraction": round(float((m & ~keep).sum()) / max(1, int(m.sum())), 4),
            "draw_share": round(float(draws[m].sum()) / max(1, len(order)), 4),
        }
    per_corpus = {}
    if view.corpora.count > 1:  # a blend: each corpus's drops and draws against its weight
        counts = view.corpora.counts(order)
        for c, name in enumerate(view.corpora.names):
            sl = view.corpora.slice(c)
            per_corpus[name] = {
                "weight": round(float(view.corpora.weights[c]), 4),
                "blocks": sl.stop - sl.start,
                "dropped": int((~keep[sl]).sum()),
                "drop_fraction": round(float((~keep[sl]).mean()), 4),
                "draw_share": round(float(counts[c]) / max(1, len(order)), 4),
            }
    tok = Tokenizer(dataset.meta["tokenizer"]["path"]) if dataset.meta else None
    rng = np.random.default_rng(seed)

    def texts(ids: np.ndarray) -> list[dict]:
        return [
            {
                "block": int(b),
                "source": dataset.sources[int(src[b])],
                "draws": int(draws[b]),
                "text": tok.render(view.tokens(int(b)))[:400] if tok else None,
            }
            for b in ids
        ]

    dropped_ids = np.flatnonzero(~keep)
    return {
        "phase": manifest.phase,
        "kind": manifest.kind,
        "samples": manifest.length,
        "unique_blocks_drawn": int(np.count_nonzero(draws)),
        "kept": int(keep.sum()),
        "dropped": int((~keep).sum()),
        "sources": per_source,
        "corpora": per_corpus,
        "difficulty_deciles": manifest.difficulty_deciles,
        "examples_dropped": texts(
            rng.choice(dropped_ids, min(examples, len(dropped_ids)), replace=False) if len(dropped_ids) else []
        ),
        "examples_most_drawn": texts(np.argsort(-draws, kind="stable")[:examples]),
    }


def _format(s: dict) -> str:
    lines = [
        f"{s['phase']} ({s['kind']}): {s['samples']:,} samples over {s['unique_blocks_drawn']:,} distinct blocks; "
        f"kept {s['kept']:,}, dropped {s['dropped']:,}",
        f"{'source':<12}{'blocks':>10}{'dropped':>10}{'drop %':>8}{'draws %':>9}",
    ]
    for name, c in s["sources"].items():
        lines.append(
            f"{name:<12}{c['blocks']:>10,}{c['dropped']:>10,}{c['drop_fraction']:>8.1%}{c['draw_share']:>9.1%}"
        )
    if s["corpora"]:
        lines.append(f"{'corpus':<12}{'blocks':>10}{'dropped':>10}{'drop %':>8}{'draws %':>9}{'weight %':>10}")
        for name, c in s["corpora"].items():
            lines.append(
                f"{name:<12}{c['blocks']:>10,}{c['dropped']:>10,}{c['drop_fraction']:>8.1%}{c['draw_share']:>9.1%}"
                f"{c['weight']:>10.1%}"
            )
    if s["difficulty_deciles"]:
        lines.append(
            "drop fraction by difficulty decile (easiest first): "
            + " ".join(f"{d['drop_fraction']:.0%}" for d in s["difficulty_deciles"])
        )
    for title, key in (("dropped", "examples_dropped"), ("most drawn", "examples_most_drawn")):
        for e in s[key]:
            lines.append(f"-- {title}: block {e['block']} ({e['source']}, drawn {e['draws']}x): {e['text']!r}")
    return "\n".join(lines)


@cli
def main(argv: Sequence[str] | None = None) -> int:
    p = ArgumentParser(
        prog="lfr-inspect-index", description="Summarise a phase's sample index: kept and dropped blocks."
    )
    p.add_argument("index", help="RUN_DIR/index/<phase>.npy")
    p.add_argument("--data", help="dataset prefix or blend (default: from RUN_DIR/config.json)")
    p.add_argument("--examples", type=int, default=3, help="example blocks to show per group (default 3)")
    p.add_argument("--json", action="store_true", help="print JSON")
    args = p.parse_args(argv)
    s = summarise(Path(args.index), args.data, args.examples)
    print(json.dumps(s, indent=2) if args.json else _format(s))
    return 0


if __name__ == "__main__":
    sys.exit(main())
