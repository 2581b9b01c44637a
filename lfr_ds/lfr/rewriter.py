"""The sample index rewriter: at every phase boundary, write the next phase's sample index file.

- ``random`` / ``learn`` / ``review``: a fresh seeded shuffle of all blocks, epoch after epoch; over a
  blend of corpora, each corpus makes its weight of the order (:func:`lfr_ds.data.blend.blended_order`).
- ``focus``: :func:`lfr_ds.lfr.focus.focus_order` from the loss table (features → hierarchical
  clusters → drop the easiest → perplexity-weighted draw, cluster first).

Rank 0 writes ``RUN_DIR/index/<phase>.npy`` + ``.json`` atomically. Other ranks get it either from the
shared filesystem after a barrier, or, for clusters without one, by broadcast (the bytes of both files,
written to ``RUN_DIR/index/rank<r>/`` and checksum-verified on read). A file is reused only if its manifest records the
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
from lfr_ds.config import LFRConfig
from lfr_ds.data.blend import Corpora, blended_order
from lfr_ds.data.sample_index import read_sample_index, write_sample_index
from lfr_ds.errors import UserError
from lfr_ds.lfr.focus import focus_order
from lfr_ds.lfr.loss_table import LossTable
from lfr_ds.lfr.schedule import Phase


def phase_seed(seed: int, phase: Phase) -> list[int]:
    return [seed, phase.index]


def inputs_digest(
    phase: Phase,
    seed: int,
    dataset: str,
    global_batch: int,
    table: LossTable | None,
    options: LFRConfig | None,
) -> str:
    """Everything the phase's order depends on; a file whose manifest records the same digest is reused."""
    settings = [phase.kind, phase.index, phase.start, phase.steps, phase.drop, seed, dataset, global_batch]
    if phase.kind == "focus" and options is not None:
        settings += [
            options.score,
            options.selection,
            options.max_cluster_drop,
            options.clusters,
            options.centroids,
            options.temperature,
        ]
        # Only where they matter, so the digests of runs made before these settings existed stay the same.
        if phase.auto_drop or phase.kept_passes is not None:
            settings += [phase.auto_drop, phase.kept_passes, options.auto_max_drop if phase.auto_drop else None]
        if options.weighting != "perplexity":
            settings.append(options.weighting)
        if options.blend != "keep":  # blend (issue 20): only where not the default, as above
            settings.append(["blend", options.blend])
    h = hashlib.sha256(json.dumps(settings).encode())
    if table is not None and phase.kind == "focus":
        for arr in table.arrays().values():
            h.update(np.ascontiguousarray(arr))  # hashes the buffer in place: no copy of a GB-sized column
    return h.hexdigest()


def build_order(
    phase: Phase,
    *,
    num_blocks: int,
    global_batch: int,
    seed: int,
    table: LossTable | None,
    block_source: np.ndarray,
    sources: list[str],
    options: LFRConfig | None,
    corpora: Corpora | None = None,
) -> tuple[np.ndarray, dict, np.ndarray | None]:
    """The phase's block order, the manifest fields that describe it and (focus only) the kept mask.
    The order holds ``steps × global_batch`` ids, where ``steps`` (also in the fields) is the phase's,
    or for a ``kp`` phase its length resolved from the kept set. ``corpora``: the blend's (None = one dataset)."""
    corpora = corpora or Corpora(["data"], np.ones(1), np.array([0, num_blocks], dtype=np.int64))
    if phase.kind != "focus":
        order = blended_order(corpora, phase.steps * global_batch, phase_seed(seed, phase))
        return order, {"steps": phase.steps, "kept": num_blocks, "dropped": 0}, None
    return focus_order(table, phase, global_batch=global_batch, seed=phase_seed(seed, phase), block_source=block_source,
                       sources=sources, options=options or LFRConfig(), corpora=corpora)


def write_phase_index(path: Path, phase: Phase, order: np.ndarray, fields: dict, keep: np.ndarray | None, *, seed: int,
                      dataset: str, num_blocks: int, seq_length: int, global_batch: int, digest: str,
                      block_source: np.ndarray, sources: list[str], corpora: Corpora | None = None) -> dict:
    """Write ``path`` (+ manifest, + ``<name>.kept.npy``, the packed kept mask of a focus phase). ``fields``
    (from :func:`build_order`) give the phase's ``steps`` (resolved, for a ``kp`` phase) and, for an
    ``@auto`` phase, the ``drop_fraction`` it chose. Over a blend of several corpora the manifest's
    ``corpora`` gives each corpus's weight and its share of the order's draws."""
    if keep is not None:
        kept_path = path.with_name(path.stem + ".kept.npy")
        atomic.save_npy(kept_path, np.packbits(keep))
        fields = {**fields, "kept_mask": kept_path.name}
    counts = np.bincount(block_source[order], minlength=len(sources))
    return write_sample_index(path, order, {
        "phase": phase.name, "kind": phase.kind, "index": phase.index, "start_step": phase.start,
        "drop_fraction": phase.drop, "seed": phase_seed(seed, phase), "dataset": dataset, "num_blocks": num_blocks,
        "seq_length": seq_length, "global_batch_size": global_batch, "inputs_sha256": digest,
        "source_share": {s: round(float(c) / max(1, len(order)), 6) for s, c in zip(sources, counts, strict=True)},
        **fields,
        **({"corpora": corpus_shares(corpora, order)} if corpora is not None and corpora.count > 1 else {}),
    })


