"""What a phase's order does, for its manifest: per-source shares, and for a Focus phase what it dropped,
per source, per cluster and per difficulty decile; over a blend of corpora, each corpus's share of the draws
against its weight and its Focus drop.

Selection (:mod:`lfr_ds.lfr.focus`) decides; this module only describes, from the decision and the
blocks' sources. Its numbers go into :class:`~lfr_ds.run_state.PhaseManifest` and from there to the
training log, TensorBoard, ``lfr-report`` and ``lfr-inspect-index``; nothing reads them back to select.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from lfr_ds.lfr.focus import FocusSelection

if TYPE_CHECKING:
    from lfr_ds.config import LFRConfig
    from lfr_ds.data.blend import Corpora


def source_share(order: np.ndarray, block_source: np.ndarray, sources: list[str]) -> dict[str, float]:
    """Each source's share of the drawn order (rounded to 6 places)."""
    counts = np.bincount(block_source[order], minlength=len(sources))
    return {s: round(float(c) / max(1, len(order)), 6) for s, c in zip(sources, counts, strict=True)}


def focus_fields(
    sel: FocusSelection, seen: np.ndarray, block_source: np.ndarray, sources: list[str], options: LFRConfig, drop: float
) -> dict:
    """The Focus manifest fields (see :class:`~lfr_ds.run_state.PhaseManifest`): ``seen`` is the loss table's
    visit counts, ``drop`` the phase's own drop fraction (an ``@auto`` phase reports the one it chose)."""
    eligible = seen > 0
    keep = sel.keep
    n_eligible = int(eligible.sum())
    dropped = np.maximum(sel.cluster_blocks - sel.cluster_kept, 0)  # never-seen blocks: not eligible, all kept
    seen_by_source = np.bincount(block_source[eligible], minlength=len(sources))
    dropped_by_source = np.bincount(block_source[eligible & ~keep], minlength=len(sources))
    sample = sel.difficulty_sample
    edges = np.quantile(sample, np.linspace(0, 1, 11))
    decile = np.clip(np.searchsorted(edges, sample, side="right") - 1, 0, 9)
    kept_sample = keep[eligible][:: sel.sample_stride].copy()
    decile_dropped = np.bincount(decile, weights=~kept_sample, minlength=10) / np.maximum(
        np.bincount(decile, minlength=10), 1
    )
    sizes, mean_difficulty = sel.cluster_blocks, sel.cluster_difficulty
    fields = {
        "steps": sel.steps,
        # oracle (issue 21): a drop mask, like @auto, decides the fraction itself
        "drop_fraction": round(int((eligible & ~keep).sum()) / n_eligible, 4)
        if sel.auto is not None or options.drop_mask is not None
        else drop,
        "kept": int(keep.sum()),
        "dropped": int((~keep).sum()),
        "eligible": n_eligible,
        "score": options.score,
        "selection": options.selection,
        "max_cluster_drop": sel.cap,
        "temperature": options.temperature,
        "weighting": options.weighting,
        **({"draw": options.draw} if options.draw != "iid" else {}),
        "source_blocks": {s: int(n) for s, n in zip(sources, seen_by_source, strict=True)},
        "source_drop_fraction": {
            s: round(float(d) / max(1, int(n)), 4)
            for s, n, d in zip(sources, seen_by_source, dropped_by_source, strict=True)
        },
        "difficulty_deciles": [
            {
                "from": round(float(edges[i]), 4),
                "to": round(float(edges[i + 1]), 4),
                "drop_fraction": round(float(decile_dropped[i]), 4),
            }
            for i in range(10)
        ],
        "clusters": [
            {
                "cluster": c,
                "blocks": int(sizes[c]),
                "dropped": int(dropped[c]),
                "drop_fraction": round(float(dropped[c]) / max(1, int(sizes[c])), 4),
                "mean_difficulty": round(float(mean_difficulty[c]), 4) if sizes[c] else None,
            }
            for c in range(len(sizes))
        ],
    }
    if sel.auto is not None:
        fields["auto_drop"] = sel.auto
        for key in ("probe_quantile", "absorbed_one_visit", "absorbed_two_visits"):  # probes (issue 21)
            if key in sel.auto:
                fields[key] = sel.auto[key]
    if sel.learnability is not None:
        fields["cluster_learnability"] = [round(float(x), 4) for x in sel.learnability]
    return fields


def corpus_shares(corpora: Corpora, order: np.ndarray) -> dict[str, dict[str, float]]:
    """Per corpus of a blend: its weight, its share of ``order``'s draws and by how much that moved off the weight."""
    counts = corpora.counts(order)
    return {
        name: {
            "weight": round(float(w), 6),
            "share": round(float(n) / max(1, len(order)), 6),
            "share_minus_weight": round(float(n) / max(1, len(order)) - float(w), 6),
        }
        for name, w, n in zip(corpora.names, corpora.weights, counts, strict=True)
    }


def corpus_focus_fields(
    fields: dict, sel: FocusSelection, seen: np.ndarray, corpora: Corpora, options: LFRConfig
) -> None:
    """Add to a Focus phase's :func:`focus_fields` over a blend: each corpus's drop (of its seen blocks),
    each cluster's corpus (clusters are corpus-major, see :mod:`lfr_ds.lfr.focus`) and ``lfr.blend``."""
    drop = {}
    for c, name in enumerate(corpora.names):
        sl = corpora.slice(c)
        eligible = seen[sl] > 0
        drop[name] = round(int((eligible & ~sel.keep[sl]).sum()) / max(1, int(eligible.sum())), 4)
    for entry in fields["clusters"]:
        entry["corpus"] = corpora.names[entry["cluster"] % corpora.count]
    fields.update(corpus_drop_fraction=drop, blend=options.blend)
