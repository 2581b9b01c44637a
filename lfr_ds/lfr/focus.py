"""A Focus phase's sample order, from the loss table: features → hierarchical clusters → drop → draw.

1. **Difficulty.** ``relative`` (default): a block's loss minus the mean loss of the global batch it
   was recorded in. Every block of a batch is scored by the same model at the same step, so this is
   free of the drift that makes raw losses incomparable (a block seen early in Learn looks hard only
   because the model was worse then: in a pilot, raw loss correlated -0.77 with visit position).
   ``raw``: the recorded loss, as the paper does.
2. **Trajectory:** how much a block's relative loss fell between its last two visits (positive = it is
   being learned faster than the data as a whole, negative = forgotten; 0 for blocks seen once).
3. **Clusters** of blocks with similar difficulty, progress and hidden-state sketch (standardised):
   mini-batch k-means to ``centroids`` centroids, then Ward merging into ``clusters``
   (:func:`lfr_ds.lfr.cluster.hierarchical_clusters`). Never-seen blocks form a cluster of their own.
4. **Drop** the phase's fraction of the seen blocks, easiest first
   (:func:`~lfr_ds.lfr.select.focus_keep_mask`), ranked halfway to their cluster's mean difficulty (one
   visit's loss is a noisy sample): ``capped`` (default) never takes more than
   ``max_cluster_drop`` of one cluster, so no region of the data is starved (a pilot that dropped whole
   easy clusters lost 97.6% of one source and with it 0.21 nats on that source); ``paper`` drops whole
   clusters. Never-seen blocks are never dropped.
5. **Draw** the order with replacement, cluster first (∝ kept blocks × exp(mean difficulty / T)), then
   block (∝ exp(difficulty / T)), deterministic for the phase seed.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from lfr_ds.errors import UserError
from lfr_ds.lfr.cluster import hierarchical_clusters
from lfr_ds.lfr.loss_table import LossTable
from lfr_ds.lfr.schedule import Phase
from lfr_ds.lfr.select import cluster_drop_stats, draw_order, focus_keep_mask

if TYPE_CHECKING:
    from lfr_ds.config import LFRConfig


def difficulty(table: LossTable, mode: str) -> np.ndarray:
    """Per-block difficulty (float32, NaN for never-seen blocks); higher is harder."""
    if mode == "raw":
        return table.loss.copy()
    return table.loss - table.ref


def progress(table: LossTable) -> np.ndarray:
    """Fall of the block's relative loss between its previous and latest visit (NaN before a second visit)."""
    return (table.prev_loss - table.prev_ref) - (table.loss - table.ref)


def block_features(table: LossTable, score: np.ndarray, trajectory: np.ndarray, eligible: np.ndarray) -> np.ndarray:
    """Standardised clustering features of the eligible blocks, float32 ``[n_eligible, d]``: difficulty,
    trajectory (progress since the previous visit) and the hidden-state sketch."""
    cols = [score[eligible]]
    if np.isfinite(trajectory[eligible]).any():
        cols.append(trajectory[eligible])
    if table.sketch is not None:
        cols.extend(table.sketch[eligible].astype(np.float32).T)
    x = np.stack(cols, axis=1).astype(np.float32)
    x -= np.nanmean(x, axis=0)
    std = np.nanstd(x, axis=0)
    x /= np.where(std > 0, std, 1.0)
    return np.nan_to_num(x, nan=0.0)


