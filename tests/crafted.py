"""Files an attacker could leave where lfr-ds looks: pickles that run a shell command when loaded."""

from __future__ import annotations

import json
import os
import pickle
from pathlib import Path

import numpy as np
import torch


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


def fake_checkpoint(step_dir: Path, marker: Path, recorded: dict | None = None) -> Path:
    """An lfr-ds checkpoint directory whose DeepSpeed model-states file is a crafted pickle; ``recorded``:
    what its state records of the run (:func:`lfr_ds.identity.record`)."""
    (step_dir / "lfr").mkdir(parents=True)
    (step_dir / "lfr" / "state.json").write_text(
        json.dumps({"step": 5, "world_size": 1, **(recorded or {"config": {}})})
    )
    torch_pickle(step_dir / "mp_rank_00_model_states.pt", marker)
    return step_dir
