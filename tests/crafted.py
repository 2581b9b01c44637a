"""Files an attacker could leave where lfr-ds looks: pickles that run a shell command when loaded."""

from __future__ import annotations

import json
import os
import pickle
from pathlib import Path

import numpy as np
import torch

from lfr_ds.lfr.schedule import Phase
from lfr_ds.run_state import PhaseManifest, RunState


class Payload:
    """Unpickling this runs ``touch MARKER``: proof that loading executed code from the file."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def torch_pickle(path: Path, marker: Path) -> Path:
    """A torch zip checkpoint file (what DeepSpeed writes) whose pickle calls ``os.system``."""
    torch.save({"module": {"w": torch.zeros(2)}, "hook": Payload(marker)}, path)
    return path


def plain_pickle(path: Path, marker: Path) -> Path:
    path.write_bytes(pickle.dumps(Payload(marker)))
    return path


def object_array(path: Path, marker: Path) -> Path:
    """A ``.npy`` holding a pickled object array."""
    with open(path, "wb") as f:
        np.save(f, np.array([Payload(marker)], dtype=object), allow_pickle=True)
    return path


def state_json(**fields) -> str:
    """A complete ``lfr/state.json`` (every :class:`RunState` field) of a step-5 checkpoint of a random
    run on one rank; ``fields`` replace its values (``record(...)``'s, say)."""
    state = {
        "step": 5,
        "samples": 5,
        "tokens": 5,
        "phase": 0,
        "phase_digest": "0" * 64,
        "world_size": 1,
        "schedule": [Phase(0, "random", 0, 1000)],
        "config": {},
        "vocab_size": 0,
        "tokenizer": None,
        "dataset": "f" * 64,
    }
    return json.dumps(RunState(**{**state, **fields}).to_json())


def phase_manifest(**fields) -> PhaseManifest:
    """The manifest of a random phase 0 over 100 blocks; ``fields`` replace its values."""
    manifest = {
        "phase": "phase_000_random",
        "kind": "random",
        "seed": [1, 0],
        "dataset": "f" * 64,
        "num_blocks": 100,
        "index": 0,
        "start_step": 0,
        "drop_fraction": 0.0,
        "seq_length": 64,
        "global_batch_size": 4,
        "inputs_sha256": "0" * 64,
        "source_share": {},
        "steps": 25,
        "kept": 100,
        "dropped": 0,
    }
    return PhaseManifest(**{**manifest, **fields})


def fake_checkpoint(step_dir: Path, marker: Path, recorded: dict | None = None) -> Path:
    """An lfr-ds checkpoint directory whose DeepSpeed model-states file is a crafted pickle; ``recorded``:
    what its state records of the run (:func:`lfr_ds.identity.record`)."""
    (step_dir / "lfr").mkdir(parents=True)
    (step_dir / "lfr" / "state.json").write_text(state_json(**(recorded or {})))
    torch_pickle(step_dir / "mp_rank_00_model_states.pt", marker)
    return step_dir
