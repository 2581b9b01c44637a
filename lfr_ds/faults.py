"""Fault injection: SIGKILL this process at a named point, to prove that a crash anywhere is recoverable.

Set ``LFR_CRASH_AT=<point>:<key>`` (and optionally ``LFR_CRASH_RANK=<rank>``, default every rank) and the
process kills itself, with no chance to clean up, the moment it reaches that point:

- ``step:<n>``        in the middle of optimizer step n (after the first micro-batch's backward)
- ``save:<n>``        while saving the checkpoint of step n (DeepSpeed's files written, not yet renamed)
- ``rewrite:<i>``     while writing phase i's sample index (the array written, its manifest not yet)
- ``preprocess:<k>``  after the k-th chunk of preprocessing output was written

Used by the resume tests and ``bench/faults.py``. Costs one dictionary lookup when unset.
"""

from __future__ import annotations

import os
import signal


def crash_point(point: str, key: int) -> None:
    spec = os.environ.get("LFR_CRASH_AT")
    if not spec or spec != f"{point}:{key}":
        return
    rank = os.environ.get("LFR_CRASH_RANK")
    if rank is not None and rank != os.environ.get("RANK", "0"):
        return
    os.kill(os.getpid(), signal.SIGKILL)
