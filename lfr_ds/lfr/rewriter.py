"""The sample index rewriter: at every phase boundary, write the next phase's sample index file.

- ``random`` / ``learn`` / ``review``: a fresh seeded shuffle of all blocks, epoch after epoch; over a
  blend of corpora, each corpus makes its weight of the order (:func:`lfr_ds.data.blend.blended_order`).
- ``focus``: :func:`lfr_ds.lfr.focus.focus_selection` from the loss table (features → hierarchical
  clusters → drop the easiest → perplexity-weighted draw, cluster first; over a blend, within each
  corpus), described for the manifest by :mod:`lfr_ds.lfr.reporter`.

Rank 0 writes ``RUN_DIR/index/<phase>.npy`` + ``.json`` atomically. Other ranks get it either from the
shared filesystem after a barrier, or, for clusters without one, by broadcast (the bytes of both files,
written to ``RUN_DIR/index/rank<r>/`` and checksum-verified on read). A file is reused only if its manifest records the
same inputs (phase, seed, dataset, batch geometry and a digest of the loss table): rewriting is
deterministic, so a resumed run writes the same bytes an uninterrupted one did.

A :class:`Rewriter` holds what is fixed for the whole run (built once, from the config and the dataset);
a boundary passes only the phase, the loss table and, resuming mid-phase, the digest it must find.
``lfr-rewrite`` (:mod:`lfr_ds.lfr.offline`) goes through the same :meth:`Rewriter.build` and
:meth:`Rewriter.write`.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist

from lfr_ds import atomic
from lfr_ds.config import LFRConfig, TrainConfig
from lfr_ds.data.blend import Blend, BlendView, Corpora, blended_order
from lfr_ds.data.dataset import sha256_file
from lfr_ds.data.sample_index import read_manifest, read_sample_index, write_sample_index
from lfr_ds.errors import UserError
from lfr_ds.lfr import reporter
from lfr_ds.lfr.focus import focus_selection
from lfr_ds.lfr.loss_table import LossTable
from lfr_ds.lfr.schedule import Phase, kept_pass_steps
from lfr_ds.run_state import PhaseManifest, phase_file


def phase_seed(seed: int, phase: Phase) -> list[int]:
    return [seed, phase.index]


def declared_settings(phase: Phase, options: LFRConfig) -> list:
    """The ``lfr.*`` settings a phase's order depends on, as each :class:`~lfr_ds.config.LFRConfig` field
    declares in its ``digest`` metadata (see there); a shuffle phase depends on none."""
    if phase.kind != "focus":
        return []
    fields = dataclasses.fields(LFRConfig)

    def declared(role: str) -> list[dataclasses.Field]:
        return [f for f in fields if f.metadata["digest"] == role]

    settings = [getattr(options, f.name) for f in declared("focus")]
    if phase.auto_drop or phase.kept_passes is not None:
        settings += [phase.auto_drop, phase.kept_passes]
        settings += [getattr(options, f.name) if phase.auto_drop else None for f in declared("auto")]
    settings += [
        getattr(options, f.name)
        for f in declared("focus-if-changed")
        if getattr(options, f.name) != f.metadata.get("unless", f.default)
    ]
    # oracle (issue 21): a file setting enters by its content, and only when set, so other runs' digests stay the same.
    settings += [
        _file_sha256(f.name, getattr(options, f.name))
        for f in declared("focus-file-if-set")
        if getattr(options, f.name)
    ]
    return settings


def _file_sha256(name: str, path: str) -> str:
    try:
        return sha256_file(path)
    except OSError as e:
        raise UserError(
            f"lfr.{name} {path}: unreadable ({e.strerror}); give an existing file or unset lfr.{name}"
        ) from None


@dataclass(frozen=True)
class Built:
    """A phase's order before it is written: the ids, their manifest (``length`` and ``sha256`` still to
    come) and, for a Focus phase, the kept mask."""

    order: np.ndarray
    manifest: PhaseManifest
    keep: np.ndarray | None


@dataclass(frozen=True)
class Rewriter:
    """What every phase boundary of a run shares; :meth:`for_run` builds it from the config and the data."""

    run_dir: Path
    options: LFRConfig
    """``lfr.*``: the selection settings, and ``distribute``."""
    seed: int
    """``data.seed``: each phase draws with ``[seed, phase index]``."""
    dataset: str
    """The dataset's fingerprint."""
    sources: list[str]
    block_source: np.ndarray
    """Per block, its index into :attr:`sources` (for the manifests' statistics only)."""
    seq_length: int
    global_batch: int
    rank: int = 0
    device: torch.device | None = None
    """Where ``distribute=broadcast`` stages the bytes (a CUDA device under NCCL; ``None`` = CPU)."""
    corpora: Corpora | None = None
    """The corpora of a blend (:class:`~lfr_ds.data.blend.Corpora`): Learn and Review draw by their
    weights, Focus drops and draws within each corpus. ``None`` (or one corpus) = one dataset."""

    @classmethod
    def for_run(
        cls, cfg: TrainConfig, dataset: Blend, blocks: BlendView, *, rank: int = 0, device: torch.device | None = None
    ) -> Rewriter:
        """The rewriter of run ``cfg`` on ``dataset`` (one dataset or a blend), whose ``blocks`` are cut with
        ``cfg.model.seq_length`` and ``cfg.data.seed``."""
        return cls(
            Path(cfg.run_dir),
            cfg.lfr,
            cfg.data.seed,
            dataset.fingerprint,
            list(dataset.sources),
            blocks.block_source,
            cfg.model.seq_length,
            cfg.engine.global_batch_size,
            rank,
            device,
            blocks.corpora,
        )

    @property
    def num_blocks(self) -> int:
        return len(self.block_source)

    @property
    def blend(self) -> Corpora | None:
        """:attr:`corpora` when it holds several; a blend of one is its dataset, bit for bit."""
        return self.corpora if self.corpora is not None and self.corpora.count > 1 else None

    def digest(self, phase: Phase, table: LossTable | None) -> str:
        """Everything the phase's order depends on; a file whose manifest records the same digest is reused."""
        settings = [
            phase.kind,
            phase.index,
            phase.start,
            phase.steps,
            phase.drop,
            self.seed,
            self.dataset,
            self.global_batch,
        ]
        h = hashlib.sha256(json.dumps(settings + declared_settings(phase, self.options)).encode())
        if table is not None and phase.kind == "focus":
            for arr in table.arrays().values():
                h.update(np.ascontiguousarray(arr))  # hashes the buffer in place: no copy of a GB-sized column
        return h.hexdigest()

    def build(self, phase: Phase, table: LossTable | None, digest: str | None = None) -> Built:
        """The phase's order (``steps × global_batch`` ids, ``steps`` resolved here for a ``kp`` phase), its
        manifest and kept mask: a seeded shuffle, or for Focus a selection from ``table`` (``None``: the
        training guard distrusts it, and the Focus keeps every block, drawn as a shuffle). ``digest``: its
        :meth:`digest`, if the caller has it already (hashing a 100M-block table takes seconds)."""
        base = {
            "phase": phase.name,
            "kind": phase.kind,
            "seed": phase_seed(self.seed, phase),
            "dataset": self.dataset,
            "num_blocks": self.num_blocks,
            "index": phase.index,
            "start_step": phase.start,
            "drop_fraction": phase.drop,
            "seq_length": self.seq_length,
            "global_batch_size": self.global_batch,
            "inputs_sha256": digest or self.digest(phase, table),
        }
        if phase.kind != "focus" or table is None:  # a shuffle; or a Focus with no table it may trust: drops none
            steps = phase.steps
            if phase.kind == "focus":
                base["drop_fraction"] = 0.0
                if phase.kept_passes is not None:  # every block is kept: 1kp = 1ep
                    steps = kept_pass_steps(phase.kept_passes, self.num_blocks, self.global_batch)
            corpora = self.blend or Corpora(["data"], np.ones(1), np.array([0, self.num_blocks], dtype=np.int64))
            order = blended_order(corpora, steps * self.global_batch, phase_seed(self.seed, phase))
            fields, keep = {"steps": steps, "kept": self.num_blocks, "dropped": 0}, None
        else:
            sel = focus_selection(
                table,
                phase,
                global_batch=self.global_batch,
                seed=phase_seed(self.seed, phase),
                options=self.options,
                corpora=self.blend,
            )
            order, keep = sel.order, sel.keep
            fields = reporter.focus_fields(sel, table.seen, self.block_source, self.sources, self.options, phase.drop)
            if self.blend is not None:  # blend (issue 20): each corpus's drop, and each cluster's corpus
                reporter.corpus_focus_fields(fields, sel, table.seen, self.blend, self.options)
            if phase.kept_passes is not None:
                fields.update(kept_passes=phase.kept_passes, provisional_steps=phase.steps)
        share = reporter.source_share(order, self.block_source, self.sources)
        if self.blend is not None:  # blend (issue 20): each corpus's share of the draws against its weight
            fields["corpora"] = reporter.corpus_shares(self.blend, order)
        return Built(order, PhaseManifest(**{**base, "source_share": share, **fields}), keep)

    def write(self, path: Path, built: Built) -> PhaseManifest:
        """Write ``built`` as ``path`` (+ manifest, + ``<name>.kept.npy``, the packed kept mask of a Focus phase)."""
        manifest = built.manifest
        if built.keep is not None:
            kept_path = path.with_name(path.stem + ".kept.npy")
            atomic.save_npy(kept_path, np.packbits(built.keep))
            manifest = dataclasses.replace(manifest, kept_mask=kept_path.name)
        return write_sample_index(path, built.order, manifest)

    def prepare(
        self, phase: Phase, table: LossTable | None, resumed_digest: str | None = None
    ) -> tuple[np.ndarray, PhaseManifest]:
        """Make ``phase``'s sample index available on every rank; returns ``(order, manifest)`` (same on all).

        At the phase's first step the order follows from the current loss table. A run resumed in the middle
        of a phase passes ``resumed_digest`` (saved in its checkpoint) instead: the table has moved on since
        the phase began, so the file written then must be reused as it is, never rebuilt.
        """
        path = phase_file(self.run_dir, phase.name)
        digest = resumed_digest or self.digest(phase, table)
        if self.rank == 0:
            path.parent.mkdir(parents=True, exist_ok=True)
            if resumed_digest is not None and not _reusable(path, digest, self.dataset):
                raise UserError(
                    f"{path}: missing or not the file this run was using when it was checkpointed; "
                    "it cannot be rebuilt mid-phase (the loss table has moved on): "
                    f"restore it, or resume from a checkpoint before step {phase.start + 1}"
                )
            if not _reusable(path, digest, self.dataset):
                self.write(path, self.build(phase, table, digest))
        if dist.is_initialized() and dist.get_world_size() > 1:
            if self.options.distribute == "broadcast":
                path = _broadcast_files(path, self.rank, self.device or torch.device("cpu"))
            else:
                dist.barrier()
        order, manifest = read_sample_index(path, dataset=self.dataset)
        if manifest.inputs_sha256 != digest:
            raise RuntimeError(f"{path}: written for other inputs than this rank's; ranks disagree on the loss table")
        return order, manifest


def read_kept_mask(path: Path, manifest: PhaseManifest) -> np.ndarray | None:
    """The kept mask a focus phase's manifest points to (bool [num_blocks]), or ``None``."""
    if manifest.kept_mask is None:
        return None
    packed = np.load(Path(path).parent / manifest.kept_mask, allow_pickle=False)
    return np.unpackbits(packed, count=manifest.num_blocks).astype(bool)


def _reusable(path: Path, digest: str, dataset: str) -> bool:
    try:
        if read_manifest(path).inputs_sha256 != digest:  # before the checksum: that reads the whole file
            return False
        read_sample_index(path, dataset=dataset)
    except Exception:  # anything off (missing, corrupt, half-written, foreign): just rewrite it
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