def corpus_shares(corpora: Corpora, order: np.ndarray) -> dict:
    """Per corpus: its blend weight, its share of ``order``'s draws and by how much that moved off the weight."""
    counts = corpora.counts(order)
    return {
        name: {"weight": round(float(w), 6), "share": round(float(n) / max(1, len(order)), 6),
               "share_minus_weight": round(float(n) / max(1, len(order)) - float(w), 6)}
        for name, w, n in zip(corpora.names, corpora.weights, counts, strict=True)
    }


def read_kept_mask(path: Path, manifest: dict) -> np.ndarray | None:
    """The kept mask a focus phase's manifest points to (bool [num_blocks]), or ``None``."""
    name = manifest.get("kept_mask")
    if name is None:
        return None
    return np.unpackbits(np.load(Path(path).parent / name, allow_pickle=False), count=manifest["num_blocks"]).astype(bool)


def prepare_phase(
    phase: Phase,
    *,
    run_dir: str,
    rank: int,
    distribute: str,
    num_blocks: int,
    seq_length: int,
    global_batch: int,
    seed: int,
    dataset: str,
    table: LossTable | None,
    block_source: np.ndarray,
    sources: list[str],
    options: LFRConfig | None = None,
    device: torch.device | None = None,
    resumed_digest: str | None = None,
    corpora: Corpora | None = None,
) -> tuple[np.ndarray, dict]:
    """Make ``phase``'s sample index available on every rank; returns ``(order, manifest)`` (same on all).

    At the phase's first step the order follows from the current loss table. A run resumed in the middle
    of a phase passes ``resumed_digest`` (saved in its checkpoint) instead: the table has moved on since
    the phase began, so the file written then must be reused as it is, never rebuilt.
    """
    path = Path(run_dir) / "index" / f"{phase.name}.npy"
    digest = resumed_digest or inputs_digest(phase, seed, dataset, global_batch, table, options)
    if rank == 0:
        path.parent.mkdir(parents=True, exist_ok=True)
        if resumed_digest is not None and not _reusable(path, digest, dataset):
            raise UserError(
                f"{path}: missing or not the file this run was using when it was checkpointed; it cannot be rebuilt "
                f"mid-phase (the loss table has moved on): restore it, or resume from a checkpoint before step {phase.start + 1}"
            )
        if not _reusable(path, digest, dataset):
            order, fields, keep = build_order(phase, num_blocks=num_blocks, global_batch=global_batch, seed=seed, table=table,
                                              block_source=block_source, sources=sources, options=options, corpora=corpora)
            write_phase_index(path, phase, order, fields, keep, seed=seed, dataset=dataset, num_blocks=num_blocks,
                              seq_length=seq_length, global_batch=global_batch, digest=digest, block_source=block_source,
                              sources=sources, corpora=corpora)
    if dist.is_initialized() and dist.get_world_size() > 1:
        if distribute == "broadcast":
            path = _broadcast_files(path, rank, device or torch.device("cpu"))
        else:
            dist.barrier()
    order, manifest = read_sample_index(path, dataset=dataset)
    if manifest.get("inputs_sha256") != digest:
        raise RuntimeError(f"{path}: written for other inputs than this rank's; ranks disagree on the loss table")
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


def _broadcast_files(path: Path, rank: int, device: torch.device) -> Path:
    """Send rank 0's ``.npy`` and ``.json`` to every rank. Each other rank writes its copy atomically under
    ``index/rank<r>/`` (its own even when the filesystem happens to be shared) and returns that path."""
    local = path if rank == 0 else path.parent / f"rank{rank}" / path.name
    for src, dst in ((path, local), (path.with_suffix(".json"), local.with_suffix(".json"))):  # manifest last
        size = torch.tensor([src.stat().st_size if rank == 0 else 0], dtype=torch.int64, device=device)
        dist.broadcast(size, src=0)
        buf = torch.empty(int(size.item()), dtype=torch.uint8, device=device)
        if rank == 0:
            buf.copy_(torch.frombuffer(bytearray(src.read_bytes()), dtype=torch.uint8))
        dist.broadcast(buf, src=0)
        if rank != 0:
            dst.parent.mkdir(parents=True, exist_ok=True)
            atomic.write_bytes(dst, buf.cpu().numpy().tobytes())
    dist.barrier()
    return local
