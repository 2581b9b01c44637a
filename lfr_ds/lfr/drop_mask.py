"""``lfr.drop_mask``: an experiment hook that hands Focus its drop decision, for ceilings such as an oracle.

Not a selection mode. ``lfr-compare``'s ``oracle`` arm (:mod:`lfr_ds.compare.ceilings`) uses it to ask
what a perfect copy detector would gain inside Learn → Focus → Review: every Focus phase drops exactly
the blocks the mask names, seen or not, and keeps every other block, which it clusters, weights and draws
as it always does (:func:`lfr_ds.lfr.focus.focus_selection`). The phase's own drop fraction (``@0.5``,
``@auto``) is ignored; a ``kp`` length counts passes over the blocks the mask keeps.

Format: a ``.npy`` (no pickle) of ``uint8``, ``np.packbits`` of a bool per block id (True = drop), so
``ceil(num_blocks / 8)`` bytes with the padding bits of the last byte zero. Block ids are those of the
run's block view (its dataset, ``model.seq_length`` and ``data.seed``), so a mask belongs to one run's
cut of the data: :func:`read_drop_mask` refuses a mask of another length. The file's SHA-256 enters
every Focus phase's inputs digest (:func:`lfr_ds.lfr.rewriter.declared_settings`), so a changed mask
never reuses a phase file written for the old one.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from lfr_ds import atomic
from lfr_ds.errors import UserError


def write_drop_mask(path: str | os.PathLike, drop: np.ndarray) -> None:
    """Write ``drop`` (bool per block id, True = drop) as a packed mask, atomically."""
    atomic.save_npy(path, np.packbits(np.asarray(drop, dtype=bool)))


def read_drop_mask(path: str | os.PathLike, num_blocks: int) -> np.ndarray:
    """The mask at ``path`` as bool ``[num_blocks]`` (True = drop); refused in one line if it is missing,
    not a packed uint8 ``.npy``, or made for another number of blocks."""
    fix = "write it with lfr_ds.lfr.drop_mask.write_drop_mask for this run's blocks, or unset lfr.drop_mask"
    try:
        packed = np.load(Path(path), allow_pickle=False)
    except (OSError, ValueError) as e:
        raise UserError(f"lfr.drop_mask {path}: unreadable ({e}); {fix}") from None
    if packed.dtype != np.uint8 or packed.ndim != 1 or len(packed) != -(-num_blocks // 8):
        raise UserError(
            f"lfr.drop_mask {path}: {packed.dtype} {list(packed.shape)} is not a packed mask of this run's "
            f"{num_blocks} blocks ({-(-num_blocks // 8)} uint8 bytes); {fix}"
        )
    bits = np.unpackbits(packed)
    if bits[num_blocks:].any():
        raise UserError(f"lfr.drop_mask {path}: names blocks past this run's {num_blocks}; {fix}")
    return bits[:num_blocks].astype(bool)
