"""Running out of memory or disk, reported like bad input: one line naming the resource and the setting
that changes how much of it the command needs (see :mod:`lfr_ds.errors`).

The CLIs wrap the places where they call torch, DeepSpeed or the filesystem at scale in
:func:`out_of_memory` and :func:`out_of_disk`. Each catches only the exceptions that mean exhaustion and
re-raises anything else untouched, so a bug still shows its traceback.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
from collections.abc import Iterator

import torch

from lfr_ds.errors import UserError

#: Free space below which a failed write is put down to a full disk (see :func:`out_of_disk`).
NEARLY_FULL = 64 * 2**20


class OutOfResource(UserError):
    """Memory or disk ran out: the message names which, where, and the setting that needs less of it."""


@contextlib.contextmanager
def out_of_memory(doing: str, fix: str) -> Iterator[None]:
    """Turn an allocation failure while ``doing`` into one line ending in ``fix`` (a setting to change).

    A GPU raises ``torch.OutOfMemoryError``; numpy and Python raise ``MemoryError``; torch's CPU
    allocator raises a plain ``RuntimeError`` whose message starts with its name (torch 2.13).
    """
    try:
        yield
    except (torch.OutOfMemoryError, MemoryError, RuntimeError) as e:
        if isinstance(e, torch.OutOfMemoryError):
            resource = "GPU memory"
        elif isinstance(e, MemoryError) or "DefaultCPUAllocator" in str(e):
            resource = "host memory"
        else:
            raise
        raise OutOfResource(f"out of {resource} {doing}; {fix}") from None


@contextlib.contextmanager
def out_of_disk(directory: str | os.PathLike, setting: str) -> Iterator[None]:
    """Turn a write that fails for lack of space under ``directory`` into one line naming the file and
    ``setting`` (the flag or config key that puts the output elsewhere).

    Python's writes report ``ENOSPC`` (or ``EDQUOT``, a full quota) as an ``OSError``. ``torch.save`` to
    a path (DeepSpeed's checkpoint shards) reports only a failed write, as a ``RuntimeError``; that one
    is put down to the disk only if the disk is in fact (nearly) full, and re-raised otherwise.
    """
    try:
        yield
    except OSError as e:
        if e.errno not in (errno.ENOSPC, errno.EDQUOT):
            raise
        where = e.filename or directory
        raise OutOfResource(
            f"{where}: out of disk space ({e.strerror}); free space there, or set {setting} to a disk with room"
        ) from None
    except RuntimeError:
        free = free_bytes(directory)
        if free >= NEARLY_FULL:
            raise
        raise OutOfResource(
            f"{directory}: out of disk space ({free // 2**20} MiB free); free space there, or set {setting} "
            "to a disk with room"
        ) from None


def free_bytes(path: str | os.PathLike) -> int:
    """Bytes an unprivileged process can still write on the filesystem holding ``path`` (or, if it does
    not exist yet, its nearest existing parent)."""
    path = os.path.abspath(path)
    while not os.path.exists(path):
        path = os.path.dirname(path)
    return shutil.disk_usage(path).free
