"""Sample index files and the data-parallel sampler."""

from __future__ import annotations

import json

import numpy as np
import pytest
from crafted import phase_manifest
from hypothesis import given, settings
from hypothesis import strategies as st

from lfr_ds.data.sample_index import read_sample_index, write_sample_index
from lfr_ds.data.sampler import DataParallelSampler, shuffled_order
from lfr_ds.errors import UserError

MANIFEST = phase_manifest()


def test_round_trip_and_manifest(tmp_path):
    ids = np.arange(100)[::-1]
    m = write_sample_index(tmp_path / "p.npy", ids, MANIFEST)
    back, manifest = read_sample_index(tmp_path / "p.npy", dataset="f" * 64)
    assert np.array_equal(back, ids) and back.dtype == np.uint32
    assert manifest == m and manifest.length == 100 and len(manifest.sha256) == 64
    assert json.loads((tmp_path / "p.json").read_text())["kind"] == "random"


def test_corrupt_file_is_refused(tmp_path):
    write_sample_index(tmp_path / "p.npy", np.arange(100), MANIFEST)
    raw = bytearray((tmp_path / "p.npy").read_bytes())
    raw[-1] ^= 1
    (tmp_path / "p.npy").write_bytes(bytes(raw))
    with pytest.raises(UserError, match="checksum does not match"):
        read_sample_index(tmp_path / "p.npy")


def test_other_dataset_is_refused(tmp_path):
    write_sample_index(tmp_path / "p.npy", np.arange(100), MANIFEST)
    with pytest.raises(UserError, match="belongs to another dataset"):
        read_sample_index(tmp_path / "p.npy", dataset="0" * 64)


def test_missing_manifest_is_refused(tmp_path):
    write_sample_index(tmp_path / "p.npy", np.arange(100), MANIFEST)
    (tmp_path / "p.json").unlink()
    with pytest.raises(UserError, match="missing"):
        read_sample_index(tmp_path / "p.npy")


def test_shuffled_order_epochs():
    order = shuffled_order(50, 120, [3, 1])
    for e in range(2):
        assert sorted(order[e * 50 : (e + 1) * 50]) == list(range(50))
    assert not np.array_equal(order[:50], order[50:100])
    assert np.array_equal(order, shuffled_order(50, 120, [3, 1]))
    assert np.array_equal(order[100:], shuffled_order(50, 150, [3, 1])[100:120])
    assert not np.array_equal(order, shuffled_order(50, 120, [3, 2]))


@settings(max_examples=50, deadline=None)
@given(
    world=st.sampled_from([1, 2, 4, 8]),
    micro=st.sampled_from([1, 2, 3]),
    accum=st.sampled_from([1, 2, 4]),
    step=st.integers(0, 4),
)
def test_ranks_partition_every_global_batch_whatever_the_world_size(world, micro, accum, step):
    G = 24 * 8  # divisible by every world × micro × accum combination below when it divides
    if G % (world * micro):
        return
    order = shuffled_order(1000, 5 * G, 7)
    pieces = [np.concatenate(DataParallelSampler(order, G, micro, r, world).micro_batches(step)) for r in range(world)]
    # Concatenated in rank order, the shards are exactly global batch `step`, in order, for any world size.
    assert np.array_equal(np.concatenate(pieces), order[step * G : (step + 1) * G])
    per_rank = DataParallelSampler(order, G, micro, 0, world).micro_batches(step)
    assert all(len(m) == micro for m in per_rank)
