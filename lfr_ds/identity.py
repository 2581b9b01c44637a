"""What a checkpoint fixes for good, and the one check that what a command pairs with it fits: lfr-train
resuming it (on any number of ranks), lfr-eval scoring it, lfr-rewrite replaying its loss table.

A checkpoint's weights have one shape and one vocabulary; its token ids mean what its tokenizer says; its
loss table and sample index files are keyed by block ids, which exist only for one dataset cut one way
(``model.seq_length``, ``data.seed``) and are read in global batches of one size; its optimizer shards
are laid out for one ZeRO stage. :func:`run_identity` lists those settings by the config key that sets
them. A checkpoint records what they are computed from (``lfr/state.json``: the run's ``config``, plus
the ``vocab_size``, ``tokenizer`` and ``dataset`` fingerprint it resolved from its data, see
:func:`record`), so :func:`check_fits` computes both sides with the same function and compares them
before anything heavy loads, naming every mismatch in one line with the setting that fixes it.

Everything else may change: the rank count and micro batch (elastic resume), ``steps`` (extending a run),
the optimizer, ``lfr.*``, logging and evaluation.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from lfr_ds.config import TrainConfig, config_from_dict
from lfr_ds.data.blend import blend_spec
from lfr_ds.errors import UserError
from lfr_ds.run_state import STATE_FILE, RunState


@dataclass(frozen=True)
class Digest:
    """A file known by its content: equal when the digests are, wherever it lies now."""

    digest: str
    path: str = field(compare=False)
    kind: str = field(default="sha256", compare=False)

    def __str__(self) -> str:
        return f"{self.path} ({self.kind} {self.digest[:12]})"


def tokenizer_digest(tokenizer) -> Digest | None:
    """A :class:`~lfr_ds.data.tokenizer.Tokenizer` (or ``None``: a plain Megatron dataset's run has none)."""
    return None if tokenizer is None else Digest(tokenizer.sha256, tokenizer.path)


def dataset_digest(dataset) -> Digest:
    """A :class:`~lfr_ds.data.dataset.Dataset` or :class:`~lfr_ds.data.blend.Blend` by its fingerprint
    (token streams, blend weights and tokenizer)."""
    return Digest(dataset.fingerprint, dataset.prefix, "fingerprint")


#: How a message names a value of each setting that :func:`run_identity` lists.
SHOWN = {
    "model.num_layers": "{} layers",
    "model.hidden_size": "hidden size {}",
    "model.num_attention_heads": "{} attention heads",
    "model.seq_length": "sequence length {}",
    "model.vocab_size": "a vocabulary of {} pieces",
    "model.make_vocab_size_divisible_by": "vocabulary padding to a multiple of {}",
    "model.sketch_dim": "block sketches of width {}",
    "data.path": "dataset {}",
    "data.tokenizer": "tokenizer {}",
    "data.seed": "blocks cut with data.seed {}",
    "engine.global_batch_size": "global batch {}",
    "engine.zero_stage": "ZeRO stage {}",
}
#: A mismatch that follows from another is named only through it: the vocabulary comes from the
#: tokenizer, and a dataset's fingerprint covers its tokenizer.
FOLLOWS = {"model.vocab_size": "data.tokenizer", "data.tokenizer": "data.path"}


def run_identity(cfg: TrainConfig, *, vocab_size: int, tokenizer: Digest | None, dataset: Digest) -> dict[str, object]:
    """The settings a checkpoint of ``cfg`` fixes, by config key (see :data:`SHOWN`). ``vocab_size`` and
    ``tokenizer`` are as resolved from the data (``cfg`` may leave them unset); ``dataset`` is its fingerprint."""
    m = cfg.model
    return {
        "model.num_layers": m.num_layers,
        "model.hidden_size": m.hidden_size,
        "model.num_attention_heads": m.num_attention_heads,
        "model.seq_length": m.seq_length,
        "model.vocab_size": vocab_size,
        "model.make_vocab_size_divisible_by": m.make_vocab_size_divisible_by,
        "model.sketch_dim": m.sketch_dim,
        "data.path": dataset,
        "data.tokenizer": tokenizer,
        "data.seed": cfg.data.seed,
        "engine.global_batch_size": cfg.engine.global_batch_size,
        "engine.zero_stage": cfg.engine.zero_stage,
    }


def record(cfg: TrainConfig, *, vocab_size: int, tokenizer: Digest | None, dataset: Digest) -> dict:
    """The fields of a checkpoint's :class:`~lfr_ds.run_state.RunState` that :func:`checkpoint_identity` reads back."""
    return {
        "config": dataclasses.asdict(cfg),
        "vocab_size": vocab_size,
        "tokenizer": None if tokenizer is None else {"path": tokenizer.path, "sha256": tokenizer.digest},
        "dataset": dataset.digest,
    }


def checkpoint_identity(ckpt: Path, state: RunState) -> dict[str, object]:
    """:func:`run_identity` of the run that wrote ``ckpt``, from its ``state.json`` (read as ``state``)."""
    try:
        cfg = config_from_dict(state.config)
        tok = state.tokenizer
        return run_identity(
            cfg,
            vocab_size=state.vocab_size,
            tokenizer=None if tok is None else Digest(tok["sha256"], tok["path"]),
            dataset=Digest(state.dataset, blend_spec(cfg.data.path), "fingerprint"),
        )
    except (KeyError, TypeError, ValueError, UserError) as e:
        reason = str(e) if isinstance(e, UserError) else f"{type(e).__name__}: {e}"
        raise UserError(
            f"{ckpt}/{STATE_FILE}: unreadable ({reason}); the checkpoint is damaged or from another lfr-ds version"
        ) from None


def check_fits(
    ckpt: Path,
    state: RunState,
    current: Mapping[str, object],
    *,
    flags: Mapping[str, str] | None = None,
    afresh: str | None = None,
) -> None:
    """Refuse, in one line, to pair checkpoint ``ckpt`` (``state`` is its ``state.json``) with a run whose
    settings ``current`` (any of :func:`run_identity`'s) differ from the checkpoint's. Each mismatch is named
    with its fix: set the recorded value, by config key or by the command-line flag ``flags`` gives for it.
    ``afresh`` ends the line with the way to start over instead. A run on a plain Megatron dataset records
    no tokenizer: any with its vocabulary fits."""
    recorded = checkpoint_identity(ckpt, state)
    differ = [key for key, value in current.items() if recorded[key] is not None and value != recorded[key]]
    named = [key for key in differ if FOLLOWS.get(key) not in differ]
    if not named:
        return
    parts = [
        f"the checkpoint has {_say(key, recorded[key])}, this run {_say(key, current[key])} "
        f"({_fix(key, recorded[key], current[key], flags or {})})"
        for key in named
    ]
    raise UserError(f"{ckpt}: " + "; ".join(parts) + (f"; {afresh}" if afresh else ""))


def _say(key: str, value: object) -> str:
    return f"no {key}" if value is None else SHOWN[key].format(value)


def _fix(key: str, recorded: object, current: object, flags: Mapping[str, str]) -> str:
    if isinstance(recorded, Digest) and isinstance(current, Digest) and recorded.path == current.path:
        return f"{recorded.path} has changed since: restore it"
    value = recorded.path if isinstance(recorded, Digest) else recorded
    return f"pass {flags[key]} {value}" if key in flags else f"set {key}={value}"
