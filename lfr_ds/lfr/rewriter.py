"""The sample index rewriter: at every phase boundary, write the next phase's sample index file.

- ``random`` / ``learn`` / ``review``: a fresh seeded shuffle of all blocks, epoch after epoch.
- ``focus``: :func:`lfr_ds.lfr.focus.focus_order` from the loss table (features → hierarchical
  clusters → drop the easiest → perplexity-weighted draw, cluster first).

Rank 0 writes ``RUN_DIR/index/<phase>.npy`` + ``.json`` atomically. Other ranks get it either from the
shared filesystem after a barrier, or, for clusters without one, by broadcast (the bytes of both files,
re-written locally and checksum-verified on read). A file is reused only if its manifest records the
same inputs (phase, seed, dataset, batch geometry and a digest of the loss table): rewriting is
deterministic, so a resumed run writes the same bytes an uninterrupted one did.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist

from lfr_ds import atomic
from lfr_ds.data.sample_index import read_sample_index, write_sample_index
from lfr_ds.data.sampler import shuffled_order
from lfr_ds.lfr.loss_table import LossTable
from lfr_ds.lfr.schedule import Phase


def phase_seed(seed: int, phase: Phase) -> list[int]:
    return [seed, phase.index]


def inputs_digest(phase: Phase, seed: int, dataset: str, global_batch: int, table: LossTable | None) -> str:
    h = hashlib.sha256(
        json.dumps(
            [phase.kind, phase.index, phase.start, phase.steps, phase.drop, seed, dataset, global_batch]
        ).encode()
    )
    if table is not None and phase.kind == "focus":
        for arr in table.arrays().values():
            h.update(np.ascontiguousarray(arr).tobytes())
    return h.hexdigest()


def build_order(
    phase: Phase,
    *,
    num_blocks: int,
    global_batch: int,
    seed: int,
    table: LossTable | None,
    block_source: np.ndarray,
    focus_options=None,
) -> tuple[np.ndarray, dict]:
    """The phase's block order and the manifest fields that describe it."""
    length = phase.steps * global_batch
    if phase.kind != "focus":
        return shuffled_order(num_blocks, length, phase_seed(seed, phase)), {"kept": num_blocks, "dropped": 0}
    from lfr_ds.lfr.focus import focus_order

    return focus_order(
        table,
        phase,
        length=length,
        seed=phase_seed(seed, phase),
        block_source=block_source,
        options=focus_options,
    )


def prepare_phase(
    phase: Phase,
    *,
    run_dir: str,
    rank: int,
    distribute: str,
    num_blocks: int,
    global_batch: int,
    seed: int,
    dataset: str,
    table: LossTable | None,
    block_source: np.ndarray,
    sources: list[str],
    focus_options=None,
    device: torch.device | None = None,
) -> tuple[np.ndarray, dict]:
    """Make ``phase``'s sample index available on every rank; returns ``(order, manifest)`` (same on all)."""
    path = Path(run_dir) / "index" / f"{phase.name}.npy"
    digest = inputs_digest(phase, seed, dataset, global_batch, table)
    if rank == 0:
        path.parent.mkdir(parents=True, exist_ok=True)
        if not _reusable(path, digest, dataset):
            order, fields = build_order(
                phase,
                num_blocks=num_blocks,
                global_batch=global_batch,
                seed=seed,
                table=table,
                block_source=block_source,
                focus_options=focus_options,
            )
            counts = np.bincount(block_source[np.asarray(order, dtype=np.int64)], minlength=len(sources))
            write_sample_index(
                path,
                order,
                {
                    "phase": phase.name,
                    "kind": phase.kind,
                    "index": phase.index,
                    "start_step": phase.start,
                    "steps": phase.steps,
                    "drop_fraction": phase.drop,
                    "seed": phase_seed(seed, phase),
                    "dataset": dataset,
                    "num_blocks": num_blocks,
                    "global_batch_size": global_batch,
                    "inputs_sha256": digest,
                    "source_share": {
                        s: round(float(c) / max(1, len(order)), 6)
                        for s, c in zip(sources, counts, strict=True)
                    },
                    **fields,
                },
            )
    if dist.is_initialized() and dist.get_world_size() > 1:
        if distribute == "broadcast":
            _broadcast_files(path, rank, device or torch.device("cpu"))
        else:
            dist.barrier()
    order, manifest = read_sample_index(path, dataset=dataset)
    if manifest.get("inputs_sha256") != digest:
        raise RuntimeError(
            f"{path}: written for other inputs than this rank's; ranks disagree on the loss table"
        )
    return order, manifest


def _reusable(path: Path, digest: str, dataset: str) -> bool:
    manifest_path = path.with_suffix(".json")
    if not manifest_path.is_file():
        return False
    try:
        manifest = json.loads(manifest_path.read_text())
        if manifest.get("inputs_sha256") != digest:
            return False
        read_sample_index(path, dataset=dataset)
    except Exception:  # anything off (corrupt, half-written, foreign): just rewrite it
        return False
    return True


def _broadcast_files(path: Path, rank: int, device: torch.device) -> None:
    """Send rank 0's ``.npy`` and ``.json`` to every rank; each writes its own copy atomically."""
    for p in (path, path.with_suffix(".json")):  # manifest last: it marks the pair complete
        size = torch.tensor([p.stat().st_size if rank == 0 else 0], dtype=torch.int64, device=device)
        dist.broadcast(size, src=0)
        buf = torch.empty(int(size.item()), dtype=torch.uint8, device=device)
        if rank == 0:
            buf.copy_(torch.frombuffer(bytearray(p.read_bytes()), dtype=torch.uint8))
        dist.broadcast(buf, src=0)
        if rank != 0:
            p.parent.mkdir(parents=True, exist_ok=True)
            atomic.write_bytes(p, buf.cpu().numpy().tobytes())
    dist.barrier()
