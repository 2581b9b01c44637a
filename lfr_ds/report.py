"""``lfr-report`` (tools/lfr_report.py): describe a finished LFR run as markdown plus PNG plots.

    lfr-report runs/x                 # writes runs/x/report/{report.md,drops.png,trajectories.png}

1. What each phase kept and dropped, by source (from the phases' manifests); on a blend of corpora,
   also each corpus's share of the draws against its weight and its Focus drops.
2. How block difficulty moved between the end-of-phase loss snapshots: blocks **learned** (loss fell
   by more than ``--delta`` nats), **forgotten** (rose by more than that), **unlearned** (neither, and
   still harder than the median) and **retained** (neither, easier than the median) — the paper's
   "multiple descent" view, counted overall and per source.
3. Example texts of the easiest and the hardest blocks by final relative difficulty.
"""

from __future__ import annotations

import itertools
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from lfr_ds import atomic
from lfr_ds.data.blend import Blend, BlendView
from lfr_ds.data.sample_index import read_manifest
from lfr_ds.data.tokenizer import Tokenizer
from lfr_ds.errors import ArgumentParser, UserError, cli
from lfr_ds.lfr.offline import load_checkpoint_state
from lfr_ds.run_state import GuardState, phase_file

KINDS = ("learned", "forgotten", "unlearned", "retained")


def transitions(before: np.ndarray, after: np.ndarray, delta: float) -> dict[str, np.ndarray]:
    """Classify blocks between two loss snapshots (NaN = not seen by then; those are left out)."""
    both = np.isfinite(before) & np.isfinite(after)
    change = after - before
    hard = after > np.nanmedian(after[both]) if both.any() else np.zeros_like(both)
    steady = both & (np.abs(change) <= delta)
    return {
        "learned": both & (change < -delta),
        "forgotten": both & (change > delta),
        "unlearned": steady & hard,
        "retained": steady & ~hard,
    }


def build_report(run_dir: Path, delta: float, examples: int) -> tuple[dict, dict]:
    """The report's numbers (JSON-able) and the arrays its plots need."""
    latest = run_dir / "checkpoints" / "latest"
    if not latest.is_file():
        raise UserError(
            f"{run_dir}: no checkpoints/latest; give the RUN_DIR of an lfr-train run that saved a checkpoint"
        )
    state, table = load_checkpoint_state(str(latest.parent / latest.read_text().strip()))
    cfg = state.config
    dataset = Blend(cfg["data"]["path"])
    view = BlendView(dataset, cfg["model"]["seq_length"], cfg["data"]["seed"])
    src = view.block_source

    drops = []
    for ph in state.schedule:
        path = phase_file(run_dir, ph.name)
        if path.with_suffix(".json").is_file():
            m = read_manifest(path)
            drops.append(
                {
                    "phase": m.phase,
                    "kind": m.kind,
                    "drop_fraction": m.drop_fraction,
                    "kept": m.kept,
                    "dropped": m.dropped,
                    "source_drop_fraction": m.source_drop_fraction or {},
                    "source_share": m.source_share,
                    "corpora": m.corpora or {},
                    "corpus_drop_fraction": m.corpus_drop_fraction or {},
                }
            )

    completed = [ph for ph in state.schedule if ph.end <= state.step]
    snaps = [(ph, table.phase_loss[ph.index].astype(np.float32)) for ph in completed]
    moves = []
    for (p0, a), (p1, b) in itertools.pairwise(snaps):
        t = transitions(a, b, delta)
        moves.append(
            {
                "from": f"end of {p0.kind} {p0.index}",
                "to": f"end of {p1.kind} {p1.index}",
                **{k: int(v.sum()) for k, v in t.items()},
                "per_source": {
                    s: {k: int((v & (src == c)).sum()) for k, v in t.items()} for c, s in enumerate(dataset.sources)
                },
            }
        )

    tok = Tokenizer(dataset.meta["tokenizer"]["path"]) if dataset.meta else None
    seen = np.flatnonzero(table.seen > 0)
    rel = (table.loss - table.ref)[seen]
    order = seen[np.argsort(rel, kind="stable")]

    def texts(ids) -> list[dict]:
        return [
            {
                "block": int(b),
                "source": dataset.sources[int(src[b])],
                "relative_loss": round(float(table.loss[b] - table.ref[b]), 3),
                "loss": round(float(table.loss[b]), 3),
                "text": tok.render(view.tokens(int(b)))[:300] if tok else None,
            }
            for b in ids
        ]

    report = {
        "run_dir": str(run_dir),
        "step": state.step,
        "blocks": int(table.num_blocks),
        "sources": dataset.sources,
        "phases": drops,
        "transitions": moves,
        "delta": delta,
        "guard": _guard_summary(state.guard),
        "easiest": texts(order[:examples]),
        "hardest": texts(order[::-1][:examples]),
    }
    arrays = {"snapshots": [(f"{ph.kind} {ph.index}", a) for ph, a in snaps], "source": src}
    return report, arrays


