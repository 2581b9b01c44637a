"""The phase schedule: which kind of sampling runs for how many steps.

Grammar (comma-separated phases)::

    PHASE  := KIND [":" LENGTH] ["@" DROP]
    KIND   := random | learn | focus | review
    LENGTH := NUMBER [k|M|B] ["t"]  |  NUMBER "ep"  |  NUMBER "kp"  |  NUMBER "%"  |  "*"
    DROP   := fraction of the seen blocks a focus phase drops, in [0, 1)  |  "auto"

A bare number is optimizer steps; a ``t`` suffix is tokens (rounded to whole steps); ``ep`` is passes
over all blocks (``1ep`` = one review); ``%`` is a share of the run's steps; ``*`` takes whatever steps remain
(at most one phase). A review without a length is one
pass over every block, so each block's loss is fresh before the next Focus. The lengths must add up to
the run's ``steps``. Named presets: ``random`` (the baseline), ``paper`` and ``recipe`` (see ``PRESETS``).

``kp`` (Focus only) is passes over the blocks the Focus *keeps*: ``1kp`` draws as many blocks as it keeps,
so on average a kept block is trained on no more often than under random sampling, and the dropped ones
are tokens saved. The kept set is known only at the phase boundary, so until then the phase has a
provisional length (kept = (1 - drop) of the blocks; all of them for ``@auto``); at the boundary
:func:`kept_pass_steps` resolves it and :func:`resolve_length` hands the difference to the later ``*``
phase, which a ``kp`` phase therefore needs: the run's total steps never change. ``@auto`` lets the
boundary choose the drop fraction from the loss table (:mod:`lfr_ds.lfr.auto_drop`).

Example: ``learn:2000,focus:2000@0.5,review:1000,focus:3000@0.7,review:1000``, or
``learn:1ep,focus:1kp@0.5,review:*``.
"""

from __future__ import annotations

import dataclasses
import math
import re
from dataclasses import dataclass

from lfr_ds.errors import UserError

KINDS = ("random", "learn", "focus", "review")
PRESETS = {
    "random": "random:*",
    # Prakriya et al.: Learn, Focus dropping 50%, Review, then Focus at 70% / Review repeated.
    "paper": "learn:20%,focus:20%@0.5,review,focus:*@0.7,review",
    # The recipe's default, chosen on the dev split (docs/lfr.md "When does LFR pay?"): one pass to
    # learn every block's loss, one pass over the harder half, then uniform to the end, so the learning
    # rate anneals on all the data. Needs a run of at least ~2 passes.
    "recipe": "learn:1ep,focus:1kp@0.5,review:*",
}
_PHASE = re.compile(r"^(?P<kind>[a-z]+)(?::(?P<len>[^@]+))?(?:@(?P<drop>.+))?$")
_LENGTH = re.compile(r"^(?P<num>\d+(?:\.\d+)?)(?P<mult>[kMB]?)(?P<unit>t?)$")
_MULT = {"": 1, "k": 10**3, "M": 10**6, "B": 10**9}
_UNITS = {m + t for m in _MULT for t in ("", "t")} | {"ep", "kp", "%"}


