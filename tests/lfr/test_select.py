"""Focus selection (which blocks to drop) and the next phase's sample order."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lfr_ds.errors import UserError
from lfr_ds.lfr import select
from lfr_ds.lfr.select import cluster_sums, draw_order, focus_keep_mask, perplexity_weights


@pytest.fixture(params=[1 << 20, 97], ids=["one-slice", "many-slices"])
def slice_size(request, monkeypatch):
    """Run a test with everything in one slice, and again cut into many uneven slices."""
    monkeypatch.setattr(select, "_SLICE", request.param)


def table(n: int = 5000, k: int = 7, seed: int = 0, seen: float = 0.9):
    rng = np.random.default_rng(seed)
    score = rng.standard_normal(n).astype(np.float32) + rng.integers(0, k, n) * 0.1
    labels = rng.integers(0, k, n).astype(np.int32)
    eligible = rng.random(n) < seen
    score[~eligible] = np.nan
    return score, labels, eligible


def reference_capped(score, labels, eligible, drop_fraction, cap):
    """Walk eligible blocks easiest first (ties: lower id); drop while under target and cluster cap."""
    ids = np.flatnonzero(eligible)
    target = round(drop_fraction * len(ids))
    limit = np.floor(cap * np.bincount(labels[ids], minlength=labels.max() + 1) + 1e-9)
    taken = np.zeros_like(limit)
    keep = np.ones(len(score), dtype=bool)
    for i in ids[np.lexsort((ids, score[ids]))]:
        if (~keep).sum() == target:
            break
        if taken[labels[i]] < limit[labels[i]]:
            taken[labels[i]] += 1
            keep[i] = False
    return keep


def drop_stats(labels, eligible, keep):
    """Per cluster: eligible blocks, and how many of them ``keep`` drops."""
    k = int(labels.max()) + 1
    return cluster_sums(labels, None, eligible, k), cluster_sums(labels, None, eligible & ~keep, k)


def test_cap_equal_to_drop_fraction_is_stratified(slice_size):
    score, labels, eligible = table()
    keep = focus_keep_mask(score, labels, 0.3, eligible=eligible, max_cluster_drop=0.3)
    sizes, dropped = drop_stats(labels, eligible, keep)
    assert (np.abs(dropped - 0.3 * sizes) <= 1).all()
    for c in range(len(sizes)):  # within a cluster, the dropped are the easiest
        mine = (labels == c) & eligible
        assert score[mine & ~keep].max() <= score[mine & keep].min()


def test_cap_one_is_a_global_sort(slice_size):
    score, labels, eligible = table(seed=1)
    keep = focus_keep_mask(score, labels, 0.4, eligible=eligible, max_cluster_drop=1.0)
    ids = np.flatnonzero(eligible)
    easiest = ids[np.argsort(score[ids], kind="stable")][: round(0.4 * len(ids))]
    np.testing.assert_array_equal(np.flatnonzero(~keep), np.sort(easiest))


def test_intermediate_cap_respects_caps_and_hits_target(slice_size):
    score, labels, eligible = table(seed=2)
    labels[score < -1] = 0  # make cluster 0 much easier, so the cap binds there
    keep = focus_keep_mask(score, labels, 0.5, eligible=eligible, max_cluster_drop=0.6)
    sizes, dropped = drop_stats(labels, eligible, keep)
    assert dropped.sum() == round(0.5 * eligible.sum())
    assert (dropped <= np.floor(0.6 * sizes)).all()
    assert dropped[0] == np.floor(0.6 * sizes[0])
    np.testing.assert_array_equal(keep, reference_capped(score, labels, eligible, 0.5, 0.6))


@settings(max_examples=60, deadline=None)
@given(
    n=st.integers(1, 60),
    k=st.integers(1, 5),
    seed=st.integers(0, 2**32 - 1),
    drop=st.floats(0, 0.95),
    extra=st.floats(0, 1),
    ties=st.booleans(),
)
def test_capped_matches_reference(n, k, seed, drop, extra, ties):
    rng = np.random.default_rng(seed)
    score = rng.integers(0, 4, n).astype(np.float32) if ties else rng.standard_normal(n).astype(np.float32)
    labels = rng.integers(0, k, n).astype(np.int32)
    eligible = rng.random(n) < 0.8
    cap = drop + extra * (1 - drop)
    if round(drop * eligible.sum()) >= n:
        with pytest.raises(UserError):
            focus_keep_mask(score, labels, drop, eligible=eligible, max_cluster_drop=cap)
        return
    keep = focus_keep_mask(score, labels, drop, eligible=eligible, max_cluster_drop=cap)
    np.testing.assert_array_equal(keep, reference_capped(score, labels, eligible, drop, cap))


def test_unreachable_target_drops_what_the_caps_allow():
    score = np.arange(10, dtype=np.float32)
    labels = np.arange(10, dtype=np.int32)  # ten clusters of one block: floor(0.5 · 1) = 0 each
    keep = focus_keep_mask(score, labels, 0.5, eligible=np.ones(10, bool), max_cluster_drop=0.5)
    assert keep.all()
    labels[:4] = 0  # one cluster of four can lose two
    keep = focus_keep_mask(score, labels, 0.5, eligible=np.ones(10, bool), max_cluster_drop=0.5)
    assert np.flatnonzero(~keep).tolist() == [0, 1]


@pytest.mark.parametrize("policy", ["capped", "paper"])
def test_ineligible_blocks_are_always_kept(policy, slice_size):
    score, labels, eligible = table(seed=3, seen=0.5)
    keep = focus_keep_mask(score, labels, 0.6, eligible=eligible, policy=policy)
    assert keep[~eligible].all()
    assert (~keep).sum() == round(0.6 * eligible.sum())
    score[~eligible] = -100  # would be the easiest of all, were they eligible
    np.testing.assert_array_equal(focus_keep_mask(score, labels, 0.6, eligible=eligible, policy=policy), keep)


def test_paper_drops_whole_easiest_clusters_first(slice_size):
    rng = np.random.default_rng(4)
    labels = np.repeat(np.arange(4, dtype=np.int32), 100)
    score = (rng.standard_normal(400) * 0.1 + np.array([3.0, 1.0, 4.0, 2.0])[labels]).astype(np.float32)
    eligible = np.ones(400, bool)
    keep = focus_keep_mask(score, labels, 0.375, eligible=eligible, policy="paper")  # 150 blocks
    _, dropped = drop_stats(labels, eligible, keep)
    assert dropped.tolist() == [0, 100, 0, 50]  # cluster 1 (mean 1) whole, then half of cluster 3 (mean 2)
    three = labels == 3
    assert score[three & ~keep].max() < score[three & keep].min()


def test_keeping_nothing_is_a_user_error():
    score = np.arange(10, dtype=np.float32)
    with pytest.raises(UserError, match=r"keep no block.*drop fraction 0\.99"):
        focus_keep_mask(score, np.zeros(10, np.int32), 0.99, eligible=np.ones(10, bool))


@pytest.mark.parametrize(
    ("drop", "cap", "policy", "match"),
    [
        (1.0, 1.0, "capped", "drop fraction 1.0"),
        (-0.1, 1.0, "capped", "drop fraction -0.1"),
        (0.5, 0.4, "capped", "max cluster drop 0.4"),
        (0.5, 1.5, "capped", "max cluster drop 1.5"),
        (0.5, 1.0, "easiest", "unknown focus policy 'easiest'"),
    ],
)
def test_bad_settings_are_user_errors(drop, cap, policy, match):
    score, labels, eligible = table(n=50)
    with pytest.raises(UserError, match=match):
        focus_keep_mask(score, labels, drop, eligible=eligible, policy=policy, max_cluster_drop=cap)


def test_programming_errors_are_value_errors():
    score, labels, eligible = table(n=50)
    with pytest.raises(ValueError, match="length"):
        focus_keep_mask(score[:-1], labels, 0.5, eligible=eligible)
    score[np.flatnonzero(eligible)[0]] = np.nan
    with pytest.raises(ValueError, match="finite on eligible"):
        focus_keep_mask(score, labels, 0.5, eligible=eligible)


def draw_setup():
    labels = np.repeat(np.arange(4, dtype=np.int32), [5, 300, 1, 200])
    keep = np.ones(len(labels), bool)
    keep[5:100] = False  # cluster 1 keeps 205 of 300
    weight = np.random.default_rng(5).uniform(0.5, 2, len(labels)).astype(np.float32)
    weight[:5] = [1, 2, 3, 4, 0]
    weight[~keep] = np.nan  # dropped blocks' weights are never read
    return keep, labels, weight


def test_draw_order_follows_cluster_then_block_weights(slice_size):
    keep, labels, weight = draw_setup()
    cluster_weight = np.array([2.0, 1.0, 0.5, 0.5])
    order = draw_order(keep, labels, weight, cluster_weight, 400_000, seed=1)
    assert order.dtype == np.uint32 and len(order) == 400_000
    assert keep[order].all()
    freq = np.bincount(labels[order], minlength=4) / len(order)
    np.testing.assert_allclose(freq, cluster_weight / cluster_weight.sum(), atol=0.005)
    # Inside cluster 0, blocks in proportion 1:2:3:4, and the zero-weight block never.
    inside = np.bincount(order[labels[order] == 0], minlength=5)
    assert inside[4] == 0
    np.testing.assert_allclose(inside[:4] / inside.sum(), [0.1, 0.2, 0.3, 0.4], atol=0.01)


def test_draw_order_default_cluster_weight_is_mean_block_weight():
    keep, labels, weight = draw_setup()
    order = draw_order(keep, labels, weight, None, 200_000, seed=2)
    mean = np.array([weight[keep & (labels == c)].mean() for c in range(4)])
    freq = np.bincount(labels[order], minlength=4) / len(order)
    np.testing.assert_allclose(freq, mean / mean.sum(), atol=0.005)


def test_draw_order_is_deterministic_per_seed(slice_size):
    keep, labels, weight = draw_setup()
    a = draw_order(keep, labels, weight, None, 1000, seed=3)
    np.testing.assert_array_equal(a, draw_order(keep, labels, weight, None, 1000, seed=3))
    assert not np.array_equal(a, draw_order(keep, labels, weight, None, 1000, seed=4))


def test_systematic_draw_gives_each_block_its_expected_count_rounded(slice_size):
    """Systematic draws: every kept block floor or ceil of n · P(i) times, the same expectation as iid draws,
    shuffled (not in block order), and deterministic per seed."""
    keep, labels, weight = draw_setup()
    cluster_weight = np.array([2.0, 1.0, 0.5, 0.5])
    n = 5_003
    order = draw_order(keep, labels, weight, cluster_weight, n, seed=6, systematic=True)
    assert keep[order].all() and len(order) == n
    kept = np.flatnonzero(keep)
    w = weight[kept].astype(np.float64)
    per_cluster = np.bincount(labels[kept], weights=w, minlength=4)
    p = cluster_weight[labels[kept]] / cluster_weight.sum() * w / per_cluster[labels[kept]]
    counts = np.bincount(order, minlength=len(keep))[kept]
    expected = n * p
    assert (counts >= np.floor(expected) - 1e-9).all() and (counts <= np.ceil(expected) + 1e-9).all()
    assert not (np.diff(order.astype(np.int64)) >= 0).all()  # shuffled
    np.testing.assert_array_equal(order, draw_order(keep, labels, weight, cluster_weight, n, seed=6, systematic=True))


def test_systematic_draw_with_flat_weights_is_a_permutation_where_iid_visits_63_percent():
    """The reason for ``lfr.draw=systematic``: a ``1kp`` pass over equally weighted kept blocks."""
    n = 20_000
    keep = np.ones(n, dtype=bool)
    labels = np.zeros(n, dtype=np.int16)
    weight = np.ones(n, dtype=np.float32)
    order = draw_order(keep, labels, weight, None, n, seed=7, systematic=True)
    np.testing.assert_array_equal(np.sort(order), np.arange(n))
    iid = draw_order(keep, labels, weight, None, n, seed=7)
    assert abs(len(np.unique(iid)) / n - (1 - np.exp(-1))) < 0.01


def test_draw_order_ignores_clusters_without_kept_blocks():
    keep, labels, weight = draw_setup()
    keep[labels == 2] = False
    cluster_weight = np.array([1.0, 1.0, np.nan, 1.0])  # unused, so NaN is fine
    order = draw_order(keep, labels, weight, cluster_weight, 30_000, seed=5)
    assert (labels[order] != 2).all()
    np.testing.assert_allclose(np.bincount(labels[order], minlength=4)[[0, 1, 3]] / 30_000, 1 / 3, atol=0.02)


@pytest.mark.parametrize(
    ("change", "match"),
    [
        (lambda w, c: w.__setitem__(0, -1.0), "block_weight"),
        (lambda w, c: w.__setitem__(0, np.nan), "block_weight"),
        (lambda w, c: c.__setitem__(1, -1.0), "cluster_weight"),
        (lambda w, c: w.__setitem__(slice(0, 5), 0.0), "cluster 0 has positive weight"),
        (lambda w, c: c.__setitem__(slice(None), 0.0), "no cluster"),
    ],
)
def test_draw_order_rejects_bad_weights(change, match):
    keep, labels, weight = draw_setup()
    cluster_weight = np.ones(4)
    change(weight, cluster_weight)
    with pytest.raises(ValueError, match=match):
        draw_order(keep, labels, weight, cluster_weight, 10, seed=0)


@settings(max_examples=40, deadline=None)
@given(n=st.integers(1, 300), seed=st.integers(0, 2**32 - 1), skew=st.floats(0, 20), zeros=st.floats(0, 0.9))
def test_guided_search_is_searchsorted(n, seed, skew, zeros):
    rng = np.random.default_rng(seed)
    mass = rng.random(n) ** skew
    mass[rng.random(n) < zeros] = 0
    mass[rng.integers(n)] = 1.0
    cdf = np.cumsum(mass)
    cdf = np.minimum(cdf * (n / cdf[-1]), n)
    u = np.concatenate([rng.random(2000) * n, cdf[: min(n, 50)], [0.0]])  # include exact boundaries
    got = select._guided_search(cdf, select._guide_table(cdf), u)
    np.testing.assert_array_equal(got, np.searchsorted(cdf, u, side="right"))


def test_perplexity_weights():
    score = np.array([1.0, 2.0, np.nan, 3.0], dtype=np.float32)
    w = perplexity_weights(score, temperature=2.0)
    np.testing.assert_allclose(w[[0, 1, 3]], np.exp((score[[0, 1, 3]] - 3) / 2), rtol=1e-6)
    assert np.isnan(w[2])
    with pytest.raises(UserError, match="temperature 0"):
        perplexity_weights(score, temperature=0)
