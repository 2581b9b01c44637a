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
5. **Draw** the order with replacement, cluster first (∝ kept blocks × exp(mean difficulty / T), or with
   ``weighting="learnable"`` ∝ kept blocks × :func:`cluster_learnability`), then block (∝ exp(difficulty
   / T)), deterministic for the phase seed. A ``kp`` phase draws as many batches as its kept set needs
   (:func:`~lfr_ds.lfr.schedule.kept_pass_steps`).

**A blend of corpora** (:class:`~lfr_ds.data.blend.Corpora`; issue 20): clusters never span corpora
(each joint cluster is split by corpus), each corpus drops the phase's fraction of its own seen blocks
(so no corpus is drained to feed another), and the draw follows ``lfr.blend``: ``keep`` draws each
corpus's blend weight of the positions (megatron-core's blending interleave) from its own clusters;
``free`` draws once over all clusters, each weighted as above times its corpus's weight per kept block,
so equally hard corpora keep their weights and a harder one gains share.

``lfr.drop_mask`` (an experiment hook, :mod:`lfr_ds.lfr.drop_mask`) replaces step 4: the masked blocks
are dropped, every other block kept.

``@auto`` phases choose their drop fraction: only blocks :func:`learned` says the model has learned are
dropped, at most ``auto_max_drop`` of the seen blocks (and the per-cluster cap still holds). With probe
records in the table (``lfr.probe_path``), :func:`lfr_ds.lfr.absorbed.absorbed` decides instead.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from lfr_ds.errors import UserError
from lfr_ds.lfr.absorbed import absorbed
from lfr_ds.lfr.cluster import hierarchical_clusters
from lfr_ds.lfr.drop_mask import read_drop_mask
from lfr_ds.lfr.loss_table import LossTable
from lfr_ds.lfr.schedule import Phase, kept_pass_steps
from lfr_ds.lfr.select import block_slices, cluster_sums, draw_order, focus_keep_mask, perplexity_weights

if TYPE_CHECKING:
    from lfr_ds.config import LFRConfig
    from lfr_ds.data.blend import Corpora


#: Sketch dimensions kept for clustering (its top principal components): assigning 100M blocks to 256
#: centroids costs N·256·d multiply-adds, so d stays small.
SKETCH_COMPONENTS = 4

#: ``@auto``: a block is learned when its latest loss is at most this fraction of its batch's mean loss.
LEARNED_RATIO = 0.75

#: ``weighting="learnable"``: the least a cluster's learnability weighs, so every kept cluster is still drawn.
LEARNABILITY_FLOOR = 0.05


def difficulty(table: LossTable, mode: str) -> np.ndarray:
    """Per-block difficulty (float32, NaN for never-seen blocks); higher is harder."""
    if mode == "raw":
        return table.loss.copy()
    return np.subtract(table.loss, table.ref)


def progress(table: LossTable) -> np.ndarray:
    """Fall of the block's relative loss between its previous and latest visit (NaN before a second visit)."""
    out = np.subtract(table.prev_relative, table.loss)
    out += table.ref
    return out


def learned(table: LossTable) -> np.ndarray:
    """``@auto``'s criterion (bool per block): the model has learned the block if its latest loss is at
    most :data:`LEARNED_RATIO` of its batch's mean loss (same model, same step, so no drift) and, where
    it had a previous visit, it was below its batch's mean then too: it stayed learned across a pass and
    is not a lucky sample or a block still on its way down. Never-seen blocks are not learned."""
    out = table.loss <= np.float32(LEARNED_RATIO) * table.ref
    out &= ~(table.prev_relative > 0)  # NaN (one visit) compares False: judged on its latest loss
    return out


def cluster_learnability(table: LossTable, labels: np.ndarray, eligible: np.ndarray, n_clusters: int) -> np.ndarray:
    """Per cluster, the share of its excess loss the model removed between its blocks' last two visits:
    mean progress over mean relative loss at the previous visit, both over the cluster's blocks seen
    twice, clipped to [:data:`LEARNABILITY_FLOOR`, 1]. Hard text the model learns (facts) sheds a good
    part of its excess each pass; hard text it cannot learn (random words) sheds almost none. Clusters
    no harder than average at the previous visit, or with no block seen twice, get 1: the signal tells
    hard-and-learnable from hard-and-hopeless, and dropping easy text is the drop's job."""
    fall = progress(table)
    twice = eligible & np.isfinite(fall)
    count = cluster_sums(labels, None, twice, n_clusters)
    gain = cluster_sums(labels, fall, twice, n_clusters)
    excess = cluster_sums(labels, table.prev_relative, twice, n_clusters)
    hard = (count > 0) & (excess > 0)
    share = np.divide(gain, excess, out=np.ones(n_clusters), where=hard)
    return np.clip(share, LEARNABILITY_FLOOR, 1.0)


