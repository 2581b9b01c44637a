"""The runs of a comparison: what each trains, launching it (or reusing it), and reading back its results.

A run is one ``lfr-train`` process: an arm, a seed and a budget. Its settings are layered so that
the experiment means what it says:

1. the preset's shared settings and the arms' schedule,
2. the user's overrides (for every arm),
3. the arm's own settings, which win (the random arm stays random whatever ``lfr.schedule`` says),
4. the settings that define the comparison (data, steps, seeds, evaluation), which the user may not set.

``RUN/compare_run.json`` records the resolved config and the corpus digest. A finished run with the
same record is reused (paths taken relative to ``--out``; the random arm's record ignores the ``lfr.*``
settings it does not use, so a comparison of other LFR settings can start from copies of its random
runs); a run with another record is refused in one line naming the differences, so a comparison never
mixes runs of different settings.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shlex
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from lfr_ds import atomic
from lfr_ds.compare import ceilings
from lfr_ds.compare.ceilings import REPEAT_BLOCK
from lfr_ds.compare.corpus import Corpus, differences
from lfr_ds.config import load_config
from lfr_ds.data.blocks import BlockView
from lfr_ds.data.dataset import open_dataset
from lfr_ds.data.sample_index import read_manifest
from lfr_ds.errors import UserError
from lfr_ds.launch import killed_by_oom
from lfr_ds.lfr.rewriter import read_kept_mask
from lfr_ds.run_state import INDEX_DIR

ARMS = {
    "random": ("lfr.schedule=random",),
    "lfr": (),
    "lfr_raw": ("lfr.score=raw", "lfr.selection=paper"),
    # The ceilings (lfr_ds.compare.ceilings): random over the originals alone, and LFR whose Focus drops the copies.
    "dedup": ("lfr.schedule=random",),
    "oracle": (),
}
#: Settings lfr-compare owns: an override of one of these would silently break the comparison.
OWNED = ("run_dir", "steps", "seed", "data.", "eval.", "lfr.length_scale", "log.progress_bar", "lfr.probe_path")
#: Seed of the held-out block cut: the same blocks for every seed and arm.
HELDOUT_SEED = 0


@dataclass(frozen=True)
class Run:
    arm: str
    seed: int
    budget: float = 1.0

    @property
    def name(self) -> str:
        return f"{self.arm}-seed{self.seed}" if self.budget == 1.0 else f"{self.arm}-b{self.budget:g}-seed{self.seed}"


@dataclass(frozen=True)
class Setup:
    """What every run of one comparison shares."""

    out: Path
    corpus: Corpus
    preset_overrides: tuple[str, ...]
    schedule: str
    user_overrides: tuple[str, ...]
    steps: int
    heldout_blocks: int
    evals: int
    blimp: str
    blimp_pairs: int
    threads: int
    """CPU threads of every run. On CPU a run's numbers depend on it (the order of a reduction split over
    threads), so it is part of each run's record; ``--jobs`` only decides how many runs go side by side."""


def check_overrides(overrides: list[str]) -> None:
    for o in overrides:
        key = o.split("=", 1)[0]
        if any(key == k or (k.endswith(".") and key.startswith(k)) for k in OWNED):
            raise UserError(
                f"{o}: {key} is set by lfr-compare itself (data, steps, seeds, evaluation); "
                "use its flags (--preset, --seeds, --budgets, --valid) instead"
            )


def overrides(run: Run, setup: Setup) -> list[str]:
    steps = max(1, round(run.budget * setup.steps))
    out = [
        *setup.preset_overrides,
        f"lfr.schedule={setup.schedule}",
        *setup.user_overrides,
        *ARMS[run.arm],
        f"data.path={ceilings.dedup_prefix(setup.corpus) if run.arm == 'dedup' else setup.corpus.prefix}",
        f"data.tokenizer={setup.corpus.tokenizer}",
        f"run_dir={setup.out / run.name}",
        f"steps={steps}",
        f"seed={run.seed}",
        f"data.seed={run.seed}",
        f"lfr.length_scale={run.budget}",
        f"eval.valid_path={setup.corpus.heldout}",
        f"eval.valid_blocks={setup.heldout_blocks}",
        f"eval.valid_seed={HELDOUT_SEED}",
        f"eval.interval={-(-steps // setup.evals)}",
        "log.progress_bar=false",
    ]
    if setup.corpus.probe is not None:  # probes (issue 21): every arm scores the same probe set
        out.append(f"lfr.probe_path={setup.corpus.probe}")
    if setup.blimp:
        out += [f"eval.blimp={setup.blimp}", f"eval.blimp_pairs={setup.blimp_pairs}"]
    if run.arm == "oracle":
        out.append(f"lfr.drop_mask={ceilings.mask_path(setup.corpus, run.seed)}")
    return out


