"""Hierarchical clustering of blocks that scales to 100M of them.

LFR clusters blocks hierarchically (Ward). Exact Ward needs every pairwise distance, so it stops at a
few tens of thousands of points. We keep its tree but build it on a summary of the data:

1. mini-batch k-means (k-means++ seeding on a sample) places ``n_centroids`` centroids;
2. one chunked, multi-threaded pass gives every block its nearest centroid, and the exact count and mean
   of each centroid's cell;
3. Ward agglomerates the cells, each weighted by its block count, and the tree is cut into ``n_clusters``.

Weighting by count makes step 3 Ward's own criterion on the full data, started from the k-means cells
rather than from single blocks: merging cells a and b costs ``n_a n_b / (n_a + n_b) · |mean_a - mean_b|²``
of within-cluster variance, exactly. Unweighted Ward on the centroids would treat a cell of ten outlier
blocks like one of a million, and such outlier cells tend to survive the cut as clusters of their own,
which the cluster-first sampler would then oversample hugely. scipy's ``linkage`` takes no weights, so
the agglomeration is ours (:func:`weighted_ward`, in scipy's linkage format); scipy cuts the tree.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import numpy as np
from scipy.cluster.hierarchy import cut_tree

#: Centroids of the k-means level. The full assignment pass costs N × n_centroids distances (about 8 s
#: for 1e8 blocks on 2 cores); 256 cells still give Ward plenty of shape to cut into tens of clusters.
DEFAULT_CENTROIDS = 256

_CHUNK = 2048  # rows per distance tile: a (2048, 256) float32 tile is 2 MB, about one core's L2
_SPAN = 1 << 20  # rows per worker task; per-span sums are added in span order, whatever the thread count
_SEED_SAMPLE = 64  # k-means++ runs on this many points per centroid


def hierarchical_clusters(
    features: np.ndarray,
    n_clusters: int,
    *,
    seed: int,
    n_centroids: int = DEFAULT_CENTROIDS,
    batch_size: int = 4096,
    n_steps: int = 100,
) -> np.ndarray:
    """Cluster the rows of ``features`` (float32 [N, d], standardised) into at most ``n_clusters``.

    Returns int32 labels [N]. Clusters are numbered by ascending mean of feature column 0 (ties: the
    larger cluster first), so if the caller puts a loss feature first, ids read from easy to hard.

    Fewer than ``n_clusters`` clusters come back, numbered ``0..k-1``, when the data has fewer distinct
    points than that (k-means++ stops seeding once every point coincides with a centroid) or when fewer
    than ``n_clusters`` centroids end up with blocks. ``n_centroids`` is capped at N the same way.
    ``batch_size`` and ``n_steps`` size the mini-batch k-means fit. Deterministic for a given seed.
    """
    x = np.ascontiguousarray(features, dtype=np.float32)
    if x.ndim != 2 or len(x) == 0 or x.shape[1] == 0:
        raise ValueError(f"features must be a non-empty [N, d] array, got shape {x.shape}")
    # One float64 total shows any NaN or inf without an [N, d] temporary (it cannot overflow).
    if not np.isfinite(x.sum(dtype=np.float64)):
        raise ValueError("features must be finite")
    if n_clusters < 1 or n_centroids < 1 or batch_size < 1 or n_steps < 0:
        raise ValueError("n_clusters, n_centroids and batch_size must be positive, n_steps non-negative")

    rng = np.random.default_rng(seed)
    with ThreadPoolExecutor(_workers(), initializer=_single_threaded_blas) as pool:
        # The fit runs on a pool thread too, for the single-threaded BLAS (see _openblas_local_setters).
        centroids = pool.submit(_minibatch_kmeans, x, n_centroids, rng, batch_size, n_steps).result()
        cell, counts, sums = _assign(x, centroids, pool)

        used = np.flatnonzero(counts)  # a centroid no block is nearest to has no cell to merge
        cut = np.zeros(len(used), dtype=np.int64)
        if len(used) > 1:
            tree = weighted_ward(sums[used] / counts[used, None], counts[used])
            cut = cut_tree(tree, n_clusters=min(n_clusters, len(used)))[:, 0]
        size = np.bincount(cut, weights=counts[used])
        mean0 = np.bincount(cut, weights=sums[used, 0]) / size
        rank = np.empty(len(size), dtype=np.int32)
        rank[np.lexsort((-size, mean0))] = np.arange(len(size), dtype=np.int32)
        cluster_of_cell = np.zeros(len(centroids), dtype=np.int32)
        cluster_of_cell[used] = rank[cut]

        labels = np.empty(len(x), dtype=np.int32)

        def lookup(start: int) -> None:
            labels[start : start + _SPAN] = cluster_of_cell[cell[start : start + _SPAN]]

        list(pool.map(lookup, range(0, len(x), _SPAN)))
    return labels


def _assign(x: np.ndarray, centroids: np.ndarray, pool: ThreadPoolExecutor) -> tuple[np.ndarray, ...]:
    """Nearest centroid of every row of ``x``, in bounded memory, one span of rows per pool task.

    Returns ``(cell, counts, sums)``: the centroid index per row (int16 when it fits, else int32), and
    per centroid the number of rows and the float64 sum of their features. Spans are fixed-size and
    their partial sums are added in span order, so results do not depend on the number of threads.
    """
    k = len(centroids)
    cell = np.empty(len(x), dtype=np.int16 if k <= np.iinfo(np.int16).max else np.int32)
    aug = _augmented(centroids)

    def span(start: int) -> tuple[np.ndarray, np.ndarray]:
        stop = min(start + _SPAN, len(x))
        _nearest(x[start:stop], aug, out=cell[start:stop])
        idx = cell[start:stop].astype(np.intp)
        counts = np.bincount(idx, minlength=k)
        sums = np.stack([np.bincount(idx, weights=x[start:stop, j], minlength=k) for j in range(x.shape[1])], 1)
        return counts, sums

    parts = list(pool.map(span, range(0, len(x), _SPAN)))
    counts = np.sum([c for c, _ in parts], axis=0)
    sums = np.sum([s for _, s in parts], axis=0)
    return cell, counts, sums


def weighted_ward(points: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Ward linkage of weighted points, as a scipy linkage matrix [k-1, 4].

    Merging clusters a and b costs ``w_a w_b / (w_a + w_b) · |m_a - m_b|²`` (the rise in within-cluster
    sum of squares when each point stands for ``w`` coincident observations). Heights are reported as
    ``sqrt(2 · cost)`` like scipy's, so unit weights reproduce ``linkage(points, "ward")``; column 3
    counts points (tree leaves), not weight. O(k²) memory, about O(k²) time.
    """
    m = np.array(points, dtype=np.float64)
    w = np.array(weights, dtype=np.float64)
    k = len(m)
    if m.ndim != 2 or w.shape != (k,) or k < 2 or not (w > 0).all():
        raise ValueError("weighted_ward needs at least two points [k, d] with positive weights [k]")
    alive = np.ones(k, dtype=bool)
    node = np.arange(k)  # scipy's id for the cluster held in each slot: leaves 0..k-1, merges k, k+1, ...
    leaves = np.ones(k)

    def costs(i: int) -> np.ndarray:
        c = w[i] * w / (w[i] + w) * ((m - m[i]) ** 2).sum(1)
        c[~alive] = np.inf
        c[i] = np.inf
        return c

    cost = np.stack([costs(i) for i in range(k)])
    nn = cost.argmin(1)
    nn_cost = cost[np.arange(k), nn]
    tree = np.empty((k - 1, 4))
    for step in range(k - 1):
        a = int(nn_cost.argmin())
        b = int(nn[a])
        a, b = min(a, b), max(a, b)
        tree[step] = (
            min(node[a], node[b]),
            max(node[a], node[b]),
            np.sqrt(2 * cost[a, b]),
            leaves[a] + leaves[b],
        )
        # Slot a becomes the merged cluster, slot b retires.
        m[a] = (w[a] * m[a] + w[b] * m[b]) / (w[a] + w[b])
        w[a] += w[b]
        leaves[a] += leaves[b]
        node[a] = k + step
        alive[b] = False
        cost[b] = cost[:, b] = nn_cost[b] = np.inf
        cost[a] = cost[:, a] = costs(a)
        # Ward is reducible: a merged cluster is never closer to a third one than the nearer of its two
        # parts was, so only slots whose nearest neighbour was a or b can have a new nearest neighbour.
        stale = np.flatnonzero(alive & ((nn == a) | (nn == b) | (np.arange(k) == a)))
        nn[stale] = cost[stale].argmin(1)
        nn_cost[stale] = cost[stale, nn[stale]]
    return tree