def block_features(table: LossTable, score: np.ndarray, trajectory: np.ndarray, eligible: np.ndarray) -> np.ndarray:
    """Standardised clustering features of the eligible blocks, float32 ``[n_eligible, d]``: difficulty,
    trajectory (progress since the previous visit) and the top principal components of the hidden-state
    sketch. Written column by column into one array, so the peak is that array plus a slice."""
    has_traj = bool(np.isfinite(trajectory[eligible][:: max(1, len(trajectory) // 100_000)]).any())
    components = _sketch_components(table.sketch, eligible) if table.sketch is not None else None
    d = 1 + has_traj + (components[1].shape[1] if components is not None else 0)
    x = np.empty((int(eligible.sum()), d), dtype=np.float32)
    x[:, 0] = score[eligible]
    if has_traj:
        x[:, 1] = trajectory[eligible]
    if components is not None:
        mean, basis = components
        row = 0
        for sl in block_slices(len(eligible)):
            rows = table.sketch[sl][eligible[sl]].astype(np.float32)
            x[row : row + len(rows), 1 + has_traj :] = (rows - mean) @ basis
            row += len(rows)
    # Mean and spread from a strided sample: standardising only sets the features' relative scale, and
    # np.nanmean/np.nanstd over 100M rows would each copy the column.
    sample = x[:: max(1, len(x) // 1_000_000)]
    mean, std = np.nanmean(sample, axis=0), np.nanstd(sample, axis=0)
    for j in range(d):
        col = x[:, j]
        col -= mean[j]
        col /= std[j] if std[j] > 0 else 1.0
        col[np.isnan(col)] = 0.0  # a block seen once has no trajectory: put it at the mean
    return x


def _sketch_components(sketch: np.ndarray, eligible: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The sketch's mean ``[dim]`` and top principal axes ``[dim, k]``, from up to ~100k eligible rows."""
    stride = max(1, len(eligible) // 100_000)
    sample = sketch[np.flatnonzero(eligible[::stride]) * stride].astype(np.float64)
    mean = sample.mean(axis=0)
    _, _, vt = np.linalg.svd(sample - mean, full_matrices=False)
    return mean.astype(np.float32), vt[:SKETCH_COMPONENTS].T.astype(np.float32)


@dataclass
class FocusSelection:
    """What a Focus boundary decided: the kept set and the order, and what the reporter
    (:mod:`lfr_ds.lfr.reporter`) needs to describe them without redoing the work."""

    order: np.ndarray
    """``steps × global_batch`` block ids, drawn from the kept blocks."""
    keep: np.ndarray
    """bool [num_blocks]: True = kept (never-seen blocks always are)."""
    steps: int
    """The phase's steps (a ``kp`` phase's resolved here from the kept set)."""
    cap: float
    """The per-cluster drop cap applied: ``max_cluster_drop``, raised to the drop fraction if below it."""
    cluster_blocks: np.ndarray
    """Per cluster: its eligible (seen) blocks; the last cluster holds the never-seen blocks, if any."""
    cluster_kept: np.ndarray
    """Per cluster: its kept blocks."""
    cluster_difficulty: np.ndarray
    """Per cluster: the mean difficulty of its eligible blocks."""
    difficulty_sample: np.ndarray
    """Difficulty of every ``sample_stride``-th eligible block (for the deciles)."""
    sample_stride: int
    auto: dict | None = None
    """An ``@auto`` phase: how it chose its drop fraction."""
    learnability: np.ndarray | None = None
    """``weighting="learnable"``: per cluster, :func:`cluster_learnability`."""


def focus_selection(
    table: LossTable,
    phase: Phase,
    *,
    global_batch: int,
    seed: list[int],
    options: LFRConfig,
    corpora: Corpora | None = None,
) -> FocusSelection:
    """Select ``phase``'s kept blocks from the loss table and draw its order (see the module docstring).
    ``corpora``: a blend of several corpora (``None`` = one dataset)."""
    eligible = table.seen > 0
    if not eligible.any():
        raise UserError(
            f"{phase.name}: no block has been seen yet, so Focus has nothing to rank; start the schedule with learn"
        )
    score = difficulty(table, options.score)
    labels, n_clusters, sample, stride = _clusters(table, score, eligible, options, seed, corpora)

    # Drop the phase's fraction of the seen blocks, easiest first. A block's loss is one noisy sample, so it
    # is ranked halfway to its cluster's mean: the cluster pools what similar blocks say.
    sizes = cluster_sums(labels, None, eligible, n_clusters)
    mean_difficulty = (cluster_sums(labels, score, eligible, n_clusters) / np.maximum(sizes, 1)).astype(np.float32)
    rank_score = mean_difficulty[labels]
    rank_score += score
    rank_score *= 0.5
    keep, cap, auto = _keep(table, phase, rank_score, labels, eligible, options, corpora)
    del rank_score
    kept_per_cluster = cluster_sums(labels, None, keep, n_clusters)
    mean_kept = cluster_sums(labels, score, keep, n_clusters) / np.maximum(kept_per_cluster, 1)
    n_kept = int(keep.sum())
    steps = phase.steps if phase.kept_passes is None else kept_pass_steps(phase.kept_passes, n_kept, global_batch)
    learnability = (
        cluster_learnability(table, labels, eligible, n_clusters) if options.weighting == "learnable" else None
    )
    del eligible
    # Cluster first: ∝ kept blocks × exp(mean kept difficulty / T); then block: ∝ exp(difficulty / T).
    # The block weights overwrite the scores, which are not needed any more: one 4-byte array fewer at
    # the draw, the rewrite's memory peak (draw_order's float64 CDF).
    top = float(np.max(score, where=keep, initial=-np.inf))
    if learnability is not None:
        cluster_weight = kept_per_cluster * learnability
    else:
        cluster_weight = np.where(
            kept_per_cluster > 0, kept_per_cluster * np.exp((mean_kept - top) / options.temperature), 0.0
        )
    block_weight = perplexity_weights(score, options.temperature, top=top, out=score)  # dropped blocks' are never read
    del score
    systematic = options.draw == "systematic"
    if corpora is not None and options.blend == "keep":  # blend (issue 20): each corpus its weight of the draws
        weights = (block_weight, cluster_weight)
        order = _draw_per_corpus(keep, labels, weights, steps * global_batch, seed, corpora, systematic)
    else:
        if corpora is not None:  # blend=free: one draw, clusters weighted by their corpus's weight too
            cluster_weight = _free_cluster_weight(keep, cluster_weight, corpora)
        order = draw_order(
            keep,
            labels,
            block_weight,
            cluster_weight,
            steps * global_batch,
            seed=int(np.random.default_rng([*seed, 1]).integers(2**31)),
            systematic=systematic,
        )
    return FocusSelection(
        order, keep, steps, cap, sizes, kept_per_cluster, mean_difficulty, sample, stride, auto, learnability
    )


def _clusters(
    table: LossTable,
    score: np.ndarray,
    eligible: np.ndarray,
    options: LFRConfig,
    seed: list[int],
    corpora: Corpora | None,
) -> tuple[np.ndarray, int, np.ndarray, int]:
    """Cluster the seen blocks (never across corpora); never-seen blocks get a cluster of their own and the
    median difficulty, written into ``score`` in place. Returns the labels, the number of clusters, and every
    ``stride``-th seen block's difficulty (for the deciles) with its stride."""
    n_eligible = int(eligible.sum())
    features = block_features(table, score, progress(table), eligible)
    # int16 labels when they fit: at 100M blocks every byte per block is 100 MB at the peak.
    labels = np.full(table.num_blocks, -1, dtype=np.int16 if options.clusters < 2**15 - 1 else np.int32)
    labels[eligible] = hierarchical_clusters(
        features,
        options.clusters,
        seed=int(np.random.default_rng(seed).integers(2**31)),
        n_centroids=min(options.centroids, n_eligible),
    )
    del features
    n_clusters = int(labels.max()) + 1
    stride = max(1, n_eligible // 1_000_000)  # medians and deciles from at most ~1M blocks
    sample = score[eligible][::stride].copy()  # a copy: a view would pin the whole gathered column
    unseen = ~eligible
    if unseen.any():  # never-seen blocks: their own cluster, neutral difficulty, always kept
        labels[unseen] = n_clusters
        score[unseen] = np.median(sample)
        n_clusters += 1
    del unseen
    if corpora is not None:  # blend (issue 20): clusters never span corpora
        labels, n_clusters = _split_by_corpus(labels, n_clusters, corpora)
    return labels, n_clusters, sample, stride


def _keep(
    table: LossTable,
    phase: Phase,
    rank_score: np.ndarray,
    labels: np.ndarray,
    eligible: np.ndarray,
    options: LFRConfig,
    corpora: Corpora | None = None,
) -> tuple[np.ndarray, float, dict | None]:
    """The kept mask, the per-cluster cap applied and (``@auto``) how the drop fraction was chosen.
    ``rank_score`` is consumed. Over a blend each corpus drops its own share."""
    drop, auto, is_learned = phase.drop, None, None
    if options.drop_mask is not None:  # oracle (issue 21): the experiment hook decides the drop (lfr_ds.lfr.drop_mask)
        return ~read_drop_mask(options.drop_mask, table.num_blocks), options.max_cluster_drop, None
    if phase.auto_drop:
        # probes (issue 21): with probe records, the calibrated absorbed test replaces the fixed level
        test = absorbed(table, options.absorbed_alpha) if table.has_probes else None
        is_learned = test.mask if test is not None else learned(table)
        is_learned &= eligible
        n_learned, n_eligible = int(is_learned.sum()), int(eligible.sum())
        drop = min(n_learned / n_eligible, options.auto_max_drop)
        rank_score[~is_learned] = np.finfo(np.float32).max  # last in line: never dropped, see below
        auto = {
            "criterion": f"loss <= {LEARNED_RATIO} x batch mean, and below the batch mean at the previous visit",
            "learned": n_learned,
            "learned_seen_twice": int((is_learned & np.isfinite(table.prev_relative)).sum()),
            "eligible": n_eligible,
            "max_drop": options.auto_max_drop,
            "target_fraction": round(drop, 4),
        }
        if test is not None:  # probes (issue 21)
            auto.update(test.fields(options.absorbed_alpha))
    cap = max(options.max_cluster_drop, drop)
    if corpora is None:
        keep = focus_keep_mask(
            rank_score, labels, drop, eligible=eligible, policy=options.selection, max_cluster_drop=cap
        )
    else:  # blend (issue 20): each corpus drops its own share
        keep = _keep_per_corpus(rank_score, labels, eligible, corpora, drop, is_learned, options)
    if auto is not None:
        keep |= ~is_learned  # where per-cluster caps bind, the target could reach past the learned blocks
    return keep, cap, auto


# ---- blend (issue 20): selection over a blend of corpora ---------------------------------------------


def _split_by_corpus(labels: np.ndarray, n_clusters: int, corpora: Corpora) -> tuple[np.ndarray, int]:
    """Cluster ``k`` of corpus ``c`` becomes ``k · corpora + c``: the same clusters, split where corpora meet."""
    n = n_clusters * corpora.count
    out = labels.astype(np.int16 if n < 2**15 - 1 else np.int32)
    out *= corpora.count
    for c in range(corpora.count):
        out[corpora.slice(c)] += c
    return out, n


def _keep_per_corpus(
    rank_score: np.ndarray,
    labels: np.ndarray,
    eligible: np.ndarray,
    corpora: Corpora,
    drop: float,
    is_learned: np.ndarray | None,
    options: LFRConfig,
) -> np.ndarray:
    """The kept mask when each corpus drops ``drop`` of its own seen blocks (an ``@auto`` phase: its own
    learned share, up to ``auto_max_drop``), under the same per-cluster cap."""
    keep = np.ones(len(labels), dtype=bool)
    for c in range(corpora.count):
        sl = corpora.slice(c)
        seen = int(eligible[sl].sum())
        if not seen:
            continue
        d = drop if is_learned is None else min(int(is_learned[sl].sum()) / seen, options.auto_max_drop)
        keep[sl] = focus_keep_mask(
            rank_score[sl],
            labels[sl],
            d,
            eligible=eligible[sl],
            policy=options.selection,
            max_cluster_drop=max(options.max_cluster_drop, d),
        )
    return keep


def _free_cluster_weight(keep: np.ndarray, cluster_weight: np.ndarray, corpora: Corpora) -> np.ndarray:
    """``lfr.blend=free``: each cluster's draw weight times its corpus's weight per kept block (clusters are
    corpus-major, see :func:`_split_by_corpus`), so equally hard corpora keep their weights."""
    kept = np.array([np.count_nonzero(keep[corpora.slice(c)]) for c in range(corpora.count)], dtype=np.float64)
    per_block = np.divide(corpora.weights, kept, out=np.zeros(corpora.count), where=kept > 0)
    return cluster_weight * per_block[np.arange(len(cluster_weight)) % corpora.count]


def _draw_per_corpus(
    keep: np.ndarray,
    labels: np.ndarray,
    weights: tuple[np.ndarray, np.ndarray],
    n: int,
    seed: list[int],
    corpora: Corpora,
    systematic: bool,
) -> np.ndarray:
    """``lfr.blend=keep``: each corpus gets its weight of the ``n`` positions (megatron-core's blending
    interleave) and draws them from its own clusters."""
    which = corpora.draw_positions(n)
    block_weight, cluster_weight = weights
    order = np.empty(n, dtype=np.uint32 if len(keep) < 2**32 else np.int64)
    for c in range(corpora.count):
        mine = which == c
        if not mine.any():
            continue
        sl = corpora.slice(c)
        c_seed = int(np.random.default_rng([*seed, 1, c]).integers(2**31))
        order[mine] = sl.start + draw_order(
            keep[sl],
            labels[sl],
            block_weight[sl],
            cluster_weight,
            int(mine.sum()),
            seed=c_seed,
            systematic=systematic,
        )
    return order
