"""Focus-phase data selection: which blocks to drop, and the order in which to train on the rest.

:func:`focus_keep_mask` drops the easiest eligible blocks (lowest score, i.e. loss), either globally with
a per-cluster cap (``"capped"``, the recipe default) or whole easiest clusters first as in the LFR paper
(``"paper"``). :func:`draw_order` then samples the next phase's block order from what is kept, cluster
first, then block, each in proportion to a weight (see :func:`perplexity_weights`).

Built for 100M blocks: per-block arrays are read in slices, so besides the result only one or two big
arrays are ever allocated, and selection uses partial sorts (``np.partition``) on a uint64 key per block
that orders by score and breaks ties by block id, so it is exact and deterministic without a full sort.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

from lfr_ds.errors import UserError

POLICIES = ("capped", "paper")

_SLICE = 1 << 20  # blocks per slice: slice temporaries stay a few MB


def focus_keep_mask(
    score: np.ndarray,
    labels: np.ndarray,
    drop_fraction: float,
    *,
    eligible: np.ndarray,
    policy: str = "capped",
    max_cluster_drop: float = 1.0,
) -> np.ndarray:
    """Which blocks the focus phase keeps (bool [N], True = kept).

    ``score`` (float [N]) is difficulty, higher = harder; it must be finite where ``eligible`` (bool
    [N]) and is ignored elsewhere (NaN is fine). Only eligible blocks can be dropped; the rest, such as
    blocks never seen yet, are always kept. The target is ``round(drop_fraction · eligible.sum())``
    blocks (Python's round); ties in score drop the lower block id first.

    ``"capped"``: drop the globally easiest eligible blocks, but no cluster (``labels``, int [N]) loses
    more than ``floor(max_cluster_drop · n_c)`` of its ``n_c`` eligible blocks. ``max_cluster_drop ==
    drop_fraction`` is per-cluster stratified dropping, ``1.0`` a plain global sort. If the caps leave
    fewer droppable blocks than the target, all of those are dropped: compare
    the dropped count (:func:`cluster_sums` over eligible & ~keep) with the target to log it.

    ``"paper"``: rank clusters by the mean perplexity, ``exp(mean score)``, of their eligible blocks and
    drop whole clusters, easiest first; the cluster that crosses the target loses only its easiest
    blocks, so exactly the target is dropped.
    """
    n = _check_blocks(score, labels, eligible)
    if policy not in POLICIES:
        raise UserError(f"unknown focus policy {policy!r}: use one of {', '.join(POLICIES)}")
    if not 0 <= drop_fraction < 1:
        raise UserError(f"focus drop fraction {drop_fraction} is outside [0, 1): set it to e.g. 0.5")
    if policy == "capped" and not drop_fraction <= max_cluster_drop <= 1:
        raise UserError(f"max cluster drop {max_cluster_drop} must be in [drop fraction {drop_fraction}, 1]: raise it")

    n_drop = round(drop_fraction * int(np.count_nonzero(eligible)))
    if n_drop >= n:
        raise UserError(
            f"focus phase would keep no block: lower drop fraction {drop_fraction} "
            f"(all {n} blocks are eligible and it rounds to dropping every one)"
        )
    keep = np.ones(n, dtype=bool)
    if n_drop == 0:
        return keep
    keys, sizes, sums = _grouped_keys(score, labels, eligible)
    if policy == "capped":
        dropped = _capped(keys, sizes, n_drop, max_cluster_drop)
    else:
        dropped = _paper(keys, sizes, sums, n_drop)
    for s in range(0, len(dropped), _SLICE):
        keep[(dropped[s : s + _SLICE] & np.uint64(0xFFFFFFFF)).astype(np.intp)] = False
    return keep


def cluster_sums(labels: np.ndarray, values: np.ndarray | None, mask: np.ndarray, n_clusters: int) -> np.ndarray:
    """Per cluster, the count (``values=None``) or float64 sum of ``values`` over the blocks in ``mask``;
    in slices, since ``np.bincount`` would make a float64 copy of whole-length weights."""
    out = np.zeros(n_clusters)
    for sl in block_slices(len(labels)):
        m = mask[sl]
        out += np.bincount(labels[sl][m], weights=None if values is None else values[sl][m], minlength=n_clusters)
    return out


def draw_order(
    keep: np.ndarray,
    labels: np.ndarray,
    block_weight: np.ndarray,
    cluster_weight: np.ndarray | None,
    n_samples: int,
    *,
    seed: int,
    systematic: bool = False,
) -> np.ndarray:
    """``n_samples`` kept block ids, drawn independently with replacement, cluster first: uint32 below
    2³² blocks (the sample index's own dtype, half the memory at the rewrite's peak), else int64.

    ``systematic``: the same probabilities with low variance (one uniform offset, ``n_samples`` evenly
    spaced points on the cumulative mass, the picks shuffled): each block is drawn the floor or ceiling of
    ``n_samples · P(i)``, so equal weights give a permutation, where independent draws visit ~63%.

    Each draw picks a cluster with probability ∝ ``cluster_weight[c]`` among the clusters that hold at
    least one kept block, then a kept block of that cluster with probability ∝ ``block_weight``.
    ``cluster_weight=None`` uses the mean block weight of each cluster's kept blocks (so with perplexity
    weights, a cluster's mean perplexity). Weights must be finite and non-negative where they are used
    (kept blocks, clusters with kept blocks); weight 0 means never drawn. A cluster with positive weight
    whose kept blocks all weigh 0 is an error, as is no cluster with positive weight. Deterministic for
    a seed.

    The two stages are drawn as one: block i of cluster c has probability ``P(c) · w_i / W_c`` (``W_c``: the
    weights of c's kept blocks), one inverse-CDF lookup over the kept blocks a draw (a per-cluster lookup
    would need the draws grouped by cluster: a sort, which costs more).
    """
    n = _check_blocks(block_weight, labels, keep)
    k = int(labels.max()) + 1
    if cluster_weight is not None:
        cluster_weight = np.asarray(cluster_weight, dtype=np.float64)
        if cluster_weight.ndim != 1 or len(cluster_weight) < k:
            raise ValueError(f"cluster_weight needs an entry per cluster (labels go up to {k - 1})")
        k = len(cluster_weight)
    if n_samples < 0:
        raise ValueError("n_samples must be non-negative")

    scale = _cluster_scale(keep, labels, block_weight, cluster_weight, k, n)

    kept_ids, cdf = _kept_cdf(keep, labels, block_weight, scale)
    m = len(cdf)
    cdf *= m / cdf[-1]  # in units of guide buckets, see _guided_search
    np.minimum(cdf, m, out=cdf)  # rounding may overshoot the total by an ulp
    last = int(np.searchsorted(cdf, m))  # the first block to reach the total has positive mass
    guide = _guide_table(cdf)

    rng = np.random.default_rng(seed)
    offset = rng.random() if systematic else 0.0  # iid draws keep their stream unchanged
    order = np.empty(n_samples, dtype=kept_ids.dtype)
    for s in range(0, n_samples, _SLICE):
        size = min(_SLICE, n_samples - s)
        u = (offset + np.arange(s, s + size)) / n_samples if systematic else rng.random(size)
        u *= m
        pick = _guided_search(cdf, guide, u)
        # u can round up to the total itself, one past the end: then take the last block with mass.
        np.minimum(pick, last, out=pick)
        order[s : s + len(u)] = kept_ids[pick]
    if systematic:
        rng.shuffle(order)  # the points were in block order
    return order


def _cluster_scale(
    keep: np.ndarray,
    labels: np.ndarray,
    block_weight: np.ndarray,
    cluster_weight: np.ndarray | None,
    k: int,
    n: int,
) -> np.ndarray:
    """Per cluster, ``P(c) / W_c``: a kept block's draw mass is its weight times its cluster's entry. Checks
    the weights (see :func:`draw_order`)."""

    def kept_weight(sl: slice) -> np.ndarray:
        return np.where(keep[sl], block_weight[sl], 0.0)  # float64; dropped blocks' weights may be NaN

    count = np.zeros(k)
    total = np.zeros(k)
    for sl in block_slices(n):
        w = kept_weight(sl)
        if not (np.isfinite(w).all() and (w >= 0).all()):
            raise ValueError("block_weight must be finite and non-negative on kept blocks")
        count += np.bincount(labels[sl], weights=keep[sl], minlength=k)
        total += np.bincount(labels[sl], weights=w, minlength=k)
    if not count.any():
        raise ValueError("no kept block to draw from")
    if cluster_weight is None:
        cluster_weight = np.divide(total, count, out=np.zeros(k), where=count > 0)
    p = np.where(count > 0, cluster_weight, 0.0)
    if not (np.isfinite(p).all() and (p >= 0).all()):
        raise ValueError("cluster_weight must be finite and non-negative for clusters with kept blocks")
    starved = np.flatnonzero((p > 0) & (total == 0))
    if len(starved):
        raise ValueError(f"cluster {starved[0]} has positive weight but all its kept blocks weigh 0")
    if not (p > 0).any():
        raise ValueError("no cluster with kept blocks has positive weight")
    scale = np.divide(p, total, out=np.zeros(k), where=total > 0)
    return scale


def _kept_cdf(
    keep: np.ndarray, labels: np.ndarray, block_weight: np.ndarray, scale: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """The kept blocks' ids (uint32 below 2³² blocks) and the float64 cumulative sum of their draw mass,
    ``block_weight × scale[cluster]``. Over the kept blocks only (dropped ones have no mass): at 100M blocks
    and a 50% drop that halves the rewrite's largest arrays, the CDF and its guide table."""
    n = len(keep)
    m = int(np.count_nonzero(keep))
    kept_ids = np.empty(m, dtype=np.uint32 if n < 2**32 else np.int64)
    cdf = np.empty(m)
    pos = 0
    for sl in block_slices(n):
        ids = np.flatnonzero(keep[sl])
        if not len(ids):
            continue
        mass = block_weight[sl][ids].astype(np.float64)
        mass *= np.take(scale, labels[sl][ids])
        out = cdf[pos : pos + len(ids)]
        np.cumsum(mass, out=out)
        out += cdf[pos - 1] if pos else 0.0
        kept_ids[pos : pos + len(ids)] = ids + sl.start
        pos += len(ids)
    return kept_ids, cdf


def perplexity_weights(
    score: np.ndarray, temperature: float = 1.0, *, top: float | None = None, out: np.ndarray | None = None
) -> np.ndarray:
    """Sampling weights ∝ perplexity^(1/T) = ``exp(score / T)`` (float32), scaled so that a score of ``top``
    (default: the largest) weighs 1.

    The scaling only avoids overflow (weights are relative). NaN scores give NaN weights: fill those
    before :func:`draw_order`. Large T flattens towards uniform, small T concentrates on the hardest.
    ``out`` (float32, may be ``score`` itself) receives the weights in place: at 100M blocks a second
    array is 400 MB at the rewrite's memory peak.
    """
    if not temperature > 0:
        raise UserError(f"sampling temperature {temperature} must be positive: use e.g. 1.0")
    if out is None:
        out = np.array(score, dtype=np.float32)
    elif out is not score:
        out[...] = score
    out -= np.float32(np.nanmax(out) if top is None else top)
    out /= np.float32(temperature)
    return np.exp(out, out=out)


def block_slices(n: int) -> Iterator[slice]:
    """``[0, n)`` in slices of ``_SLICE`` blocks."""
    return (slice(s, min(s + _SLICE, n)) for s in range(0, n, _SLICE))


def _check_blocks(values: np.ndarray, labels: np.ndarray, mask: np.ndarray) -> int:
    n = len(labels)
    if values.shape != (n,) or labels.ndim != 1 or mask.shape != (n,):
        raise ValueError(f"per-block arrays must all be 1-D of length {n}, got {values.shape}, {mask.shape}")
    if mask.dtype != bool or not np.issubdtype(labels.dtype, np.integer):
        raise ValueError("labels must be integers and the block mask bool")
    if n == 0:
        raise ValueError("no blocks")
    if n > 2**32:
        raise ValueError("focus selection supports up to 2**32 blocks")  # ids fill the keys' low 32 bits
    if labels.min() < 0:
        raise ValueError("cluster labels must be non-negative")
    return n


def _grouped_keys(
    score: np.ndarray, labels: np.ndarray, eligible: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Ease keys of the eligible blocks, grouped by cluster; per-cluster counts and score sums.

    A counting sort in two passes over slices: count, then write each slice's keys, sorted by cluster
    (a stable radix sort on a narrow copy of the labels), at each cluster's cursor.
    """
    n_clusters = int(labels.max()) + 1
    narrow = np.uint16 if n_clusters <= 1 << 16 else labels.dtype
    sizes = np.zeros(n_clusters, dtype=np.int64)
    sums = np.zeros(n_clusters)
    for sl in block_slices(len(labels)):
        lab = labels[sl][eligible[sl]]
        s = score[sl][eligible[sl]]
        if not np.isfinite(s).all():
            raise ValueError("score must be finite on eligible blocks")
        sizes += np.bincount(lab, minlength=n_clusters)
        sums += np.bincount(lab, weights=s, minlength=n_clusters)

    keys = np.empty(int(sizes.sum()), dtype=np.uint64)
    cursor = np.cumsum(sizes) - sizes  # where each cluster's next key goes
    for sl in block_slices(len(labels)):
        ids = np.flatnonzero(eligible[sl]) + sl.start
        lab = labels[ids].astype(narrow)
        order = np.argsort(lab, kind="stable")
        lab = lab[order].astype(np.intp)
        counts = np.bincount(lab, minlength=n_clusters)
        # The j-th key of cluster c in this slice goes to cursor[c] + j.
        dest = np.arange(len(lab)) + (cursor - (np.cumsum(counts) - counts))[lab]
        keys[dest] = _ease_keys(score[ids], ids)[order]
        cursor += counts
    return keys, sizes, sums


def _ease_keys(score: np.ndarray, ids: np.ndarray) -> np.ndarray:
    """uint64 keys that sort like (score, id): the float32 score's bits made order-preserving, then the id.

    IEEE floats order like sign-magnitude integers, so flipping the sign bit of positives and every bit
    of negatives gives unsigned integers in float order. The id in the low 32 bits makes every key
    unique, so partitions are exact and ties deterministic.
    """
    bits = np.asarray(score, dtype=np.float32).view(np.uint32)
    k = (bits.view(np.int32) >> 31).view(np.uint32)  # all ones where the sign bit is set, else 0
    k >>= 1
    k ^= bits
    k ^= np.uint32(0x80000000)
    keys = k.astype(np.uint64)
    keys <<= np.uint64(32)
    keys |= ids.astype(np.uint64)
    return keys


def _capped(keys: np.ndarray, sizes: np.ndarray, n_drop: int, cap: float) -> np.ndarray:
    """The ``n_drop`` easiest keys among each cluster's ``floor(cap · n_c)`` easiest (fewer if capped)."""
    if cap < 1:
        # Move the easiest floor(cap · n_c) keys of each group to the front, in place. The 1e-9 absorbs
        # floating error such as 0.29 · 100 = 28.999...
        limits = np.floor(cap * sizes + 1e-9).astype(np.int64)
        start = end = 0
        for size, limit in zip(sizes.tolist(), limits.tolist(), strict=True):
            group = keys[start : start + size]
            if 0 < limit < size:
                group.partition(limit - 1)
            keys[end : end + limit] = group[:limit]  # end <= start: numpy copies safely on overlap
            start += size
            end += limit
        keys = keys[:end]
    if len(keys) > n_drop:
        keys.partition(n_drop - 1)
    return keys[:n_drop]


def _paper(keys: np.ndarray, sizes: np.ndarray, sums: np.ndarray, n_drop: int) -> np.ndarray:
    """Keys of whole clusters, lowest mean score first, then the easiest of the one crossing n_drop."""
    present = np.flatnonzero(sizes)
    order = present[np.argsort(sums[present] / sizes[present], kind="stable")]  # exp is monotone
    starts = np.cumsum(sizes) - sizes
    ends = np.cumsum(sizes[order])
    n_whole = int(np.searchsorted(ends, n_drop, side="right"))
    parts = [keys[starts[c] : starts[c] + sizes[c]] for c in order[:n_whole]]
    rest = n_drop - (int(ends[n_whole - 1]) if n_whole else 0)
    if rest:
        c = order[n_whole]
        group = keys[starts[c] : starts[c] + sizes[c]]
        group.partition(rest - 1)
        parts.append(group[:rest])
    return np.concatenate(parts)


def _guide_table(cdf: np.ndarray) -> np.ndarray:
    """``guide[j]`` = the number of entries of ``cdf`` (in bucket units: 0 <= cdf <= len(cdf)) whose
    floor is below j, for j = 0 .. len(cdf) + 1."""
    n = len(cdf)
    guide = np.zeros(n + 2, dtype=np.int32 if n < 2**31 - 2 else np.int64)  # int32 halves its memory
    for sl in block_slices(n):
        f = cdf[sl].astype(np.intp)  # floor, as cdf >= 0
        guide[f[0] + 1 : f[-1] + 2] += np.bincount(f - f[0])  # sorted, so a slice spans few buckets
    return np.cumsum(guide, out=guide)


def _guided_search(cdf: np.ndarray, guide: np.ndarray, u: np.ndarray) -> np.ndarray:
    """``np.searchsorted(cdf, u, side="right")`` for random ``u`` via a guide table (Chen & Asau).

    A plain binary search per draw misses cache at nearly every level of a 1e8-entry CDF (about 30 s
    for 5e7 draws here). With the total cut into len(cdf) equal buckets, a draw only has to search the
    entries in its own bucket, which hold one on average whatever the weights.
    """
    b = u.astype(np.intp)
    # Entries before guide[b] have floor(cdf) < b <= u, so cdf < u; the entry at guide[b + 1] has
    # floor(cdf) > b, so cdf > u. The answer lies in [guide[b], guide[b + 1]].
    lo = np.take(guide, b)
    hi = np.take(guide, b + 1)
    # Most buckets hold at most one entry: one comparison settles those, bisection the rest.
    step = (lo < hi) & (np.take(cdf, np.minimum(lo, len(cdf) - 1)) <= u)
    lo += step
    open_ = np.flatnonzero(step & (lo < hi))
    while len(open_):
        mid = lo[open_] + ((hi[open_] - lo[open_]) >> 1)  # no int32 overflow
        right = cdf[mid] <= u[open_]
        lo[open_[right]] = mid[right] + 1
        hi[open_[~right]] = mid[~right]
        open_ = open_[lo[open_] < hi[open_]]
    return lo
