"""A run's on-disk layout: the records lfr-ds writes for itself, typed, and the names of their files.

- :class:`RunState`: a checkpoint's ``lfr/state.json`` (``RUN_DIR/checkpoints/step_N/``), next to its
  loss table ``lfr/arrays.npz`` and DeepSpeed's own files.
- :class:`PhaseManifest`: the ``.json`` manifest beside each phase's sample index ``.npy``
  (``RUN_DIR/index/<phase>.json``; the file pair's format is :mod:`lfr_ds.data.sample_index`).

Both are dataclasses with JSON in and out. Every field is checked on read: a record with a field missing
or of the wrong type is refused in one line (:class:`~lfr_ds.errors.UserError`), never a ``KeyError``
deep in a command. The JSON stays what it always was (keys sorted by :func:`lfr_ds.atomic.write_json`),
so files written before these classes existed read back, and write back, byte for byte. Fields marked
``optional`` are written only sometimes (a Focus phase's statistics, fields added after a format's first
release): absent on disk, they are ``None`` here, and ``None`` is never written.
"""

from __future__ import annotations

import dataclasses
import json
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lfr_ds.errors import UserError
from lfr_ds.lfr.schedule import Phase

#: A checkpoint's lfr-ds files, relative to its ``step_*`` directory: the run state, the loss table's
#: arrays (``np.savez``, no pickle) and each rank's RNG state.
LFR_DIR = "lfr"
STATE_FILE = f"{LFR_DIR}/state.json"
ARRAYS_FILE = f"{LFR_DIR}/arrays.npz"


def rng_file(rank: int) -> str:
    """Rank ``rank``'s RNG state in a checkpoint (relative to its ``step_*`` directory)."""
    return f"{LFR_DIR}/rng_rank{rank:05d}.npz"


#: A run's phase files, relative to its ``run_dir``: ``index/<phase name>.npy`` and its ``.json`` manifest.
INDEX_DIR = "index"


def phase_file(run_dir: str | Path, phase_name: str) -> Path:
    """``run_dir``'s sample index of the phase named ``phase_name`` (the ``.npy``; its manifest is the ``.json``)."""
    return Path(run_dir) / INDEX_DIR / f"{phase_name}.npy"


#: The sample index format's name, first in every manifest.
INDEX_FORMAT = "lfr-ds-sample-index/1"

_OPTIONAL = {"optional": True}


@dataclass
class GuardState:
    """The training guard's part of a run state (:class:`~lfr_ds.guard.Guard`): what a resumed or rewound run
    needs to skip the same batches and judge the next loss exactly as the saving run would have."""

    skipped: list[int]
    """1-based steps whose global batch a rewind skipped, ascending."""
    rewinds: int
    """Rewinds so far (``train.max_rewinds`` caps them)."""
    spikes: int
    """Steps flagged so far (loss spikes and diverged steps; warned or rewound)."""
    phase: int
    """The phase the spike statistics belong to; -1 before the first step."""
    losses: list[float]
    """The spike detector's window: the run's last unflagged step losses (across phases), oldest first."""
    in_phase: int | None = field(default=None, metadata=_OPTIONAL)
    """How many of the newest :attr:`losses` belong to :attr:`phase`. Absent (from before issue 27, whose
    window held the phase's losses only): all of them."""
    diverged: int | None = field(default=None, metadata=_OPTIONAL)
    """Diverged steps in a row up to the checkpoint (``train.diverged_steps`` stops the run). Absent
    (from before issue 27): 0."""

    @classmethod
    def from_json(cls, obj: object, where: str) -> GuardState:
        return cls(**_checked(cls, obj, where))


