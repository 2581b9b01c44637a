"""Sample index files: the on-disk order in which blocks are consumed, one file per phase.

``NAME.npy`` is a plain 1-D numpy array of block ids (uint32, or int64 for datasets of 2³² blocks or
more), readable with ``np.load(..., mmap_mode="r")``. ``NAME.json`` is its manifest::

    {"format": "lfr-ds-sample-index/1", "phase": "phase_002", "kind": "focus", "seed": 1236,
     "length": 65536, "sha256": "<of NAME.npy>", "dataset": "<dataset fingerprint>",
     "num_blocks": 34241, ...phase-specific fields (drop fraction, counts kept/dropped, per source)}

The manifest is written after the array and renamed into place last, so its presence means the pair is
complete; ``read_sample_index`` re-checks the checksum and the dataset fingerprint and refuses a file
that is corrupt or belongs to another dataset.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from lfr_ds import atomic
from lfr_ds.data.dataset import sha256_file
from lfr_ds.errors import UserError
from lfr_ds.faults import crash_point

FORMAT = "lfr-ds-sample-index/1"


def id_dtype(num_blocks: int) -> np.dtype:
    return np.dtype(np.uint32 if num_blocks < 2**32 else np.int64)


def write_sample_index(path: str | os.PathLike, ids: np.ndarray, manifest: dict) -> dict:
    """Write ``path`` (``.npy``) and its ``.json`` manifest atomically; returns the full manifest.

    ``manifest`` must hold ``phase``, ``kind``, ``seed``, ``dataset`` and ``num_blocks``; length and
    sha256 are added here.
    """
    path = Path(path)
    for key in ("phase", "kind", "seed", "dataset", "num_blocks"):
        if key not in manifest:
            raise ValueError(f"sample index manifest needs {key!r}")
    ids = np.ascontiguousarray(ids, dtype=id_dtype(manifest["num_blocks"]))
    if ids.ndim != 1:
        raise ValueError("sample index must be 1-D")
    with atomic.atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            np.save(f, ids, allow_pickle=False)
        digest = sha256_file(tmp)
    crash_point("rewrite", int(manifest.get("index", -1)))
    full = {"format": FORMAT, **manifest, "length": len(ids), "sha256": digest}
    atomic.write_json(_manifest_path(path), full)
    return full


def read_sample_index(path: str | os.PathLike, *, dataset: str | None = None) -> tuple[np.ndarray, dict]:
    """Load a sample index (mmap) after checking its manifest, checksum and, if given, dataset fingerprint."""
    path = Path(path)
    mpath = _manifest_path(path)
    if not path.is_file() or not mpath.is_file():
        raise UserError(
            f"{path}: sample index or its manifest {mpath.name} is missing; re-run the phase rewrite"
        )
    try:
        manifest = json.loads(mpath.read_text())
        expected = manifest["sha256"]
    except (ValueError, KeyError, TypeError):
        raise UserError(
            f"{mpath}: unreadable sample index manifest; delete the pair and re-run the rewrite"
        ) from None
    if manifest.get("format") != FORMAT:
        raise UserError(f"{mpath}: not an lfr-ds sample index manifest (format {manifest.get('format')!r})")
    if sha256_file(path) != expected:
        raise UserError(
            f"{path}: checksum does not match its manifest (corrupt or replaced); delete it and re-run the rewrite"
        )
    if dataset is not None and manifest.get("dataset") != dataset:
        raise UserError(
            f"{path}: sample index belongs to another dataset (fingerprint {str(manifest.get('dataset'))[:12]}, "
            f"this run's is {dataset[:12]}); use the index files written for this dataset"
        )
    try:
        ids = np.load(path, mmap_mode="r", allow_pickle=False)
    except ValueError:
        raise UserError(f"{path}: not a numpy array file; delete it and re-run the rewrite") from None
    if ids.ndim != 1 or len(ids) != manifest.get("length"):
        raise UserError(
            f"{path}: shape {ids.shape} disagrees with its manifest length {manifest.get('length')}"
        )
    if len(ids) and int(ids.max()) >= manifest["num_blocks"]:
        raise UserError(f"{path}: holds block ids beyond the dataset's {manifest['num_blocks']} blocks")
    return ids, manifest


def _manifest_path(path: Path) -> Path:
    return path.with_suffix(".json")