@dataclass(frozen=True)
class Phase:
    index: int
    kind: str
    start: int
    """First optimizer step (0-based, global) of the phase."""
    steps: int
    drop: float = 0.0
    """Focus only: fraction of the seen blocks dropped (0 until an ``@auto`` phase's boundary chooses it)."""
    auto_drop: bool = False
    """Focus only: ``@auto``, the boundary chooses the drop fraction from the loss table."""
    kept_passes: float | None = None
    """Focus only: a ``kp`` length, passes over the kept blocks (budget scale applied). ``steps`` is
    provisional until the phase's boundary resolves it."""
    rest: bool = False
    """Length ``*``: the phase that absorbs what ``kp`` phases resolve to."""

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
    multiplies every absolute length (steps, tokens, passes, kept passes, the default review): a budget
    sweep trains the same schedule at a fraction of the tokens, so a 1-pass Learn at scale 0.5 is half a
    pass. Shares (``%``) and ``*`` are relative to ``total_steps`` already.
    """
    spec = PRESETS.get(text.strip(), text.strip())
    items = [p.strip() for p in spec.split(",")]
    parsed: list[Phase] = []
    for pos, item in enumerate(items):
        where = f"lfr.schedule {text!r}: phase {pos + 1} ({item!r})"
        m = _PHASE.match(item)
        if not m:
            raise UserError(f"{where}: expected KIND[:LENGTH][@DROP], e.g. focus:2000@0.5")
        kind = m["kind"]
        if kind not in KINDS:
            raise UserError(f"{where}: unknown kind {kind!r}; use one of {', '.join(KINDS)}")
        drop, auto = _drop(m["drop"], kind, where)
        steps, kept_passes = _length(m["len"], kind, where, total_steps, tokens_per_step, review_steps * scale, scale)
        if kept_passes is not None:  # provisional: the expected kept set, (1 - drop) of the blocks
            steps = max(1, round(kept_passes * math.ceil((1 - drop) * review_steps)))
        parsed.append(Phase(pos, kind, 0, steps or 0, drop, auto, kept_passes, steps is None))
    if sum(p.rest for p in parsed) > 1:
        raise UserError(f"lfr.schedule {text!r}: at most one phase may have length '*'")
    if parsed[0].kind not in ("random", "learn"):
        raise UserError(f"lfr.schedule {text!r}: must start with learn (or be random): Focus needs recorded losses")
    if "random" in (p.kind for p in parsed) and len(parsed) > 1:
        raise UserError(
            f"lfr.schedule {text!r}: random is the whole-run baseline and cannot be mixed with other phases"
        )
    kp = [p for p in parsed if p.kept_passes is not None]
    if kp and not any(p.rest for p in parsed[kp[-1].index + 1 :]):
        raise UserError(
            f"lfr.schedule {text!r}: a kp length resolves only at its phase's boundary; a later phase of length '*' "
            "must absorb the difference, e.g. learn:1ep,focus:1kp@0.5,review:*"
        )
    fixed = sum(p.steps for p in parsed)
    rest = total_steps - fixed
    if any(p.rest for p in parsed):
        if rest < 1:
            raise UserError(
                f"lfr.schedule {text!r}: the fixed phases take {fixed} of the run's {total_steps} steps, "
                "leaving none for '*'"
            )
        # Each kp phase is longest when Focus keeps every block: the '*' phase must survive that too.
        longest = sum(round(p.kept_passes * review_steps) - p.steps for p in kp)
        if rest - longest < 1:
            raise UserError(
                f"lfr.schedule {text!r}: if Focus kept every block, the kp phases would take {longest} more steps "
                f"and leave none of the run's {total_steps} for '*'; shorten them or raise steps"
            )
    elif rest != 0:
        raise UserError(
            f"lfr.schedule {text!r}: phases add up to {fixed} steps but the run has steps={total_steps}; "
            "make them agree or use '*'"
        )
    return _restart([dataclasses.replace(p, steps=rest) if p.rest else p for p in parsed])


def kept_pass_steps(kept_passes: float, kept: int, global_batch: int) -> int:
    """Steps of a ``kp`` phase whose Focus keeps ``kept`` blocks: ``kept_passes`` passes of
    ``ceil(kept / global_batch)`` steps each, rounded, at least 1 (with every block kept, ``1kp`` = ``1ep``)."""
    return max(1, round(kept_passes * math.ceil(kept / global_batch)))


def resolve_length(phases: list[Phase], index: int, steps: int) -> list[Phase]:
    """The schedule with phase ``index`` resolved to ``steps``: the later ``*`` phase absorbs the
    difference, so the run's total is unchanged (:func:`parse_schedule` checked that it can)."""
    diff = steps - phases[index].steps
    if diff == 0:
        return phases
    rest = next(p for p in phases[index + 1 :] if p.rest)
    if rest.steps - diff < 1:
        raise RuntimeError(f"{phases[index].name}: {steps} steps leave none for {rest.name}")
    changed = {index: steps, rest.index: rest.steps - diff}
    return _restart([dataclasses.replace(p, steps=changed.get(p.index, p.steps)) for p in phases])


def resumed_schedule(phases: list[Phase], saved: list[Phase]) -> list[Phase]:
    """The schedule a resumed run continues: its checkpoint's (``saved``), whose ``kp`` phases already
    resolved, once it is checked to be ``phases`` (as parsed from the config) up to those lengths."""
    if not any(p.kept_passes is not None for p in phases):
        return phases
    old = saved
    if [_shape(p) for p in old] != [_shape(p) for p in phases] or sum(p.steps for p in old) != sum(
        p.steps for p in phases
    ):
        raise UserError(
            "lfr.schedule: not the schedule the checkpoint was trained with; "
            "resume with its lfr.schedule, steps and lfr.length_scale"
        )
    return old