@dataclass
class RunState:
    """A checkpoint's ``lfr/state.json``: where the run stood and what it was (for resume and the tools)."""

    step: int
    """Optimizer steps completed."""
    samples: int
    """Blocks trained on: ``step × engine.global_batch_size``."""
    tokens: int
    """Tokens trained on: ``samples × model.seq_length``."""
    phase: int
    """Index (in :attr:`schedule`) of the phase the last step belonged to."""
    phase_digest: str
    """That phase's sample index ``inputs_sha256``: a run resumed mid-phase reuses exactly that file."""
    world_size: int
    """Data-parallel ranks that saved it (another count resumes through a universal checkpoint)."""
    schedule: list[Phase]
    """The run's phases, ``kp`` lengths as their boundaries resolved them."""
    config: dict
    """The run's full :class:`~lfr_ds.config.TrainConfig`, as ``dataclasses.asdict`` wrote it (read back
    with :func:`~lfr_ds.config.config_from_dict` by each command, which names what it cannot accept)."""
    vocab_size: int
    """The vocabulary as resolved from the data (``model.vocab_size`` may be unset)."""
    tokenizer: dict | None
    """``{"path", "sha256"}`` of the run's tokenizer; ``None`` for a plain Megatron dataset."""
    dataset: str
    """The training dataset's fingerprint."""
    guard: GuardState | None = field(default=None, metadata=_OPTIONAL)
    """The training guard's skipped steps, rewinds and spike statistics; absent in checkpoints from before it."""

    def to_json(self) -> dict:
        out = {**dataclasses.asdict(self), "schedule": [dataclasses.asdict(p) for p in self.schedule]}
        if self.guard is None:
            del out["guard"]
        else:  # a guard state read from before issue 27 writes back as it was
            out["guard"] = {k: v for k, v in out["guard"].items() if v is not None}
        return out

    @classmethod
    def from_json(cls, obj: object, where: str) -> RunState:
        """``obj`` (parsed JSON) checked field by field; ``where`` names the file in the error."""
        fields = _checked(cls, obj, where)
        fields["schedule"] = [_phase(d, where) for d in fields["schedule"]]
        if fields.get("guard") is not None:
            fields["guard"] = GuardState.from_json(fields["guard"], f"{where} (its 'guard')")
        if not 0 <= fields["phase"] < max(1, len(fields["schedule"])):
            raise UserError(f"{where}: unreadable (phase {fields['phase']} is not in its schedule); {_DAMAGED}")
        return cls(**fields)

    @classmethod
    def read(cls, ckpt: str | Path) -> RunState:
        """``ckpt``'s ``lfr/state.json`` (the caller found it), refused in one line if unreadable or incomplete."""
        path = Path(ckpt) / STATE_FILE
        try:
            obj = json.loads(path.read_text())
        except (OSError, ValueError) as e:
            raise UserError(f"{path}: unreadable ({e}); {_DAMAGED}") from None
        return cls.from_json(obj, str(path))


_DAMAGED = "the checkpoint is damaged or from another lfr-ds version"


@dataclass
class PhaseManifest:
    """A phase sample index's ``.json`` manifest: what the ``.npy`` holds and what it was made from."""

    phase: str
    """The phase's name, ``phase_<index>_<kind>``."""
    kind: str
    """random, learn, focus or review."""
    seed: list[int]
    """The seed its order was drawn with: ``[data.seed, phase index]``."""
    dataset: str
    """Fingerprint of the dataset whose block ids it holds."""
    num_blocks: int
    """Blocks in that dataset, cut at :attr:`seq_length`."""
    index: int
    """Index of the phase in the schedule."""
    start_step: int
    """First optimizer step (0-based) of the phase."""
    drop_fraction: float
    """The share of seen blocks a Focus drops: the phase's, or for ``@auto`` the one it chose; 0 otherwise."""
    seq_length: int
    global_batch_size: int
    inputs_sha256: str
    """Digest of everything the order depends on (:meth:`lfr_ds.lfr.rewriter.Rewriter.digest`): a file
    with the same digest is reused, not rewritten."""
    source_share: dict[str, float]
    """Each source's share of the drawn order."""
    steps: int
    """The phase's steps (for a ``kp`` phase, as resolved at its boundary): the order holds ``steps ×
    global_batch_size`` ids."""
    kept: int
    """Blocks the phase may draw (all of them but a Focus phase's dropped ones)."""
    dropped: int
    length: int = 0
    """Ids in the ``.npy`` (set by :func:`~lfr_ds.data.sample_index.write_sample_index`)."""
    sha256: str = ""
    """Of the ``.npy`` (set by :func:`~lfr_ds.data.sample_index.write_sample_index`)."""
    format: str = INDEX_FORMAT
    # ---- Focus phases only: the selection and what it did, for reports (lfr_ds.lfr.report)
    eligible: int | None = field(default=None, metadata=_OPTIONAL)
    """Blocks seen at least once, the ones a Focus may drop."""
    score: str | None = field(default=None, metadata=_OPTIONAL)
    selection: str | None = field(default=None, metadata=_OPTIONAL)
    max_cluster_drop: float | None = field(default=None, metadata=_OPTIONAL)
    """The per-cluster cap applied (at least the drop fraction)."""
    temperature: float | None = field(default=None, metadata=_OPTIONAL)
    weighting: str | None = field(default=None, metadata=_OPTIONAL)
    draw: str | None = field(default=None, metadata=_OPTIONAL)
    """``lfr.draw``, recorded only when it is ``systematic`` (absent: ``iid``, as in every manifest before it)."""
    source_blocks: dict[str, int] | None = field(default=None, metadata=_OPTIONAL)
    """Seen blocks per source."""
    source_drop_fraction: dict[str, float] | None = field(default=None, metadata=_OPTIONAL)
    difficulty_deciles: list[dict] | None = field(default=None, metadata=_OPTIONAL)
    """Per difficulty decile of the seen blocks (easiest first): ``from``, ``to``, ``drop_fraction``."""
    clusters: list[dict] | None = field(default=None, metadata=_OPTIONAL)
    """Per cluster: ``cluster``, ``blocks``, ``dropped``, ``drop_fraction``, ``mean_difficulty`` (and over a
    blend its ``corpus``)."""
    kept_passes: float | None = field(default=None, metadata=_OPTIONAL)
    """A ``kp`` phase: its passes over the kept blocks."""
    provisional_steps: int | None = field(default=None, metadata=_OPTIONAL)
    """A ``kp`` phase: its length before the boundary resolved it."""
    auto_drop: dict | None = field(default=None, metadata=_OPTIONAL)
    """An ``@auto`` phase: how it chose its drop fraction."""
    probe_quantile: float | None = field(default=None, metadata=_OPTIONAL)
    """An ``@auto`` phase with probes (issue 21): the α-quantile of the probes' relative losses."""
    absorbed_one_visit: int | None = field(default=None, metadata=_OPTIONAL)
    """An ``@auto`` phase with probes: blocks the absorbed test flagged on their one visit."""
    absorbed_two_visits: int | None = field(default=None, metadata=_OPTIONAL)
    """An ``@auto`` phase with probes: blocks the absorbed test flagged at both of their last two visits."""
    cluster_learnability: list[float] | None = field(default=None, metadata=_OPTIONAL)
    """``weighting=learnable``: each cluster's learnability."""
    kept_mask: str | None = field(default=None, metadata=_OPTIONAL)
    """File name (beside the manifest) of the packed kept mask (:func:`lfr_ds.lfr.rewriter.read_kept_mask`)."""
    # ---- a blend of several corpora only (issue 20; lfr_ds.lfr.reporter)
    corpora: dict[str, dict[str, float]] | None = field(default=None, metadata=_OPTIONAL)
    """Per corpus: its blend ``weight``, its ``share`` of the order's draws and ``share_minus_weight``."""
    corpus_drop_fraction: dict[str, float] | None = field(default=None, metadata=_OPTIONAL)
    """A Focus phase: each corpus's dropped share of its own seen blocks."""
    blend: str | None = field(default=None, metadata=_OPTIONAL)
    """A Focus phase: ``lfr.blend`` (``keep`` or ``free``)."""

    def to_json(self) -> dict:
        return {k: v for k, v in dataclasses.asdict(self).items() if v is not None}

    @classmethod
    def from_json(cls, obj: object, where: str) -> PhaseManifest:
        """``obj`` (parsed JSON) checked field by field; ``where`` names the file in the error."""
        if isinstance(obj, dict) and obj.get("format") != INDEX_FORMAT:
            raise UserError(f"{where}: not an lfr-ds sample index manifest (format {obj.get('format')!r})")
        return cls(**_checked(cls, obj, where, fix="delete the pair and re-run the rewrite"))