def _minibatch_kmeans(x: np.ndarray, k: int, rng: np.random.Generator, batch_size: int, n_steps: int) -> np.ndarray:
    """Sculley's mini-batch k-means: each centroid is the running mean of every batch point it has won."""
    sample = x[np.sort(rng.choice(len(x), size=min(len(x), _SEED_SAMPLE * k), replace=False))]
    c = _kmeans_pp(sample.astype(np.float64), k, rng)
    won = np.zeros(len(c))
    for _ in range(n_steps):
        batch = x[np.sort(rng.integers(0, len(x), size=batch_size))]
        idx = _nearest(batch, _augmented(c)).astype(np.intp)
        hits = np.bincount(idx, minlength=len(c))
        sums = np.stack([np.bincount(idx, weights=batch[:, j], minlength=len(c)) for j in range(x.shape[1])], 1)
        won += hits
        h = hits > 0
        c[h] += (sums[h] - hits[h, None] * c[h]) / won[h, None]
    return c.astype(np.float32)


def _kmeans_pp(points: np.ndarray, k: int, rng: np.random.Generator) -> np.ndarray:
    """k-means++ seeding; returns fewer than k centres if the points have fewer distinct values."""
    centres = [points[rng.integers(len(points))]]
    d2 = ((points - centres[0]) ** 2).sum(1)
    for _ in range(1, k):
        cdf = np.cumsum(d2)
        if cdf[-1] <= 0:  # every point sits on a centre already
            break
        j = min(int(np.searchsorted(cdf, rng.random() * cdf[-1], side="right")), len(points) - 1)
        centres.append(points[j])
        np.minimum(d2, ((points - points[j]) ** 2).sum(1), out=d2)
    return np.array(centres)


