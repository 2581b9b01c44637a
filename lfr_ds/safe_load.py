"""Loading checkpoints and index files without running code from them.

A DeepSpeed checkpoint is a set of torch pickles, and DeepSpeed 0.19.8 reads them with
``torch.load(..., weights_only=False)`` (its checkpoint engine, ZeRO-3 and universal-checkpoint loaders,
``ds_to_universal`` and ``zero_to_fp32``): unpickling a crafted file runs whatever code it names. lfr-ds
never lets that happen, in two layers:

- :func:`check_checkpoint_files` lists, without unpickling, the Python globals every ``*.pt`` of a
  checkpoint references (``torch.serialization.get_unsafe_globals_in_checkpoint``) and refuses the
  checkpoint, in one line, if any is outside torch's weights-only set plus :data:`DEEPSPEED_GLOBALS`.
  Every rank reads the same files, so all ranks refuse together, before any collective.
- :func:`weights_only_loads` makes every ``torch.load`` in its scope weights-only with those types
  allow-listed, whatever DeepSpeed asks for: the guarantee if a file changes after the check.

lfr-ds's own checkpoint and index files are JSON and ``.npy``/``.npz`` read with ``allow_pickle=False``
(:func:`load_arrays` for archives).
"""

from __future__ import annotations

import contextlib
import functools
import os
import pickle
import zipfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch

from lfr_ds.errors import UserError

#: Every non-torch global in DeepSpeed 0.19.8's ZeRO-2/3 and universal checkpoints, fp32 and bf16 (found
#: by listing them in real ones): the loss-scaler object, the ZeRO stage enum and ZeRO-2's (start, numel)
#: fragment records. Plain data classes: building them runs no code from the file.
DEEPSPEED_GLOBALS = (
    "deepspeed.runtime.fp16.loss_scaler.LossScaler",
    "deepspeed.runtime.zero.config.ZeroStageEnum",
    "deepspeed.utils.tensor_fragment.fragment_address",
)


def check_checkpoint_files(path: str | os.PathLike) -> None:
    """Refuse (:class:`UserError`) a checkpoint directory holding a torch pickle that references anything
    beyond tensors, containers and :data:`DEEPSPEED_GLOBALS`. Reads only each file's pickle opcodes."""
    for f in sorted(Path(path).rglob("*.pt")):
        try:
            names = torch.serialization.get_unsafe_globals_in_checkpoint(f)
        except (ValueError, RuntimeError, pickle.UnpicklingError):
            raise UserError(
                f"{f}: not a torch zip checkpoint file, so it cannot be loaded safely; "
                "use a checkpoint written by lfr-ds (DeepSpeed's default serialization)"
            ) from None
        unsafe = sorted(set(names) - set(DEEPSPEED_GLOBALS))
        if unsafe:
            raise _refusal(f, ", ".join(unsafe))


@contextlib.contextmanager
def weights_only_loads() -> Iterator[None]:
    """Within the block, ``torch.load`` is weights-only (tensors, containers and DeepSpeed's checkpoint
    types) for every caller, and a refused file raises :class:`UserError` naming it."""
    real = torch.load

    @functools.wraps(real)
    def load(f, *args, **kwargs):
        kwargs["weights_only"] = True
        try:
            return real(f, *args, **kwargs)
        except pickle.UnpicklingError:
            raise _refusal(f, "objects beyond tensors and DeepSpeed's checkpoint types") from None

    torch.load = load
    try:
        with torch.serialization.safe_globals(_deepspeed_types()):
            yield
    finally:
        torch.load = real


def _refusal(f, what: str) -> UserError:
    return UserError(
        f"{f}: refused to load: the file references {what}, and unpickling it could run code; "
        "load checkpoints only from trusted lfr-ds runs"
    )


@functools.cache
def _deepspeed_types() -> list[type]:
    import importlib

    types = []
    for name in DEEPSPEED_GLOBALS:
        module, attr = name.rsplit(".", 1)
        types.append(getattr(importlib.import_module(module), attr))
    return types


def load_arrays(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """Every array of an ``.npz`` archive, never unpickling: :class:`UserError` if it is anything else,
    or holds Python objects."""
    try:
        data = np.load(path, allow_pickle=False)
        if not isinstance(data, np.lib.npyio.NpzFile):
            raise ValueError("a single array, not an .npz archive")
        with data:
            return {k: data[k] for k in data.files}
    except (ValueError, OSError, zipfile.BadZipFile) as e:
        raise UserError(f"{path}: not an archive of plain numpy arrays ({e}); lfr-ds never unpickles") from None
