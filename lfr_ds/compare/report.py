"""The comparison's tables (``results.md``) and plot (``heldout.png``)."""

from __future__ import annotations

from pathlib import Path

from lfr_ds import atomic
from lfr_ds.compare import regime

COLORS = {"random": "C0", "lfr": "C1", "lfr_raw": "C2", "dedup": "C3", "oracle": "C4"}


def _pm(x: dict, digits: int = 4) -> str:
    return f"{x['mean']:+.{digits}f}" + (f" ± {x['se']:.{digits}f}" if x["se"] is not None else "")


def _ratio(r: dict) -> str:
    baseline = (
        f" vs {r['baseline']}" if "baseline" in r else ""
    )  # results made before random had a sweep: no baseline named
    if r["mean"] is None:
        return f"never ({r['kind']}{baseline})"
    std = f" ± {r['std']:.2f}" if r["std"] is not None else ""
    return f"{r['mean']:.2f}{std} ({r['kind']}{baseline}; {r['reached']}/{len(r['per_seed'])} seeds reached)"


def _labels_lines(results: dict) -> list[str]:
    """Whose copy labels the ceilings and the repeat columns use (absent from results made before ``--labels``)."""
    info = results.get("labels")
    if info is None:
        return []
    line = f"Copy labels: {info['labels']} ({info['repeat_token_share']:.1%} of the training tokens are copies)"
    s = info.get("against_builder")
    if s:
        pct = {k: "—" if s[k] is None else f"{s[k]:.1%}" for k in ("recall_exact", "recall_near", "precision")}
        line += (
            f"; against the builder's: recall {pct['recall_exact']} of {s['exact_copies']:,} exact and "
            f"{pct['recall_near']} of {s['near_copies']:,} near copies, precision {pct['precision']}"
        )
    return ["", line + "."]


def markdown(results: dict) -> str:
    # Random first, as summarised: a results.json read back has its keys sorted (lfr_ds.atomic.write_json).
    results = {**results, "arms": {"random": results["arms"]["random"], **results["arms"]}}
    arms = results["arms"]
    sources = list(arms["random"]["mean"]["per_source"])
    c = results["corpus"]
    lines = [
        f"# lfr-compare: preset {results['preset']}, redundancy {results['redundancy']}, seeds "
        f"{', '.join(map(str, results['seeds']))}",
        "",
        f"{c['train_tokens']:,} training tokens ({c['repeat_token_share']:.1%} repeats, so "
        f"{round(c['train_tokens'] * (1 - c['repeat_token_share'])):,} unique), {results['steps']} steps; "
        f"held-out: {results['heldout_blocks']} fixed blocks of the dev split ({results['valid']}).",
        *_labels_lines(results),
        "",
        f"Regime: {_regime(results)}.",
        "",
        "## Held-out loss at the full budget (mean over seeds)",
        "",
        "| arm | held-out loss | paired Δ vs random at 1.0 (± s.e.) | Δ % | "
        + " | ".join(sources)
        + " | BLiMP | unique blocks | repeat tokens trained | token ratio |",
        "|---|---|---|---|" + "---|" * len(sources) + "---|---|---|---|",
    ]
    for name, a in arms.items():
        m = a["mean"]
        paired = a.get("paired")
        delta = _pm(paired["valid_loss"]) if paired else "—"
        rel = f"{paired['relative']:+.2%}" if paired else "—"
        blimp = f"{m['blimp_acc']:.3f}" if m["blimp_acc"] is not None else "-"
        ratio = _ratio(a["token_ratio"]) if "token_ratio" in a else "—"
        lines.append(
            f"| {name} | {m['valid_loss']:.4f} | {delta} | {rel} | "
            + " | ".join(f"{m['per_source'][s]:.3f}" for s in sources)
            + f" | {blimp} | {m['unique_blocks_trained']:,.0f} | {m['repeat_token_share_trained']:.1%} | {ratio} |"
        )
    spread = arms["random"]["spread"]
    if spread["std"] is not None:
        lines += [
            "",
            f"Seed spread of random alone: std {spread['std']:.4f}, range {spread['min']:.4f}–{spread['max']:.4f}.",
        ]
    timed = [r for a in arms.values() for r in a["seeds"] if r.get("train_seconds")]
    if timed:
        share = sum(r["eval_seconds"] for r in timed) / sum(r["train_seconds"] for r in timed)
        lines += [
            "",
            f"Evaluation took {share:.0%} of the runs' time ({len(timed)} runs timed; "
            f"{sum(r['train_seconds'] for r in timed) / len(timed) / 60:.1f} min a run).",
        ]
    lines += _section("Per seed", "arm", [f"seed {s}" for s in results["seeds"]])
    for name, a in arms.items():
        cells = [f"{r['valid_loss']:.4f}" for r in a["seeds"]]
        if "paired" in a:
            cells = [f"{cell} (Δ {d:+.4f})" for cell, d in zip(cells, a["paired"]["valid_loss"]["values"], strict=True)]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    lines += _per_source_deltas(arms, sources) + _curve_table(arms) + _budget_table(results) + _focus_table(arms)
    lines += _test_table(results)
    lines += ["", f"Command: `{results['command']}`"]
    return "\n".join(lines) + "\n"


