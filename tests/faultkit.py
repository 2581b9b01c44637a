"""The fault-injection harness: launch a job, kill it (at a crash point of :mod:`lfr_ds.faults`, or from
outside with SIGKILL to its whole process tree after a random delay), check the files each kill left,
relaunch, and finally compare with an uninterrupted run.

It lives with the tests, not in the package: production code only calls the crash points. The
fault-injection tests import it from here (``tests/`` is on pytest's path), and ``bench/faults.py``, the
same harness at 24 kills, puts ``tests/`` on its ``sys.path`` to import it too.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from lfr_ds.eval.checkpoint import consolidated_state_dict, find_checkpoint_dir

#: Log line that rank 0 of lfr-train prints once the model is built and any checkpoint is loaded.
TRAINING_STARTED = "lfr-ds: "
PREPROCESS_OUTPUTS = (".bin", ".idx", ".doc_source.npy", ".meta.json")


class HarnessError(RuntimeError):
    """The job failed on its own (not by our kill), or a kill point was never reached."""


@dataclass(frozen=True)
class Kill:
    """One kill: a crash point (``point`` as in :mod:`lfr_ds.faults`, ``key`` its step/phase/chunk),
    or ``point="timer"``:
    SIGKILL to the job's every process ``key`` seconds after it started training (lfr-train) or started
    at all (preprocessing)."""

    point: str
    key: float

    @property
    def spec(self) -> str | None:
        """The ``LFR_CRASH_AT`` value, or ``None`` for a timer."""
        return None if self.point == "timer" else f"{self.point}:{int(self.key)}"

    def __str__(self) -> str:
        return f"timer:{self.key:.2f}s" if self.point == "timer" else str(self.spec)


def plan_training_kills(
    rng: np.random.Generator,
    n: int,
    *,
    steps: int,
    checkpoints: Sequence[int],
    phase_starts: Sequence[int],
    timers: int,
    max_delay: float = 1.5,
) -> list[Kill]:
    """``n`` kills of an lfr-train job: ``timers`` by wall clock, the others (at least one) spread
    round-robin over the step / save / publish / rewrite points at random keys, ordered as one run meets
    them. Killed at one point, the job resumes from its last checkpoint, which is never past the next
    point, so every point is reached (a phase's index is rewritten only until its first complete write)."""

    def position(k: Kill) -> float:
        """When, in steps, a run meets the point: the middle of step n, then its save, then its publish,
        then (at a phase boundary) the next phase's rewrite."""
        if k.point == "rewrite":
            return phase_starts[int(k.key)] + 0.3
        return k.key + {"step": -0.5, "save": 0.1, "publish": 0.2}[k.point]

    kinds = ("step", "save", "publish", "rewrite")
    crashes = []
    for i in range(n - timers):
        kind = kinds[i % len(kinds)]
        if kind == "step":
            key = int(rng.integers(1, steps + 1))
        elif kind == "rewrite":
            key = int(rng.integers(0, len(phase_starts)))
        else:
            key = int(rng.choice(checkpoints))
        crashes.append(Kill(kind, key))
    plan = sorted(crashes, key=position)
    for _ in range(timers):  # anywhere before the last crash point, which stays armed behind it (see drive)
        plan.insert(int(rng.integers(0, len(plan))), Kill("timer", round(float(rng.uniform(0, max_delay)), 2)))
    return plan


def plan_preprocess_kills(
    rng: np.random.Generator, n: int, *, chunks: int, timers: int, max_delay: float
) -> list[Kill]:
    """``n`` kills of an lfr-preprocess job: ``timers`` at a random time after launch (up to
    ``max_delay`` s), the rest after a random one of its ``chunks`` output chunks. Every launch starts
    afresh, so any order works."""
    plan = [Kill("preprocess", int(rng.integers(1, chunks + 1))) for _ in range(n - timers)]
    plan += [Kill("timer", round(float(rng.uniform(0.2, 1.0) * max_delay), 2)) for _ in range(timers)]
    return [plan[i] for i in rng.permutation(len(plan))]


def launch_once(
    argv: Sequence[str],
    *,
    env: dict[str, str],
    log: Path,
    crash: Kill | None,
    timer: Kill | None,
    started: str | None,
    timeout: float,
) -> Kill | None:
    """Run ``argv`` once with ``crash`` armed (``LFR_CRASH_AT``) and ``timer`` pending: SIGKILL to every
    process of the job ``timer.key`` s after it prints a line containing ``started`` (after launch if
    ``started`` is None). Returns the kill that ended it, ``None`` if it ran to the end; raises
    :class:`HarnessError` if it failed any other way."""
    mark = log.with_suffix(".mark")
    mark.unlink(missing_ok=True)
    env = {k: v for k, v in env.items() if k != "LFR_CRASH_AT"} | {"LFR_CRASH_MARK": str(mark)}
    if crash is not None:
        env["LFR_CRASH_AT"] = str(crash.spec)
    go = threading.Event()
    with open(log, "w") as out:
        proc = subprocess.Popen(
            list(argv),
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )

        def pump() -> None:  # copy the output to the log, and notice when training starts
            for line in proc.stdout:
                out.write(line)
                out.flush()
                if started is not None and started in line:
                    go.set()

        reader = threading.Thread(target=pump, daemon=True)
        reader.start()
        if started is None:
            go.set()
        deadline, fire_at, fired = time.monotonic() + timeout, None, False
        while proc.poll() is None:
            now = time.monotonic()
            if now > deadline:
                break
            if timer is not None and fire_at is None and go.is_set():
                fire_at = now + timer.key
            if fire_at is not None and now >= fire_at:
                fired = True
                break
            time.sleep(0.01)
        timed_out = proc.poll() is None and not fired
        kill_job(proc)  # also any stragglers: worker pools, a rank the launcher did not reap
        reader.join(timeout=10)
    if timed_out:
        raise HarnessError(f"{' '.join(argv)} did not finish in {timeout:.0f}s; see {log}")
    if mark.exists():
        return crash
    if fired and proc.returncode != 0:
        return timer
    if proc.returncode != 0:
        raise HarnessError(f"{' '.join(argv)} failed by itself (exit {proc.returncode}); see {log}:\n{_tail(log)}")
    return None


def kill_job(proc: subprocess.Popen) -> None:
    """SIGKILL ``proc`` and every process under it, all at once, like a node losing power. A process-group
    kill is not enough: torchrun starts each rank in a session of its own. The tree is frozen (SIGSTOP,
    parents first) until no new process appears, so nothing forks or is reaped in between."""
    if proc.poll() is None:  # not reaped yet, so its pid is still ours
        stopped: list[int] = []
        while new := [pid for pid in _tree_pids(proc.pid) if pid not in stopped]:
            for pid in new:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGSTOP)
            stopped += new
        for pid in stopped:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
    proc.wait()