def _checked(cls: type, obj: object, where: str, fix: str = _DAMAGED, *, defaults_optional: bool = False) -> dict:
    """The fields of dataclass ``cls`` from JSON object ``obj``, each present (unless optional, or with
    ``defaults_optional`` one with a default) and of its annotated type; keys ``cls`` does not know are left
    out. Refused in one line naming the first bad field."""
    if not isinstance(obj, dict):
        raise UserError(f"{where}: unreadable (not a JSON object); {fix}")
    hints = typing.get_type_hints(cls)
    out = {}
    for f in dataclasses.fields(cls):
        if f.name not in obj:
            if f.metadata.get("optional") or (defaults_optional and f.default is not dataclasses.MISSING):
                continue
            raise UserError(f"{where}: unreadable (no {f.name!r}); {fix}")
        if not _is(obj[f.name], hints[f.name]):
            raise UserError(f"{where}: unreadable ({f.name!r} is not of type {_describe(hints[f.name])}); {fix}")
        out[f.name] = obj[f.name]
    return out


def _is(value: object, hint: Any) -> bool:
    """Whether JSON ``value`` is of type ``hint`` (int, float, str, bool, dict, list, their unions, ``list[X]``,
    ``dict[str, X]``). A float field takes an int (JSON does not tell 1 from 1.0); no number field takes a bool."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        return any(_is(value, a) for a in args)
    if hint is type(None):
        return value is None
    if hint is float:
        return isinstance(value, int | float) and not isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if origin is list:
        return isinstance(value, list) and all(_is(v, args[0]) for v in value)
    if origin is dict:
        return isinstance(value, dict) and all(isinstance(k, str) and _is(v, args[1]) for k, v in value.items())
    if dataclasses.is_dataclass(hint):  # a nested record is a JSON object here, its fields checked by its reader
        return isinstance(value, dict)
    return isinstance(value, hint)


def _describe(hint: Any) -> str:
    if typing.get_origin(hint) is list and dataclasses.is_dataclass(typing.get_args(hint)[0]):
        return "list of objects"
    return str(hint).replace("typing.", "") if typing.get_origin(hint) else hint.__name__


def _phase(obj: object, where: str) -> Phase:
    """One ``schedule`` entry (``dataclasses.asdict`` of a :class:`Phase`; older runs lack later fields)."""
    try:
        fields = _checked(Phase, obj, where, defaults_optional=True)
    except UserError:
        raise UserError(f"{where}: unreadable (a 'schedule' entry is not a phase: {obj!r:.80}); {_DAMAGED}") from None
    return Phase(**fields)