def _guard_summary(guard: GuardState | None) -> dict:
    """Loss spikes, rewinds and skipped batches (the training guard's run state; ``None`` in older runs)."""
    skipped = guard.skipped if guard else []
    ranges, start = [], None
    for i, s in enumerate(skipped):  # consecutive steps as "a-b"
        start = s if start is None else start
        if i + 1 == len(skipped) or skipped[i + 1] != s + 1:
            ranges.append(f"{start}-{s}" if s != start else str(s))
            start = None
    return {
        "spikes": guard.spikes if guard else 0,
        "rewinds": guard.rewinds if guard else 0,
        "skipped_batches": len(skipped),
        "skipped_steps": ", ".join(ranges),
    }


def markdown(r: dict) -> str:
    g = r["guard"]
    out = [
        f"# LFR run report: {r['run_dir']}",
        "",
        f"Step {r['step']:,}, {r['blocks']:,} blocks.",
        "",
        f"Loss spikes {g['spikes']}, rewinds {g['rewinds']}, skipped batches {g['skipped_batches']}"
        + (f" (steps {g['skipped_steps']})" if g["skipped_steps"] else "")
        + ".",
        "",
        "## What each phase kept",
        "",
        "| phase | kind | drop | kept | "
        + " | ".join(f"{s} dropped" for s in r["sources"])
        + " | "
        + " | ".join(f"{s} share" for s in r["sources"])
        + " |",
        "|---|---|---|---|" + "---|" * (2 * len(r["sources"])),
    ]
    for p in r["phases"]:
        out.append(
            f"| {p['phase']} | {p['kind']} | {p['drop_fraction']:.0%} | {p['kept']:,} | "
            + " | ".join(f"{p['source_drop_fraction'].get(s, 0):.0%}" for s in r["sources"])
            + " | "
            + " | ".join(f"{p['source_share'].get(s, 0):.0%}" for s in r["sources"])
            + " |"
        )
    out += ["", "*share* = the source's share of the blocks the phase trains on.", ""]
    corpora = list(r["phases"][0]["corpora"]) if r["phases"] else []
    if corpora:  # a blend: each corpus's share of the draws against its weight, and its Focus drops
        out += [
            "## Corpora of the blend",
            "",
            "| phase | kind | "
            + " | ".join(f"{c} share (weight)" for c in corpora)
            + " | "
            + " | ".join(f"{c} dropped" for c in corpora)
            + " |",
            "|---|---|" + "---|" * (2 * len(corpora)),
        ]
        for p in r["phases"]:
            out.append(
                f"| {p['phase']} | {p['kind']} | "
                + " | ".join(f"{p['corpora'][c]['share']:.1%} ({p['corpora'][c]['weight']:.1%})" for c in corpora)
                + " | "
                + " | ".join(f"{p['corpus_drop_fraction'].get(c, 0):.0%}" for c in corpora)
                + " |"
            )
        out.append("")
    out += [
        f"## How difficulty moved (|Δloss| > {r['delta']} nats between end-of-phase snapshots)",
        "",
        "| between | " + " | ".join(KINDS) + " |",
        "|---|" + "---|" * len(KINDS),
    ]
    for m in r["transitions"]:
        out.append(f"| {m['from']} → {m['to']} | " + " | ".join(f"{m[k]:,}" for k in KINDS) + " |")
    for m in r["transitions"]:
        out += [
            "",
            f"By source, {m['from']} → {m['to']}:",
            "",
            "| source | " + " | ".join(KINDS) + " |",
            "|---|" + "---|" * len(KINDS),
        ]
        for s, c in m["per_source"].items():
            out.append(f"| {s} | " + " | ".join(f"{c[k]:,}" for k in KINDS) + " |")
    for title, key in (("Easiest blocks", "easiest"), ("Hardest blocks", "hardest")):
        out += ["", f"## {title} (by loss relative to their batch)", ""]
        for e in r[key]:
            out.append(
                f"- block {e['block']} ({e['source']}, relative {e['relative_loss']:+.2f}, loss {e['loss']:.2f}): "
                f"`{(e['text'] or '')[:200]!s}`"
            )
    out += ["", "![drops](drops.png)", "", "![trajectories](trajectories.png)"]
    return "\n".join(out) + "\n"


