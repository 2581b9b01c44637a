"""The phase schedule: which kind of sampling runs for how many steps.

Grammar (comma-separated phases)::

    PHASE  := KIND [":" LENGTH] ["@" DROP]
    KIND   := random | learn | focus | review
    LENGTH := NUMBER [k|M|B] ["t"]  |  NUMBER "ep"  |  NUMBER "%"  |  "*"
    DROP   := fraction of the seen blocks a focus phase drops, in [0, 1)

A bare number is optimizer steps; a ``t`` suffix is tokens (rounded to whole steps); ``ep`` is passes
over all blocks (``1ep`` = one review); ``%`` is a share of the run's steps; ``*`` takes whatever steps remain (at most one phase). A review without a length is one
pass over every block, so each block's loss is fresh before the next Focus. The lengths must add up to
the run's ``steps``. Named presets: ``random`` (the baseline) and ``paper`` (see ``PRESETS``).

Example: ``learn:2000,focus:2000@0.5,review:1000,focus:3000@0.7,review:1000``.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

from lfr_ds.errors import UserError

KINDS = ("random", "learn", "focus", "review")
PRESETS = {
    "random": "random:*",
    # Prakriya et al.: Learn, Focus dropping 50%, Review, then Focus at 70% / Review repeated.
    "paper": "learn:20%,focus:20%@0.5,review,focus:*@0.7,review",
}
_PHASE = re.compile(r"^(?P<kind>[a-z]+)(?::(?P<len>[^@]+))?(?:@(?P<drop>.+))?$")
_LENGTH = re.compile(r"^(?P<num>\d+(?:\.\d+)?)(?P<mult>[kMB]?)(?P<unit>t?)$")
_MULT = {"": 1, "k": 10**3, "M": 10**6, "B": 10**9}


@dataclass(frozen=True)
class Phase:
    index: int
    kind: str
    start: int
    """First optimizer step (0-based, global) of the phase."""
    steps: int
    drop: float = 0.0
    """Focus only: fraction of the seen blocks dropped."""

    @property
    def end(self) -> int:
        return self.start + self.steps

    @property
    def name(self) -> str:
        return f"phase_{self.index:03d}_{self.kind}"


def parse_schedule(
    text: str, *, total_steps: int, tokens_per_step: int, review_steps: int, scale: float = 1.0
) -> list[Phase]:
    """Resolve ``text`` (or a preset name) into phases covering exactly ``total_steps`` steps.

    ``review_steps`` is the length of a review given no length: one pass over all blocks. ``scale``
    multiplies every absolute length (steps, tokens, passes, the default review): a budget sweep trains
    the same schedule at a fraction of the tokens, so a 1-pass Learn at scale 0.5 is half a pass.
    Shares (``%``) and ``*`` are relative to ``total_steps`` already.
    """
    spec = PRESETS.get(text.strip(), text.strip())
    items = [p.strip() for p in spec.split(",")]
    parsed: list[tuple[str, int | None, float]] = []
    for pos, item in enumerate(items):
        where = f"lfr.schedule {text!r}: phase {pos + 1} ({item!r})"
        m = _PHASE.match(item)
        if not m:
            raise UserError(f"{where}: expected KIND[:LENGTH][@DROP], e.g. focus:2000@0.5")
        kind = m["kind"]
        if kind not in KINDS:
            raise UserError(f"{where}: unknown kind {kind!r}; use one of {', '.join(KINDS)}")
        drop = 0.0
        if m["drop"] is not None:
            if kind != "focus":
                raise UserError(f"{where}: only focus phases take a drop fraction")
            try:
                drop = float(m["drop"])
            except ValueError:
                raise UserError(f"{where}: drop fraction {m['drop']!r} is not a number") from None
            if not 0.0 <= drop < 1.0:
                raise UserError(f"{where}: drop fraction {drop} is outside [0, 1)")
        elif kind == "focus":
            raise UserError(f"{where}: a focus phase needs a drop fraction, e.g. focus:2000@0.5")
        parsed.append(
            (kind, _length(m["len"], kind, where, total_steps, tokens_per_step, review_steps * scale, scale), drop)
        )
    if sum(1 for _, n, _ in parsed if n is None) > 1:
        raise UserError(f"lfr.schedule {text!r}: at most one phase may have length '*'")
    if parsed[0][0] not in ("random", "learn"):
        raise UserError(
            f"lfr.schedule {text!r}: must start with learn (or be random): Focus needs recorded losses"
        )
    if "random" in (k for k, _, _ in parsed) and len(parsed) > 1:
        raise UserError(
            f"lfr.schedule {text!r}: random is the whole-run baseline and cannot be mixed with other phases"
        )
    fixed = sum(n for _, n, _ in parsed if n is not None)
    rest = total_steps - fixed
    if any(n is None for _, n, _ in parsed):
        if rest < 1:
            raise UserError(
                f"lfr.schedule {text!r}: the fixed phases take {fixed} of the run's {total_steps} steps, leaving none for '*'"
            )
    elif rest != 0:
        raise UserError(
            f"lfr.schedule {text!r}: phases add up to {fixed} steps but the run has steps={total_steps}; make them agree or use '*'"
        )
    phases, start = [], 0
    for i, (kind, n, drop) in enumerate(parsed):
        steps = rest if n is None else n
        phases.append(Phase(i, kind, start, steps, drop))
        start += steps
    return phases


def _length(
    text: str | None, kind: str, where: str, total: int, tokens_per_step: int, review_steps: float, scale: float
) -> int | None:
    if text is None:
        if kind == "review":
            return max(1, round(review_steps))
        raise UserError(f"{where}: needs a length (steps, tokens with a t suffix, %, or *)")
    text = text.strip()
    if text == "*":
        return None
    if text.endswith("ep"):
        try:
            steps = round(float(text[:-2]) * review_steps)
        except ValueError:
            raise UserError(f"{where}: bad number of passes {text!r}") from None
    elif text.endswith("%"):
        try:
            share = float(text[:-1])
        except ValueError:
            raise UserError(f"{where}: bad percentage {text!r}") from None
        steps = round(total * share / 100)
    else:
        m = _LENGTH.match(text)
        if not m:
            raise UserError(
                f"{where}: bad length {text!r}; use steps (2000), tokens (5Mt), passes (1.5ep), a percentage (20%) or *"
            )
        value = float(m["num"]) * _MULT[m["mult"]] * scale
        steps = round(value / tokens_per_step) if m["unit"] else math.floor(value)
    if steps < 1:
        raise UserError(f"{where}: length {text!r} is less than one step")
    return steps


def phase_at(phases: list[Phase], step: int) -> Phase:
    """The phase that optimizer step ``step`` (0-based) belongs to."""
    for p in phases:
        if p.start <= step < p.end:
            return p
    raise IndexError(f"step {step} is beyond the schedule")
