"""Sample index files: the on-disk order in which blocks are consumed, one file per phase.

``NAME.npy`` is a plain 1-D numpy array of block ids (uint32, or int64 for datasets of 2³² blocks or
more), readable with ``np.load(..., mmap_mode="r")``. ``NAME.json`` is its manifest
(:class:`lfr_ds.run_state.PhaseManifest`, every field documented there)::

    {"format": "lfr-ds-sample-index/1", "phase": "phase_002", "kind": "focus", "seed": 1236,
     "length": 65536, "sha256": "<of NAME.npy>", "dataset": "<dataset fingerprint>",
     "num_blocks": 34241, ...phase-specific fields (drop fraction, counts kept/dropped, per source)}

The manifest is written after the array and renamed into place last, so its presence means the pair is
complete; ``read_sample_index`` re-checks the checksum and the dataset fingerprint and refuses a file
that is corrupt or belongs to another dataset.
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path

import numpy as np

from lfr_ds import atomic
from lfr_ds.data.dataset import sha256_file
from lfr_ds.errors import UserError
from lfr_ds.faults import crash_point
from lfr_ds.run_state import PhaseManifest


def id_dtype(num_blocks: int) -> np.dtype:
    return np.dtype(np.uint32 if num_blocks < 2**32 else np.int64)


def write_sample_index(path: str | os.PathLike, ids: np.ndarray, manifest: PhaseManifest) -> PhaseManifest:
    """Write ``path`` (``.npy``) and its ``.json`` manifest atomically; returns the manifest with its
    ``length`` and ``sha256`` filled in."""
    path = Path(path)
    ids = np.ascontiguousarray(ids, dtype=id_dtype(manifest.num_blocks))
    if ids.ndim != 1:
        raise ValueError("sample index must be 1-D")
    with atomic.atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            np.save(f, ids, allow_pickle=False)
        digest = sha256_file(tmp)
    crash_point("rewrite", manifest.index)
    full = dataclasses.replace(manifest, length=len(ids), sha256=digest)
    atomic.write_json(_manifest_path(path), full.to_json())
    return full


def read_sample_index(path: str | os.PathLike, *, dataset: str | None = None) -> tuple[np.ndarray, PhaseManifest]:
    """Load a sample index (mmap) after checking its manifest, checksum and, if given, dataset fingerprint."""
    path = Path(path)
    if not path.is_file() or not _manifest_path(path).is_file():
        raise UserError(
            f"{path}: sample index or its manifest {_manifest_path(path).name} is missing; re-run the phase rewrite"
        )
    manifest = read_manifest(path)
    if sha256_file(path) != manifest.sha256:
        raise UserError(
            f"{path}: checksum does not match its manifest (corrupt or replaced); delete it and re-run the rewrite"
        )
    if dataset is not None and manifest.dataset != dataset:
        raise UserError(
            f"{path}: sample index belongs to another dataset (fingerprint {manifest.dataset[:12]}, "
            f"this run's is {dataset[:12]}); use the index files written for this dataset"
        )
    try:
        ids = np.load(path, mmap_mode="r", allow_pickle=False)
    except ValueError:
        raise UserError(f"{path}: not a numpy array file; delete it and re-run the rewrite") from None
    if ids.ndim != 1 or len(ids) != manifest.length:
        raise UserError(f"{path}: shape {ids.shape} disagrees with its manifest length {manifest.length}")
    if len(ids) and int(ids.max()) >= manifest.num_blocks:
        raise UserError(f"{path}: holds block ids beyond the dataset's {manifest.num_blocks} blocks")
    return ids, manifest


def read_manifest(path: str | os.PathLike) -> PhaseManifest:
    """The manifest of sample index ``path`` (the ``.npy``), checked field by field but not against the array."""
    mpath = _manifest_path(Path(path))
    try:
        obj = json.loads(mpath.read_text())
    except ValueError:
        raise UserError(f"{mpath}: unreadable sample index manifest; delete the pair and re-run the rewrite") from None
    return PhaseManifest.from_json(obj, str(mpath))


def _manifest_path(path: Path) -> Path:
    return path.with_suffix(".json")
