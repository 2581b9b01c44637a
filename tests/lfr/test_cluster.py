"""Two-level clustering: k-means cells merged by weighted Ward."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.cluster.hierarchy import linkage

from lfr_ds.lfr import cluster
from lfr_ds.lfr.cluster import hierarchical_clusters, weighted_ward


def blobs(n: int, k: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """k well-separated Gaussian blobs in 4-D, of unequal sizes; returns (float32 points, blob ids)."""
    rng = np.random.default_rng(seed)
    centres = rng.uniform(-1, 1, (k, 4)) * 40
    blob = rng.choice(k, size=n, p=np.arange(1, k + 1) / (k * (k + 1) / 2))
    return (centres[blob] + rng.standard_normal((n, 4))).astype(np.float32), blob


def test_recovers_well_separated_blobs():
    x, blob = blobs(30_000, 6)
    labels = hierarchical_clusters(x, 6, seed=0)
    assert labels.dtype == np.int32 and labels.shape == (len(x),)
    table = np.zeros((6, 6), dtype=int)
    np.add.at(table, (blob, labels), 1)
    # Every blob lands in exactly one cluster and every cluster holds exactly one blob.
    assert ((table > 0).sum(1) == 1).all()
    assert ((table > 0).sum(0) == 1).all()


def test_labels_numbered_by_mean_of_first_feature():
    x, _ = blobs(20_000, 5, seed=1)
    labels = hierarchical_clusters(x, 5, seed=3)
    means = [x[labels == c, 0].mean() for c in range(5)]
    assert means == sorted(means)


def test_deterministic_per_seed_and_independent_of_threads(monkeypatch):
    x = np.random.default_rng(2).standard_normal((5_000, 3)).astype(np.float32)
    first = hierarchical_clusters(x, 8, seed=7, n_centroids=64)
    monkeypatch.setattr(cluster, "_SPAN", 1000)  # several spans, summed in order
    many = hierarchical_clusters(x, 8, seed=7, n_centroids=64)
    monkeypatch.setattr(cluster, "_workers", lambda: 1)
    one = hierarchical_clusters(x, 8, seed=7, n_centroids=64)
    np.testing.assert_array_equal(first, many)
    np.testing.assert_array_equal(first, one)
    assert set(np.unique(first)) == set(range(8))


@pytest.mark.parametrize("n", [1, 2, 5])
def test_tiny_inputs_stay_in_range(n):
    x = np.random.default_rng(n).standard_normal((n, 2)).astype(np.float32)
    labels = hierarchical_clusters(x, 4, seed=0)
    assert labels.shape == (n,)
    assert labels.min() == 0 and labels.max() < min(n, 4)


def test_fewer_distinct_points_than_clusters():
    values = np.array([[0.0, 0.0], [5.0, 5.0], [-5.0, 3.0]], dtype=np.float32)
    which = np.random.default_rng(0).integers(0, 3, 1000)
    labels = hierarchical_clusters(values[which], 10, seed=0)
    assert sorted(np.unique(labels)) == [0, 1, 2]
    for v in range(3):  # identical points share a label
        assert len(np.unique(labels[which == v])) == 1


def test_rejects_non_finite_features():
    x = np.zeros((10, 2), dtype=np.float32)
    x[3, 1] = np.nan
    with pytest.raises(ValueError, match="finite"):
        hierarchical_clusters(x, 2, seed=0)


def test_weighted_ward_with_unit_weights_is_scipy_ward():
    points = np.random.default_rng(4).standard_normal((40, 3))
    np.testing.assert_allclose(weighted_ward(points, np.ones(40)), linkage(points, "ward"))


def test_weighted_ward_equals_ward_on_repeated_points():
    rng = np.random.default_rng(5)
    points = rng.standard_normal((12, 2))
    weights = rng.integers(1, 6, 12)
    repeated = linkage(np.repeat(points, weights, axis=0), "ward")
    # Duplicates merge first at height 0; the merges after that are the weighted ones.
    heights = np.sort(weighted_ward(points, weights)[:, 2])
    np.testing.assert_allclose(np.sort(repeated[:, 2])[-len(heights) :], heights, atol=1e-9)