def _shape(p: Phase) -> tuple:
    """What a resumed schedule must share with the parsed one: all but the lengths a boundary resolves."""
    return p.kind, p.drop, p.auto_drop, p.kept_passes, p.rest, p.steps if p.kept_passes is None and not p.rest else None


def _restart(phases: list[Phase]) -> list[Phase]:
    """``phases`` with every start recomputed from the lengths before it."""
    out, start = [], 0
    for p in phases:
        out.append(dataclasses.replace(p, start=start))
        start += p.steps
    return out


def _drop(text: str | None, kind: str, where: str) -> tuple[float, bool]:
    """``(drop fraction, auto)`` of ``@DROP``."""
    if text is None:
        if kind == "focus":
            raise UserError(f"{where}: a focus phase needs a drop fraction, e.g. focus:2000@0.5 (or @auto)")
        return 0.0, False
    if text.strip() == "auto":
        if kind != "focus":
            raise UserError(f"{where}: @auto chooses a Focus drop fraction; only focus phases take it")
        return 0.0, True
    if kind != "focus":
        raise UserError(f"{where}: only focus phases take a drop fraction")
    try:
        drop = float(text)
    except ValueError:
        raise UserError(f"{where}: drop fraction {text!r} is not a number (or auto)") from None
    if not 0.0 <= drop < 1.0:
        raise UserError(f"{where}: drop fraction {drop} is outside [0, 1)")
    return drop, False


def _length(
    text: str | None, kind: str, where: str, total: int, tokens_per_step: int, review_steps: float, scale: float
) -> tuple[int | None, float | None]:
    """``(steps, None)``; ``(None, None)`` for ``*``; ``(None, kept passes × scale)`` for ``kp``."""
    if text is None:
        if kind == "review":
            return max(1, round(review_steps)), None
        raise UserError(f"{where}: needs a length (steps, tokens with a t suffix, %, or *)")
    text = text.strip()
    if text == "*":
        return None, None
    unit = re.fullmatch(r"[\d.]+([a-zA-Z%]*)", text)
    if unit and unit[1] not in _UNITS:
        raise UserError(
            f"{where}: unknown length unit {unit[1]!r}; use steps (2000), tokens (5Mt), passes (1.5ep), "
            "kept passes (1kp, focus only), a percentage (20%) or *"
        )
    if text.endswith("kp"):
        if kind != "focus":
            raise UserError(f"{where}: kp (passes over the blocks a Focus keeps) is a Focus length; use ep for {kind}")
        try:
            passes = float(text[:-2]) * scale
        except ValueError:
            raise UserError(f"{where}: bad number of kept passes {text!r}") from None
        if not math.isfinite(passes * review_steps / scale):  # its longest resolution, in steps
            raise UserError(f"{where}: length {text!r} is not a finite number")
        if not passes > 0:
            raise UserError(f"{where}: length {text!r} is less than one step")
        return None, passes
    if text.endswith("ep"):
        try:
            steps = float(text[:-2]) * review_steps
        except ValueError:
            raise UserError(f"{where}: bad number of passes {text!r}") from None
    elif text.endswith("%"):
        try:
            share = float(text[:-1])
        except ValueError:
            raise UserError(f"{where}: bad percentage {text!r}") from None
        steps = total * share / 100
    else:
        m = _LENGTH.match(text)
        if not m:
            raise UserError(
                f"{where}: bad length {text!r}; use steps (2000), tokens (5Mt), passes (1.5ep), a percentage (20%) or *"
            )
        value = float(m["num"]) * _MULT[m["mult"]] * scale
        steps = value / tokens_per_step if m["unit"] else value
        if not m["unit"] and math.isfinite(steps):
            steps = math.floor(steps)  # a step count is cut to whole steps; tokens round to the nearest
    # float() parses "inf" and "nan", and "1e999ep" or 400 digits overflow: refuse them before rounding.
    if not math.isfinite(steps):
        raise UserError(f"{where}: length {text!r} is not a finite number")
    if round(steps) < 1:
        raise UserError(f"{where}: length {text!r} is less than one step")
    return round(steps), None


def phase_at(phases: list[Phase], step: int) -> Phase:
    """The phase that optimizer step ``step`` (0-based) belongs to."""
    for p in phases:
        if p.start <= step < p.end:
            return p
    raise IndexError(f"step {step} is beyond the schedule")