def _regime(results: dict) -> str:
    r = results.get("regime")
    return regime.line(r) if r else "not recorded (a result from before issue 25; docs/experiments/README.md has it)"


def _section(title: str, first: str, columns: list[str]) -> list[str]:
    """A markdown section: a blank line, its heading and the header of its table."""
    return ["", f"## {title}", "", f"| {first} | " + " | ".join(columns) + " |", "|---|" + "---|" * len(columns)]


def _per_source_deltas(arms: dict, sources: list[str]) -> list[str]:
    lines = _section("Paired Δ per source (arm − random, relative to random)", "arm", sources)
    for name, a in arms.items():
        if "paired" in a:
            lines.append(
                f"| {name} | " + " | ".join(f"{a['paired']['per_source_relative'][s]:+.2%}" for s in sources) + " |"
            )
    return lines


def _curve_table(arms: dict) -> list[str]:
    names = list(arms)
    lines = _section("Held-out loss at equal tokens (mean over seeds; paired Δ vs random)", "tokens", names)
    for i, (tokens, loss) in enumerate(arms["random"]["mean"]["curve"]):
        cells = [f"{loss:.4f}"]
        for name in names[1:]:
            cells.append(f"{arms[name]['mean']['curve'][i][1]:.4f} ({_pm(arms[name]['paired']['curve'][i][1], 3)})")
        lines.append(f"| {tokens:,} | " + " | ".join(cells) + " |")
    return lines


def _budget_table(results: dict) -> list[str]:
    budgets = results["budgets"]
    if len(budgets) < 2:
        return []
    lines = _section(
        "Budget sweep: final held-out loss (mean ± std over seeds), each budget its own full schedule",
        "arm",
        [f"{b:g}" for b in budgets],
    )
    if "budgets" not in results["arms"]["random"]:  # random ran at the full budget alone (results before its sweep)
        r = results["arms"]["random"]["spread"]
        lines.append("| random (1.0 only) | " + " | ".join("" for _ in budgets[:-1]) + f" | {r['mean']:.4f} |")
    for name, a in results["arms"].items():
        if "budgets" in a:
            cells = [a["budgets"][str(b)] for b in budgets]
            lines.append(
                f"| {name} | "
                + " | ".join(f"{c['mean']:.4f}" + (f" ± {c['std']:.4f}" if c["std"] is not None else "") for c in cells)
                + " |"
            )
    best = results["arms"]["random"].get("best_budget")
    if best and "budgets" in results["arms"]["random"]:
        lines += [
            "",
            "Token ratios are against random's best budget on each seed (the lowest final held-out loss: "
            + ", ".join(f"{b:g} ({loss:.4f})" for b, loss in zip(best["budget"], best["valid_loss"], strict=True))
            + "); the paired Δ is against random at the full budget.",
        ]
    return lines