def record(run: Run, setup: Setup) -> dict:
    """What makes a run this run: its resolved config and its corpus."""
    cfg = dataclasses.asdict(load_config(None, overrides(run, setup)))
    return {"config": cfg, "corpus": setup.corpus.digest, "threads": setup.threads}


#: Guard settings added since runs were recorded (issue 27), read as their defaults where a record lacks them. They
#: only watch the losses: a finished run they would have flagged is one whose loss climbed far past its level or
#: past a uniform guess, which no run reused here did (bench/spikes.py: no rule fires on normal runs).
GUARD_SINCE = {"jump_ratio": 1.75, "boundary_ratio": 3.0, "diverge_margin": 3.0, "diverged_steps": 20}


def identity(rec: dict) -> dict:
    """What must match for a finished run to be reused: its record, with the paths under its comparison's
    directory made relative (a comparison can be moved, or its random runs copied into a comparison of
    other LFR settings on the same corpus) and, for the random arm, without the LFR settings it ignores
    (``lfr.*`` but the schedule, ``model.sketch_dim``), and never with ``data.prefetch`` (how batches are read)."""
    out = str(Path(rec["config"]["run_dir"]).parent) + os.sep

    def rel(v):
        if isinstance(v, dict):
            return {k: rel(x) for k, x in v.items()}
        return "OUT" + os.sep + v[len(out) :] if isinstance(v, str) and v.startswith(out) else v

    rec = rel(rec)
    # How a run reads its batches, not which: the same losses either way (tests/train/test_step_paths.py).
    rec["config"]["data"].pop("prefetch", None)
    rec["config"]["train"] = {**GUARD_SINCE, **rec["config"].get("train", {})}
    # Records made before lfr-compare set the thread count ran with OMP_NUM_THREADS unset on the 2-core
    # reference machine (docs/experiments): 2 threads.
    rec.setdefault("threads", 2)
    if rec["config"]["lfr"]["schedule"] == "random":
        rec["config"]["lfr"] = {"schedule": "random"}
        # The sketch feeds only Focus's clustering; it leaves init and loss alone (tests/model/test_model_gpt.py).
        rec["config"]["model"].pop("sketch_dim")
    return rec


def check_reusable(run: Run, setup: Setup) -> None:
    """Refuse, before anything runs, a run directory made with other settings."""
    path = setup.out / run.name / "compare_run.json"
    if path.parent.exists() and not path.is_file():
        raise UserError(f"{path.parent}: not made by this lfr-compare (no {path.name}); use a new --out")
    if path.is_file():
        # A setting added since the run was made, whose default is None (off: lfr.drop_mask), is absent from
        # its record: differences() reads absent as None, so such a run is still reused.
        diff = differences(identity(json.loads(path.read_text())), identity(record(run, setup)))
        if diff:
            raise UserError(
                f"{path.parent}: this run was made with other settings ({'; '.join(diff[:6])}); use a new --out"
            )


def launch(run: Run, setup: Setup, test_files: list[str], log) -> tuple[Path, float | None]:
    """Train ``run`` (or reuse it: :func:`check_reusable` first); evaluate it on ``test_files``. Returns
    its directory and the seconds it took (``None`` when reused)."""
    run_dir = setup.out / run.name
    wanted = record(run, setup)
    steps = wanted["config"]["steps"]
    if _finished(run_dir, steps) and _tested(run_dir, test_files):
        log(f"{run.name}: already done, reusing")
        return run_dir, None
    run_dir.mkdir(parents=True, exist_ok=True)
    atomic.write_json(run_dir / "compare_run.json", wanted)
    t0 = time.time()
    env = {**os.environ, "OMP_NUM_THREADS": str(setup.threads)}
    if not _finished(run_dir, steps):
        cmd = [sys.executable, "-m", "lfr_ds.train", *overrides(run, setup)]
        log(f"{run.name}: {' '.join(shlex.quote(c) for c in cmd[3:])}")
        _call(cmd, setup.out / f"{run.name}.log", env, f"{run.name} (training)")
        atomic.write_json(run_dir / "timing.json", {"train_seconds": round(time.time() - t0, 1)})
    if test_files:
        cmd = [
            sys.executable,
            "-m",
            "lfr_ds.eval.cli",
            str(run_dir),
            "--valid",
            *test_files,
            "--json",
            str(run_dir / "test.json"),
        ]
        _call(cmd, setup.out / f"{run.name}.test.log", env, f"{run.name} (test sets)")
    return run_dir, time.time() - t0