def _tree_pids(root: int) -> list[int]:
    """``root`` and its living descendants, from ``/proc``."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:  # exited meanwhile
                continue
            ppid = int(stat.rsplit(")", 1)[1].split()[1])
            children.setdefault(ppid, []).append(int(entry))
    pids, todo = [], [root]
    while todo:
        pid = todo.pop()
        pids.append(pid)
        todo += children.get(pid, [])
    return pids


def _tail(log: Path, n: int = 30) -> str:
    return "\n".join(log.read_text(errors="replace").splitlines()[-n:])


def drive(
    argv: Sequence[str],
    kills: Sequence[Kill],
    *,
    env: dict[str, str],
    logs: Path,
    started: str | None,
    after_kill: Callable[[Kill], bool] | None = None,
    timeout: float = 600,
    say: Callable[[str], None] = lambda s: print(s, file=sys.stderr, flush=True),
) -> tuple[int, int]:
    """Launch ``argv`` until every kill of ``kills`` has landed, then once more to the end; returns
    ``(kills, consistent)``: ``after_kill(kill)`` checks the files each kill left behind.

    A timer kill keeps the next crash point armed: if that point comes first, it lands instead and the
    timer waits for the next launch, so no point is ever passed unkilled. Timers after the last crash point
    can miss (the job may finish first); they are then dropped, and the kills returned are fewer."""
    logs.mkdir(parents=True, exist_ok=True)
    pending = list(kills)
    landed = consistent = 0
    while True:
        timer = pending[0] if pending and pending[0].point == "timer" else None
        crash = next((k for k in pending if k.point != "timer"), None)
        log = logs / f"launch_{landed:03d}.log"
        t0 = time.monotonic()
        kill = launch_once(argv, env=env, log=log, crash=crash, timer=timer, started=started, timeout=timeout)
        if kill is None:
            if crash is not None:
                raise HarnessError(f"kill point {crash} was never reached; see {log}")
            say(f"  finished ({time.monotonic() - t0:.0f}s){f', before the timer of {timer}' if timer else ''}")
            return landed, consistent
        pending.remove(kill)
        landed += 1
        ok = after_kill is None or after_kill(kill)
        consistent += ok
        say(
            f"  kill {landed:2d}/{len(kills)} at {kill} after {time.monotonic() - t0:.0f}s: "
            f"{'ok' if ok else 'INCONSISTENT'}"
        )


# ---- what a kill may leave, and what the end must equal --------------------------------------------


def checkpoints_consistent(run_dir: Path) -> bool:
    """Every ``step_*`` directory under its final name is a complete checkpoint (lfr-ds's state and
    DeepSpeed's model states: nothing half-written or half-deleted), and ``latest`` is absent (the job
    restarts from scratch) or names one of them."""
    root = Path(run_dir) / "checkpoints"
    if not root.exists():
        return True
    done = [p for p in root.glob("step_*") if not p.name.endswith(".partial")]
    complete = all(
        (p / "lfr" / "state.json").is_file()
        and (p / "lfr" / "arrays.npz").is_file()
        and any(p.glob("*model_states.pt"))
        for p in done
    )
    latest = root / "latest"
    return complete and (not latest.exists() or root / latest.read_text().strip() in done)


def preprocess_outputs(prefix: str) -> dict[str, bytes]:
    """The published output files of ``lfr-preprocess -o prefix`` (by suffix) and their bytes."""
    return {s: Path(prefix + s).read_bytes() for s in PREPROCESS_OUTPUTS if Path(prefix + s).exists()}


def compare_training(reference: Path, run: Path) -> dict[str, bool]:
    """Is ``run`` identical to the uninterrupted ``reference``: final model (DeepSpeed's consolidated fp32
    weights), loss table, sample index files, and every step's per-block losses."""
    a, b = find_checkpoint_dir(reference), find_checkpoint_dir(run)
    wa, wb = consolidated_state_dict(a), consolidated_state_dict(b)
    model = wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)
    with (
        np.load(a / "lfr" / "arrays.npz", allow_pickle=False) as za,
        np.load(b / "lfr" / "arrays.npz", allow_pickle=False) as zb,
    ):
        table = za.files == zb.files and all(_same(za[k], zb[k]) for k in za.files)
    index = _tree(Path(reference) / "index") == _tree(Path(run) / "index")
    trace = Path("trace") / "steps.jsonl"
    losses = (Path(reference) / trace).read_bytes() == (Path(run) / trace).read_bytes()
    return {"model": model, "loss_table": table, "index_files": index, "step_losses": losses}


def _same(a: np.ndarray, b: np.ndarray) -> bool:
    """Bit for bit (NaN marks blocks never seen, and NaN != NaN)."""
    return a.dtype == b.dtype and a.shape == b.shape and a.tobytes() == b.tobytes()


def _tree(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}
