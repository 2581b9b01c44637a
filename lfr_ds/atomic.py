"""Write-to-temp-then-rename, so no reader ever sees a half-written file.

A crash (or SIGKILL) at any point leaves either the old file or the new one, never a mix. The temp file
lives in the destination directory so that ``os.replace`` is a same-filesystem atomic rename, and it is
fsync'ed first so the rename cannot land before the data on a power loss.
"""

from __future__ import annotations

import contextlib
import glob
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

_UMASK = os.umask(0)
os.umask(_UMASK)


@contextlib.contextmanager
def atomic_path(dest: str | os.PathLike, *, is_dir: bool = False) -> Iterator[Path]:
    """Yield a temp path next to ``dest``; on normal exit rename it onto ``dest``, on error delete it.

    For ``is_dir=True`` the temp path is a fresh directory and ``dest`` must not exist yet (a
    directory cannot be atomically replaced); a concurrent writer that got there first wins.
    """
    dest = Path(dest)
    parent = dest.parent
    if is_dir:
        tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", suffix=".tmp", dir=parent))
        os.chmod(tmp, 0o777 & ~_UMASK)
    else:
        fd, name = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".tmp", dir=parent)
        os.close(fd)
        tmp = Path(name)
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes 0600; published files get the usual mode
    try:
        yield tmp
        if is_dir:
            fsync_tree(tmp)
            try:
                os.rename(tmp, dest)
            except OSError:
                if not dest.is_dir():
                    raise
                shutil.rmtree(tmp, ignore_errors=True)
        else:
            fsync_file(tmp)
            os.replace(tmp, dest)
        fsync_dir(parent)
    except BaseException:
        if is_dir:
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()
        raise


def fsync_file(path: str | os.PathLike) -> None:
    with open(path, "rb+") as f:
        os.fsync(f.fileno())


def remove_stale_temps(dests: list[str | os.PathLike]) -> None:
    """Delete temp files that :func:`atomic_path` left for these destinations when a writer was killed.
    Only for a writer that knows it is the sole one writing them (two concurrent ones would collide)."""
    for dest in map(Path, dests):
        for stale in dest.parent.glob(f".{glob.escape(dest.name)}.*.tmp"):
            with contextlib.suppress(FileNotFoundError):
                stale.unlink()


def fsync_dir(path: str | os.PathLike) -> None:
    """Persist a directory entry (a rename or a new file) so it survives a crash."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_tree(root: Path) -> None:
    for dirpath, _, files in os.walk(root):
        for name in files:
            fsync_file(os.path.join(dirpath, name))
        fsync_dir(dirpath)


def write_bytes(dest: str | os.PathLike, data: bytes) -> None:
    with atomic_path(dest) as tmp:
        tmp.write_bytes(data)


def write_json(dest: str | os.PathLike, obj: Any) -> None:
    write_bytes(dest, (json.dumps(obj, indent=2, sort_keys=True) + "\n").encode())


def save_npy(dest: str | os.PathLike, array: np.ndarray) -> None:
    """``np.save`` without pickle, atomically."""
    with atomic_path(dest) as tmp, open(tmp, "wb") as f:
        np.save(f, array, allow_pickle=False)