def plots(r: dict, arrays: dict, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 3.5))
    focus = [p for p in r["phases"] if p["kind"] == "focus"]
    width = 0.8 / max(1, len(r["sources"]))
    for i, s in enumerate(r["sources"]):
        ax.bar(np.arange(len(focus)) + i * width, [p["source_drop_fraction"].get(s, 0) for p in focus], width, label=s)
    ax.set_xticks(np.arange(len(focus)) + 0.4 - width / 2, [p["phase"] for p in focus], fontsize=8)
    ax.set_ylabel("fraction of seen blocks dropped")
    ax.set_title("Focus drops by source", fontsize=10)
    ax.legend(fontsize=7)
    fig.tight_layout()
    with atomic.atomic_path(out / "drops.png") as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)

    fig, axes = plt.subplots(1, 2, figsize=(10, 3.5))
    names = [n for n, _ in arrays["snapshots"]]
    for c, s in enumerate(r["sources"]):
        m = arrays["source"] == c
        axes[0].plot(
            names,
            [np.nanmean(a[m]) if np.isfinite(a[m]).any() else np.nan for _, a in arrays["snapshots"]],
            marker="o",
            label=s,
        )
    axes[0].set_ylabel("mean block loss at phase end")
    axes[0].tick_params(axis="x", labelsize=7)
    axes[0].legend(fontsize=7)
    if r["transitions"]:
        labels = [f"{m['from'].split(' ')[-1]}→{m['to'].split(' ')[-1]}" for m in r["transitions"]]
        bottom = np.zeros(len(labels))
        for k in KINDS:
            vals = np.array([m[k] for m in r["transitions"]], dtype=float)
            axes[1].bar(labels, vals, bottom=bottom, label=k)
            bottom += vals
        axes[1].set_ylabel("blocks")
        axes[1].legend(fontsize=7)
    axes[1].set_title("learned / forgotten between snapshots", fontsize=10)
    fig.tight_layout()
    with atomic.atomic_path(out / "trajectories.png") as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)


@cli
def main(argv: Sequence[str] | None = None) -> int:
    p = ArgumentParser(
        prog="lfr-report",
        description="Describe a finished LFR run: drops by source, learned/forgotten blocks, examples.",
    )
    p.add_argument("run_dir", help="an lfr-train RUN_DIR")
    p.add_argument("--out", help="output directory (default RUN_DIR/report)")
    p.add_argument(
        "--delta", type=float, default=0.1, help="loss change (nats) that counts as learned or forgotten (default 0.1)"
    )
    p.add_argument("--examples", type=int, default=5, help="easiest and hardest blocks to show (default 5)")
    args = p.parse_args(argv)
    run_dir = Path(args.run_dir)
    report, arrays = build_report(run_dir, args.delta, args.examples)
    out = Path(args.out) if args.out else run_dir / "report"
    out.mkdir(parents=True, exist_ok=True)
    atomic.write_json(out / "report.json", report)
    atomic.write_bytes(out / "report.md", markdown(report).encode())
    plots(report, arrays, out)
    print(f"wrote {out / 'report.md'} (+ report.json, drops.png, trajectories.png)", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
