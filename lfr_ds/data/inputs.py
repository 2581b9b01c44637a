"""Which files a list of input arguments names: files, directories and globs, with dataset splits kept apart.

An argument is a file (read as given), a directory (every input file under it, recursively, in sorted
path order, hidden entries and files of other types skipped, as in a Hugging Face dataset snapshot with
its README) or a glob (``'shards/*.parquet'``, ``'**'`` recursive). A directory or glob whose files carry
split names (a folder ``train/``, ``validation/`` ... or a file ``train-00000-of-00004.parquet``) is read
one split at a time: ``--split NAME`` picks it, and without it two or more splits are refused, so the
held-out files of a snapshot never end up in training data unnoticed.
"""

from __future__ import annotations

import glob
import os
import re
from pathlib import PurePath

from lfr_ds.errors import UserError

#: ``.json.gz`` / ``.json.zst``: JSON lines under the name many corpora ship them with (read as ``.jsonl.gz``).
SUFFIXES = (".jsonl", ".jsonl.gz", ".jsonl.zst", ".json.gz", ".json.zst", ".txt", ".txt.gz", ".txt.zst", ".parquet")
#: Names Hugging Face and common corpora give their splits (folder names, or a token of a file name).
SPLITS = ("train", "validation", "valid", "val", "dev", "test")
_NAME_TOKENS = re.compile(r"[-_.]")
_KINDS = "files, directories or globs of .jsonl, .jsonl.gz, .jsonl.zst, .json.gz, .json.zst, .txt or .parquet"


def check_inputs(paths: list[str], split: str | None = None) -> list[str]:
    """The input files ``paths`` name, in order, each checked to exist, be non-empty and have a known type.
    ``split`` picks one split of directories and globs."""
    if not paths:
        raise UserError(f"no inputs given; pass one or more {_KINDS}")
    files: list[str] = []
    for p in map(str, paths):
        if os.path.isdir(p):
            found = [str(f) for f in sorted(_walk(p), key=lambda f: PurePath(f).parts)]
            if not found:
                raise UserError(f"{p}: directory holds no input files ({', '.join(SUFFIXES)}); check the path")
            files += _pick_split(p, found, os.path.dirname(os.path.normpath(p)), split)
        elif not os.path.exists(p) and glob.has_magic(p):
            found = sorted(f for f in glob.glob(p, recursive=True) if os.path.isfile(f) and f.endswith(SUFFIXES))
            if not found:
                raise UserError(f"{p}: the pattern matches no input files ({', '.join(SUFFIXES)}); check it")
            files += _pick_split(p, found, "", split)
        else:
            files.append(p)
    for f in files:
        _check_file(f)
    return files


def _check_file(p: str) -> None:
    if not os.path.exists(p):
        raise UserError(f"{p}: input file does not exist; check the path")
    if not os.path.isfile(p):
        raise UserError(f"{p}: input is not a regular file; pass {_KINDS}")
    if not p.endswith(SUFFIXES):
        raise UserError(f"{p}: unknown input type; use one of {', '.join(SUFFIXES)}")
    if os.path.getsize(p) == 0:
        raise UserError(f"{p}: input file is empty; give it at least one document")
    if not os.access(p, os.R_OK):
        raise UserError(f"{p}: input file is not readable (permission denied); check its permissions")


def _walk(root: str) -> list[str]:
    out = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = [d for d in dirnames if not d.startswith(".")]
        out += [os.path.join(dirpath, f) for f in filenames if not f.startswith(".") and f.endswith(SUFFIXES)]
    return out


def split_of(path: str) -> str | None:
    """The split a path names: a folder called after one, else a token of the file name."""
    *folders, name = PurePath(path).parts
    for folder in folders:
        if folder.lower() in SPLITS:
            return folder.lower()
    stem = name[: -len(next(s for s in SUFFIXES if name.endswith(s)))] if name.endswith(SUFFIXES) else name
    return next((t for t in _NAME_TOKENS.split(stem.lower()) if t in SPLITS), None)


def _pick_split(arg: str, files: list[str], base: str, split: str | None) -> list[str]:
    # Split names are looked for below ``base``: a directory's own name counts, its parents' names do not.
    labels = {f: split_of(os.path.relpath(f, base) if base else f) for f in files}
    found = sorted({s for s in labels.values() if s})
    if split is not None:
        picked = [f for f in files if labels[f] == split.lower()]
        if not picked:
            held = (
                f"it holds the splits {', '.join(found)}" if found else "it has no split folders or split-named files"
            )
            raise UserError(f"{arg}: no files of split {split!r}; {held}: fix --split, or drop it")
        return picked
    if len(found) > 1:
        raise UserError(
            f"{arg}: holds the splits {', '.join(found)}; "
            "choose one with --split NAME (or name that split's folder or files)"
        )
    return files