def _focus_table(arms: dict) -> list[str]:
    rows = [
        (name, i, f)
        for name, a in arms.items()
        for i, f in enumerate(zip(*(r["focus"] for r in a["seeds"]), strict=False))
    ]
    if not rows or not any(r["repeat_blocks"] for a in arms.values() for r in a["seeds"]):
        return []
    lines = [
        "",
        "## What each Focus dropped (mean over seeds)",
        "",
        "| arm | phase | blocks dropped | dropped that were repeats | repeat blocks dropped |",
        "|---|---|---|---|---|",
    ]
    for name, _, per_seed in rows:
        n = len(per_seed)
        lines.append(
            f"| {name} | {per_seed[0]['phase']} | {sum(f['dropped_blocks'] for f in per_seed) / n:,.0f} | "
            f"{sum(f['dropped_that_repeat'] for f in per_seed) / n:.1%} | "
            f"{sum(f['repeats_dropped'] for f in per_seed) / n:.1%} |"
        )
    return lines


def _test_table(results: dict) -> list[str]:
    if not results["test"]:
        return []
    lines = _section(
        "Test sets (reported once, never used for any choice)", "arm", [Path(f).name for f in results["test"]]
    )
    for name, a in results["arms"].items():
        cells = []
        for f in results["test"]:
            cell = f"{a['mean']['test'][f]:.4f}"
            if "paired" in a:
                cell += f" (Δ {_pm(a['paired']['test'][f])})"
            cells.append(cell)
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return lines


def plot(results: dict, phases: list, tokens_per_step: int, path: Path) -> None:
    """Top: each arm's mean held-out curve, its seed range shaded, LFR phases shaded. Bottom: the paired
    difference from random (mean ± one standard error)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax, dx) = plt.subplots(2, 1, figsize=(8, 7), sharex=True, gridspec_kw={"height_ratios": [2, 1]})
    shade = {"learn": "#eeeeee", "focus": "#ffe0b3", "review": "#cfe8ff"}
    for ph in phases:
        for a in (ax, dx):
            a.axvspan(
                ph.start * tokens_per_step, ph.end * tokens_per_step, color=shade.get(ph.kind, "white"), alpha=0.6, lw=0
            )
        ax.text(
            (ph.start + ph.steps / 2) * tokens_per_step,
            1.0,
            ph.kind,
            transform=ax.get_xaxis_transform(),
            ha="center",
            va="bottom",
            fontsize=7,
        )
    for name, a in results["arms"].items():
        color = COLORS.get(name)
        t = [p[0] for p in a["mean"]["curve"]]
        per_seed = [[p[1] for p in r["curve"][: len(t)]] for r in a["seeds"]]
        ax.fill_between(
            t,
            [min(v) for v in zip(*per_seed, strict=True)],
            [max(v) for v in zip(*per_seed, strict=True)],
            color=color,
            alpha=0.2,
            lw=0,
        )
        ax.plot(t, [p[1] for p in a["mean"]["curve"]], lw=2, color=color, label=name)
        if "paired" in a:
            d = a["paired"]["curve"]
            mean = [p[1]["mean"] for p in d]
            se = [p[1]["se"] or 0.0 for p in d]
            dx.plot([p[0] for p in d], mean, lw=2, color=color, label=f"{name} − random")
            dx.fill_between(
                [p[0] for p in d],
                [m - s for m, s in zip(mean, se, strict=True)],
                [m + s for m, s in zip(mean, se, strict=True)],
                color=color,
                alpha=0.2,
                lw=0,
            )
    dx.axhline(0, color="C0", lw=1)
    ax.set_ylabel("held-out loss (nats/token)")
    dx.set_ylabel("paired Δ vs random")
    dx.set_xlabel("training tokens")
    ax.set_title(
        f"{results['preset']}, redundancy {results['redundancy']}: held-out loss vs tokens "
        f"({len(results['seeds'])} seeds; range shaded)",
        fontsize=10,
        pad=14,
    )
    ax.legend()
    dx.legend(fontsize=8)
    fig.tight_layout()
    with atomic.atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=120)
    plt.close(fig)
