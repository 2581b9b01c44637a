#!/usr/bin/env python3
"""The LFR study's summary across ``lfr-compare`` outputs: each candidate's paired gain against random,
as a function of the corpus redundancy R (docs/lfr.md "When does LFR pay?") or, with ``--x tokens``, of the
regime's tokens per parameter a pass (docs/lfr.md "Where the gain begins").

Each ``NAME=OUT`` is one comparison (one R, read from ``OUT/results.json``); every non-random arm in it
becomes a row, labelled ``NAME`` for the ``lfr`` arm and ``NAME/ARM`` for the others. The paired
difference is the arm's final held-out loss minus random's on the same seed, as a share of random's
mean loss; the error bar is its standard error over seeds.

Each Focus phase's drops, averaged over an arm's Focus phases and seeds: ``dropped`` (share of the
training blocks), and, on a corpus with copies, ``precision`` (share of the dropped blocks that are the
redundancy builder's copies) and ``recall`` (share of the copy blocks dropped). The ceilings
(``dedup``, ``oracle``: :mod:`lfr_ds.compare.ceilings`) are drawn as hollow squares, dashed.

Writes the markdown table to stdout, the plot to ``--plot``, and, as the last stdout line, one JSON
object ``{"rows": [{"candidate", "redundancy", "tokens_per_parameter_pass", "seeds", "delta", "se", "relative",
"per_seed", "repeat_tokens_trained", "dropped", "precision", "recall"}, ...]}``.

    .venv/bin/python bench/study.py v1=runs/base-r0.5 v1=runs/base-r0 recipe=runs/half-r0.5 ... --plot gain.png
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

CEILINGS = ("dedup", "oracle")


def drops(a: dict, num_blocks: int) -> dict:
    """An arm's drops per Focus phase: mean over its Focus phases and seeds (``None`` where it has none)."""
    phases = [f for s in a["seeds"] for f in s["focus"]]
    if not phases:
        return {"dropped": None, "precision": None, "recall": None}
    has_copies = any(s["repeat_blocks"] for s in a["seeds"])
    n = len(phases)
    return {
        "dropped": sum(f["dropped_blocks"] for f in phases) / n / num_blocks,
        "precision": sum(f["dropped_that_repeat"] for f in phases) / n if has_copies else None,
        "recall": sum(f["repeats_dropped"] for f in phases) / n if has_copies else None,
    }


def rows(pairs: list[str]) -> list[dict]:
    out = []
    for pair in pairs:
        name, _, path = pair.partition("=")
        results = json.loads((Path(path) / "results.json").read_text())
        random_loss = results["arms"]["random"]["mean"]["valid_loss"]
        for arm, a in results["arms"].items():
            if arm == "random":
                continue
            d = a["paired"]["valid_loss"]
            out.append(
                {
                    "candidate": name if arm == "lfr" else f"{name}/{arm}",
                    "redundancy": results["redundancy"],
                    # Results from before issue 25 carry no regime: docs/experiments/README.md has it by arithmetic.
                    "tokens_per_parameter_pass": results.get("regime", {}).get("tokens_per_parameter_pass"),
                    "seeds": results["seeds"],
                    "delta": d["mean"],
                    "se": d["se"],
                    "relative": d["mean"] / random_loss,
                    "relative_se": None if d["se"] is None else d["se"] / random_loss,
                    "per_seed": d["values"],
                    "repeat_tokens_trained": a["mean"]["repeat_token_share_trained"],
                    "schedule": results["schedule"],
                    "overrides": results["overrides"],
                    **drops(a, results["arms"]["random"]["seeds"][0]["unique_blocks_trained"]),
                }
            )
    return sorted(out, key=lambda r: (r["candidate"], r["redundancy"], r["tokens_per_parameter_pass"] or 0))


def markdown(table: list[dict]) -> str:
    lines = [
        "| candidate | R | tokens/param a pass | seeds | paired Δ (± s.e.) | Δ % | per seed Δ | repeat tokens trained "
        "| a Focus dropped | of them copies | copies dropped |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]

    def share(v: float | None) -> str:
        return "—" if v is None else f"{v:.1%}"

    for r in table:
        se = f" ± {r['se']:.4f}" if r["se"] is not None else ""
        tpp = "—" if r["tokens_per_parameter_pass"] is None else f"{r['tokens_per_parameter_pass']:.3g}"
        lines.append(
            f"| {r['candidate']} | {r['redundancy']:g} | {tpp} | {','.join(map(str, r['seeds']))} | "
            f"{r['delta']:+.4f}{se} | "
            f"{r['relative']:+.2%} | {', '.join(f'{v:+.3f}' for v in r['per_seed'])} | "
            f"{r['repeat_tokens_trained']:.1%} | {share(r['dropped'])} | {share(r['precision'])} | "
            f"{share(r['recall'])} |"
        )
    return "\n".join(lines)


#: What a plot's x axis can be: each row's key, its axis label, and whether the axis is logarithmic.
AXES = {
    "redundancy": ("redundancy", "redundancy R (share of training tokens that are copies)", False),
    "tokens": ("tokens_per_parameter_pass", "training tokens per model parameter, a pass (log scale)", True),
}


def plot(table: list[dict], path: Path, x: str = "redundancy") -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    key, label, log = AXES[x]
    fig, ax = plt.subplots(figsize=(6.5, 4))
    for name in dict.fromkeys(r["candidate"] for r in table):
        pts = sorted(
            (r[key], 100 * r["relative"], 100 * (r["relative_se"] or 0.0)) for r in table if r["candidate"] == name
        )
        ceiling = name.rpartition("/")[2] in CEILINGS
        ax.errorbar(
            [p[0] for p in pts],
            [p[1] for p in pts],
            yerr=[p[2] for p in pts],
            marker="s" if ceiling else "o",
            mfc="none" if ceiling else None,
            ls="--" if ceiling else "-",
            capsize=3,
            label=f"{name} (ceiling)" if ceiling else name,
        )
    ax.axhline(0, color="k", lw=0.8)
    if log:
        ax.set_xscale("log")
    ax.set_xlabel(label)
    ax.set_ylabel("held-out loss, LFR − random (% of random)")
    ax.set_title("Paired gain over random (below 0: LFR better), mean ± s.e. over seeds", fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("pairs", nargs="+", metavar="NAME=OUT", help="a candidate's name and one lfr-compare --out")
    p.add_argument("--plot", type=Path, required=True, help="where to write the gain plot (.png)")
    p.add_argument(
        "--x",
        choices=sorted(AXES),
        default="redundancy",
        help="the plot's x axis: the redundancy R, or tokens per parameter a pass (the regime; issue 25)",
    )
    args = p.parse_args()
    table = rows(args.pairs)
    if args.x == "tokens" and any(r["tokens_per_parameter_pass"] is None for r in table):
        p.error("--x tokens: every OUT needs a results.json with a regime (lfr-compare since issue 25)")
    print(markdown(table))
    plot(table, args.plot, args.x)
    print(json.dumps({"rows": table}))


if __name__ == "__main__":
    sys.exit(main())