def _call(cmd: list[str], log_path: Path, env: dict, what: str) -> None:
    with open(log_path, "w") as f:
        proc = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, env=env)
    if proc.returncode != 0:
        killed = killed_by_oom(proc.returncode, log_path.read_text(errors="replace"))
        raise UserError(f"{what} failed (exit {proc.returncode}){f': {killed}' if killed else ''}; see {log_path}")


def _finished(run_dir: Path, steps: int) -> bool:
    return (run_dir / "eval.jsonl").is_file() and any(c["step"] == steps for c in read_curve(run_dir))


def _tested(run_dir: Path, test_files: list[str]) -> bool:
    if not test_files:
        return True
    path = run_dir / "test.json"
    return path.is_file() and set(test_files) <= set(json.loads(path.read_text()).get("valid", {}))


def read_curve(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "eval.jsonl").read_text().split("\n") if line.strip()]


def result(run_dir: Path, corpus: Corpus, test_files: list[str]) -> dict:
    """One finished run's numbers: final and curve of the held-out loss, per source, BLiMP, test sets,
    blocks trained, and what share of them (and of each Focus's drops) were the builder's repeats."""
    curve = read_curve(run_dir)
    final = curve[-1]
    cfg = json.loads((run_dir / "compare_run.json").read_text())["config"]
    out = {
        "run_dir": str(run_dir),
        "tokens": final["tokens"],
        "valid_loss": final["valid"]["loss"],
        "valid_ppl": final["valid"]["ppl"],
        "per_source": {s: v["loss"] for s, v in final["valid"]["per_source"].items()},
        "blimp_acc": final.get("blimp", {}).get("acc"),
        "curve": [(c["tokens"], c["valid"]["loss"]) for c in curve],
        "eval_seconds": round(sum(c.get("seconds", 0.0) for c in curve), 1),
    }
    if (run_dir / "timing.json").is_file():  # the whole lfr-train process, evaluations included
        out["train_seconds"] = json.loads((run_dir / "timing.json").read_text())["train_seconds"]
    if test_files:
        tests = json.loads((run_dir / "test.json").read_text())["valid"]
        out["test"] = {
            f: {"loss": tests[f]["loss"], "per_source": {s: v["loss"] for s, v in tests[f]["per_source"].items()}}
            for f in test_files
        }
    out.update(_blocks_trained(run_dir, corpus, cfg))
    return out


def _blocks_trained(run_dir: Path, corpus: Corpus, cfg: dict) -> dict:
    # The dataset the run trained on: the comparison's, or for the dedup arm the originals alone.
    prefix = ceilings.run_prefix(corpus, cfg["data"]["path"])
    view = BlockView(open_dataset(prefix), cfg["model"]["seq_length"], cfg["data"]["seed"])
    repeat_share = view.token_share(ceilings.copy_labels(corpus, prefix))
    repeat_block = repeat_share > REPEAT_BLOCK
    trained, focus = [], []
    for p in sorted((run_dir / INDEX_DIR).glob("phase_*.json")):
        manifest = read_manifest(p.with_suffix(".npy"))
        trained.append(
            np.load(p.with_suffix(".npy"), allow_pickle=False)[: manifest.steps * manifest.global_batch_size]
        )
        kept = read_kept_mask(p, manifest)
        if kept is not None:
            dropped = ~kept
            focus.append(
                {
                    "phase": p.stem,
                    "dropped_blocks": int(dropped.sum()),
                    "dropped_that_repeat": float(repeat_block[dropped].mean()) if dropped.any() else 0.0,
                    "repeats_dropped": float(dropped[repeat_block].mean()) if repeat_block.any() else 0.0,
                }
            )
    ids = np.concatenate(trained)
    return {
        "unique_blocks_trained": len(np.unique(ids)),
        "repeat_token_share_trained": float(repeat_share[ids].mean()),
        "repeat_blocks": int(repeat_block.sum()),
        "focus": focus,
    }