def _augmented(centroids: np.ndarray) -> np.ndarray:
    """[-2·cᵀ; |c|²] as float32 [d+1, k], so ``[x, 1] @ aug`` is |x - c|² - |x|² in one matmul.

    |x|² is the same for every centroid, so it can be left out of an argmin; folding |c|² into the
    matmul saves a pass over each distance tile.
    """
    c = np.asarray(centroids, dtype=np.float64)
    return np.vstack([-2 * c.T, (c**2).sum(1)[None]]).astype(np.float32)


def _nearest(x: np.ndarray, aug: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """Index of the nearest centroid for each row of ``x``, one cache-sized tile at a time."""
    if out is None:
        out = np.empty(len(x), dtype=np.intp)
    d = x.shape[1]
    xa = np.ones((_CHUNK, d + 1), dtype=np.float32)
    tile = np.empty((_CHUNK, aug.shape[1]), dtype=np.float32)
    for s in range(0, len(x), _CHUNK):
        n = min(_CHUNK, len(x) - s)
        xa[:n, :d] = x[s : s + n]
        np.matmul(xa[:n], aug, out=tile[:n])
        out[s : s + n] = tile[:n].argmin(1)
    return out


def _workers() -> int:
    # Our threads each run single-threaded matmuls; without control of BLAS threading they would fight
    # BLAS's own threads (2-5x slower here), so then one thread and BLAS's threading is the better bet.
    return len(os.sched_getaffinity(0)) if _openblas_local_setters() else 1


def _single_threaded_blas() -> None:
    for set_local in _openblas_local_setters():
        set_local(1)


@functools.cache
def _openblas_local_setters() -> tuple[Callable[[int], int], ...]:
    """OpenBLAS's per-thread thread-count setter (OpenBLAS >= 0.3.27, as bundled with numpy and scipy).

    The distance matmuls are tall and skinny (inner dimension d+1); OpenBLAS splits each one over all
    cores, and with one tile per call that costs more than it saves. Measured on 2 cores, 1e8 rows × 256
    centroids: 23 s with one Python thread and OpenBLAS threading, 15 s single-threaded, 9 s with one
    tile stream per core and OpenBLAS held to one thread in each. Empty where there is no such OpenBLAS
    (another BLAS, or no /proc).
    """
    libs = set()
    with contextlib.suppress(OSError), open("/proc/self/maps") as maps:
        libs = {line.split()[-1] for line in maps if "openblas" in line.lower() and ".so" in line}
    setters = []
    for path in sorted(libs):
        with contextlib.suppress(OSError):
            lib = ctypes.CDLL(path, mode=os.RTLD_NOLOAD | os.RTLD_LAZY)  # already loaded, by numpy or scipy
            fn = getattr(lib, "openblas_set_num_threads_local", None)
            if fn is not None:
                fn.argtypes, fn.restype = [ctypes.c_int], ctypes.c_int
                setters.append(fn)
    return tuple(setters)