def focus_order(
    table: LossTable, phase: Phase, *, length: int, seed: list[int], block_source: np.ndarray, sources: list[str],
    options: LFRConfig,
) -> tuple[np.ndarray, dict, np.ndarray]:
    """``length`` block ids for ``phase``, the manifest fields describing the selection, the kept mask."""
    eligible = table.seen > 0
    n_eligible = int(eligible.sum())
    if n_eligible == 0:
        raise UserError(f"{phase.name}: no block has been seen yet, so Focus has nothing to rank; start the schedule with learn")
    score = difficulty(table, options.score)
    features = block_features(table, score, progress(table), eligible)
    labels = np.full(table.num_blocks, -1, dtype=np.int32)
    labels[eligible] = hierarchical_clusters(features, options.clusters, seed=int(np.random.default_rng(seed).integers(2**31)),
                                             n_centroids=min(options.centroids, n_eligible))
    n_clusters = int(labels.max()) + 1
    unseen = ~eligible
    if unseen.any():  # never-seen blocks: their own cluster, neutral difficulty, always kept
        labels[unseen] = n_clusters
        score = np.where(unseen, np.float32(np.nanmedian(score[eligible])), score)
        n_clusters += 1

    cap = max(options.max_cluster_drop, phase.drop)
    # Drop the phase's fraction of the seen blocks, easiest first. A block's loss is one noisy sample, so it
    # is ranked halfway to its cluster's mean: the cluster pools what similar blocks say.
    n_per = np.bincount(labels[eligible], minlength=n_clusters)
    cluster_mean = np.bincount(labels[eligible], weights=score[eligible], minlength=n_clusters) / np.maximum(n_per, 1)
    rank_score = np.where(eligible, 0.5 * (score + cluster_mean[labels]), score).astype(np.float32)
    keep = focus_keep_mask(rank_score, labels, phase.drop, eligible=eligible, policy=options.selection, max_cluster_drop=cap)

    # Cluster first: ∝ kept blocks × exp(mean kept difficulty / T); then block: ∝ exp(difficulty / T).
    kept_score = np.where(keep, score, np.nan).astype(np.float64)
    top = np.nanmax(kept_score)
    block_weight = np.nan_to_num(np.exp((kept_score - top) / options.temperature), nan=0.0)
    kept_per_cluster = np.bincount(labels, weights=keep, minlength=n_clusters)
    mean_kept = np.bincount(labels, weights=np.nan_to_num(kept_score, nan=0.0), minlength=n_clusters) / np.maximum(kept_per_cluster, 1)
    cluster_weight = np.where(kept_per_cluster > 0, kept_per_cluster * np.exp((mean_kept - top) / options.temperature), 0.0)
    order = draw_order(keep, labels, block_weight, cluster_weight, length, seed=int(np.random.default_rng([*seed, 1]).integers(2**31)))

    sizes, dropped = cluster_drop_stats(labels, eligible, keep)
    mean_difficulty = np.bincount(labels[eligible], weights=score[eligible], minlength=len(sizes)) / np.maximum(sizes, 1)
    seen_by_source = np.bincount(block_source[eligible], minlength=len(sources))
    dropped_by_source = np.bincount(block_source[eligible & ~keep], minlength=len(sources))
    edges = np.quantile(score[eligible], np.linspace(0, 1, 11))
    decile = np.clip(np.searchsorted(edges, score[eligible], side="right") - 1, 0, 9)
    decile_dropped = np.bincount(decile, weights=~keep[eligible], minlength=10) / np.maximum(np.bincount(decile, minlength=10), 1)
    fields = {
        "kept": int(keep.sum()),
        "dropped": int((~keep).sum()),
        "eligible": n_eligible,
        "score": options.score,
        "selection": options.selection,
        "max_cluster_drop": cap,
        "temperature": options.temperature,
        "source_blocks": {s: int(n) for s, n in zip(sources, seen_by_source, strict=True)},
        "source_drop_fraction": {
            s: round(float(d) / max(1, int(n)), 4) for s, n, d in zip(sources, seen_by_source, dropped_by_source, strict=True)
        },
        "difficulty_deciles": [
            {"from": round(float(edges[i]), 4), "to": round(float(edges[i + 1]), 4), "drop_fraction": round(float(decile_dropped[i]), 4)}
            for i in range(10)
        ],
        "clusters": [
            {"cluster": c, "blocks": int(sizes[c]), "dropped": int(dropped[c]), "drop_fraction": round(float(dropped[c]) / max(1, int(sizes[c])), 4),
             "mean_difficulty": round(float(mean_difficulty[c]), 4) if sizes[c] else None}
            for c in range(len(sizes))
        ],
    }
    return order, fields, keep
