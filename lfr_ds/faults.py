"""Fault injection points: production code calls :func:`crash_point` at the moments where a crash is
hardest to recover from, so that a harness can prove it recoverable.

Set ``LFR_CRASH_AT=<point>:<key>`` (and optionally ``LFR_CRASH_RANK=<rank>``, default every rank) and the
process kills itself, with no chance to clean up, the moment it reaches that point:

- ``step:<n>``        in the middle of optimizer step n (after the first micro-batch's backward)
- ``save:<n>``        while saving the checkpoint of step n (DeepSpeed's files written, not yet renamed)
- ``publish:<n>``     checkpoint n renamed into place, ``latest`` not yet moved to it
- ``rewrite:<i>``     while writing phase i's sample index (the array written, its manifest not yet)
- ``rewind:<n>``      rewinding after a loss spike at step n (the checkpoint reloaded, nothing saved since)
- ``preprocess:<k>``  after the k-th chunk of preprocessing output was written

With ``LFR_CRASH_MARK=<file>`` the point appends its name to that file first, so a harness can tell its
kill from a genuine failure. Costs one dictionary lookup when unset.

``LFR_FAULT_LOSS=<kind>:<n>`` (with ``LFR_CRASH_RANK`` as above) corrupts a micro-batch's loss in optimizer
step n instead, for the training guard's tests (:func:`loss_fault`):

- ``nan:<n>``      the loss and every block's loss are NaN (so are the gradients)
- ``spike:<n>``    the loss and every block's loss are 10x (the gradients too): a planted loss spike
- ``gradnan:<n>``  the loss is unchanged, its gradient is NaN (a non-finite gradient norm alone)

The harness that drives jobs into these points (launch, kill, check, relaunch, compare) is
``tests/faultkit.py``; ``bench/faults.py`` and the fault-injection tests use it.
"""

from __future__ import annotations

import os
import signal

import torch


def crash_point(point: str, key: int) -> None:
    """SIGKILL this process if ``LFR_CRASH_AT`` names ``point:key`` (and ``LFR_CRASH_RANK`` this rank)."""
    spec = os.environ.get("LFR_CRASH_AT")
    if not spec or spec != f"{point}:{key}":
        return
    rank = os.environ.get("LFR_CRASH_RANK")
    if rank is not None and rank != os.environ.get("RANK", "0"):
        return
    mark = os.environ.get("LFR_CRASH_MARK")
    if mark:
        with open(mark, "a") as f:
            f.write(f"{spec} rank {os.environ.get('RANK', '0')}\n")
    os.kill(os.getpid(), signal.SIGKILL)


class _NanGradient(torch.autograd.Function):
    """The identity forward; a NaN gradient backward."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        return x.clone()

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        return torch.full_like(grad, float("nan"))


def loss_fault(out, step: int):
    """``out`` (a :class:`~lfr_ds.model.gpt.BlockLoss`) corrupted as ``LFR_FAULT_LOSS`` says for optimizer
    step ``step`` on this rank, else ``out`` itself."""
    spec = os.environ.get("LFR_FAULT_LOSS")
    if not spec or not spec.endswith(f":{step}"):
        return out
    rank = os.environ.get("LFR_CRASH_RANK")
    if rank is not None and rank != os.environ.get("RANK", "0"):
        return out
    kind = spec.rsplit(":", 1)[0]
    if kind == "gradnan":
        return out._replace(loss=_NanGradient.apply(out.loss))
    factor = {"nan": float("nan"), "spike": 10.0}[kind]
    return out._replace(loss=out.loss * factor, per_block=out.per_block * factor)
