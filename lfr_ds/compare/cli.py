"""``lfr-compare``: random sampling vs LFR on one corpus, model and token budget, seed by seed, paired.

    lfr-compare --preset small --out runs/small                         # 3 seeds x 3 arms, ~7 min a run on 2 cores
    lfr-compare --preset small --redundancy 0.5 --arms random,lfr --budgets 0.5,0.65,0.8,1.0 --out runs/r50

Arms (one ``lfr-train`` run per seed and per budget):

- ``random``: a fresh seeded shuffle of all blocks every pass: the baseline.
- ``lfr``: the recipe's default LFR.
- ``lfr_raw``: paper-faithful LFR: raw recorded losses, whole easiest clusters dropped.
- ``dedup`` and ``oracle``: the ceilings, experiment-only (:mod:`lfr_ds.compare.ceilings`): random
  sampling over the originals alone, and LFR's schedule whose every Focus drops exactly the copy blocks.
  Their copy labels are the redundancy builder's (``--redundancy`` > 0), or with ``--labels lfr-dedup``
  those of ``lfr-dedup`` on the training documents, on any corpus; the results say which.

The protocol (each part documented where it lives):

- One corpus per ``--out`` (:mod:`lfr_ds.compare.corpus`): the training subset, its tokenizer and a
  fixed held-out set of ``--valid-blocks`` blocks of the dev split, the same for every seed and arm;
  ``--redundancy`` R makes a fraction R of the training tokens copies (:mod:`lfr_ds.redundant`).
- Seeds vary only the initialisation and the data order. Every run reuses by digest and refuses to mix
  settings (:mod:`lfr_ds.compare.runs`).
- Results are paired per seed (arm − random), with the mean and standard error; the token ratio comes
  from a budget sweep (``--budgets``: every arm, random included, at every budget; the baseline is
  random's best budget), or an in-run proxy without one (:mod:`lfr_ds.compare.stats`).
- ``--test FILE...``: extra held-out sets evaluated once at the end of each run, reported alongside and
  never used for any choice.

Writes ``OUT/results.json``, ``OUT/results.md`` and ``OUT/heldout.png`` after every completed seed,
so a long comparison can be read (and committed) as it goes.
"""

from __future__ import annotations

import os
import shlex
import sys
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from lfr_ds import atomic
from lfr_ds.compare import ceilings, regime, report, runs, stats
from lfr_ds.compare.corpus import CorpusSpec, prepare
from lfr_ds.config import load_config
from lfr_ds.data.dataset import open_dataset
from lfr_ds.data.reader import DEFAULT_READ, check_inputs, iter_documents
from lfr_ds.data.tokenizer import Tokenizer
from lfr_ds.errors import ArgumentParser, UserError, cli
from lfr_ds.lfr.schedule import PRESETS as SCHEDULES
from lfr_ds.lfr.schedule import parse_schedule

SHARED = Path(__file__).resolve().parents[3] / "shared" / "data"


@dataclass(frozen=True)
class Preset:
    """One experimental regime."""

    unique_tokens: int
    """Training-set size in tokens (whole documents; repeats included when ``--redundancy`` > 0)."""
    passes: float
    """Training length in passes over the training blocks (the same for every arm)."""
    schedule: str
    """The LFR arms' schedule (``ep`` = passes)."""
    overrides: tuple[str, ...] = ()
    """lfr-train settings shared by every arm."""
    minutes: float = 1.0
    """One full-budget run's minutes on the reference machine (2 CPU cores), for the first ETA."""
    vocab_size: int = 4096
    """The corpus tokenizer's vocabulary, unless ``--vocab-size`` says otherwise. It sets the embedding's share of
    the parameters, so it is part of the regime (see :func:`regime`)."""


#: The LFR arms' schedule in the small, pilot and demo regimes: the recipe's default (``lfr.schedule=recipe``).
RECIPE = SCHEDULES["recipe"]
#: The LFR arms' schedule in the many-pass regime: the recipe's cycle (a fresh pass, then one pass over the kept
#: harder half) four times over the first half of the run, then Review to the end, so the learning rate anneals on
#: all the data as in the recipe. The parser's worst case (every Focus keeping every block: 1 + 4 × 1 + 3 = 8 of
#: 12 passes) leaves 4 passes for ``*``, at every budget of a sweep (tests/compare/test_ceilings.py).
MULTIPASS = ",".join(["learn:1ep", *["focus:1kp@0.5", "review:1ep"] * 3, "focus:1kp@0.5", "review:*"])
_COMMON = (
    "model.preset=tiny",
    "engine.micro_batch_size=16",
    "engine.global_batch_size=16",
    "optim.lr=2e-3",
    "optim.warmup_steps=20",
    "optim.min_lr_ratio=0.1",
    "checkpoint.interval=0",
    "log.interval=25",
)
_SMALL_GPT = (
    "model.preset=null",
    "model.num_layers=2",
    "model.num_attention_heads=4",
    "model.seq_length=64",
    "checkpoint.interval=0",
)
#: The data-rich regime's model: 2 layers, 32 wide, 4 heads, seq 256; at vocab 1,024 it has 66,432 parameters, so
#: its ~1.0M tokens a pass are 15 tokens per parameter a pass, 45 over its 3 passes (GPT-2 124M on OpenWebText
#: sees ~70 in its one pass; compute-optimal is ~20). The learning rate is random's best on seed 1 at R = 0.5
#: among 1e-3, 2e-3, 4e-3, 6e-3 and 8e-3 (4.937, 4.666, 4.546, 4.567, 4.610: docs/lfr.md "The data-rich regime").
_DATA_RICH_GPT = (
    "model.preset=null",
    "model.num_layers=2",
    "model.hidden_size=32",
    "model.num_attention_heads=4",
    "model.seq_length=256",
    "engine.micro_batch_size=16",
    "engine.global_batch_size=16",
    "optim.lr=4e-3",
    "optim.warmup_steps=20",
    "optim.min_lr_ratio=0.1",
    "checkpoint.interval=0",
    "log.interval=25",
)
PRESETS = {
    # Enough tokens per parameter that the model finishes with the easy blocks (issue 25): the regime where
    # pruning pays in Sorscher et al. 2022, and where this project's LFR first beat random.
    "data-rich": Preset(1_000_000, 3, RECIPE, _DATA_RICH_GPT, 1.5, vocab_size=1024),
    # The pilots' regime at a third of their size: 3 passes, so every block still teaches the model something.
    "small": Preset(350_000, 3, RECIPE, _COMMON, 7),
    # The paper's regime: many passes over little data, where blocks get learned and forgotten.
    "multipass": Preset(100_000, 12, MULTIPASS, _COMMON, 8),
    # The pilots' own size (about 25 min per arm here).
    "pilot": Preset(1_000_000, 3, RECIPE, _COMMON, 25),
    # The README's main job: the planted corpus (or DATA) whole, 6 passes of a small GPT, ~1 min an arm.
    "demo": Preset(
        10**9,
        6,
        RECIPE,
        (
            *_SMALL_GPT,
            "model.hidden_size=128",
            "engine.micro_batch_size=32",
            "engine.global_batch_size=32",
            "optim.lr=3e-3",
            "optim.warmup_steps=10",
            "log.interval=20",
        ),
        1,
    ),
    # For tests: seconds.
    "smoke": Preset(
        30_000,
        2,
        "learn:1ep,focus:*@0.5",
        (
            *_SMALL_GPT,
            "model.hidden_size=64",
            "engine.micro_batch_size=16",
            "engine.global_batch_size=16",
            "optim.lr=3e-3",
            "optim.warmup_steps=5",
            "log.interval=10",
        ),
        0.2,
    ),
}


def _log(msg: str) -> None:
    print(f"[lfr-compare] {msg}", file=sys.stderr, flush=True)


def _csv(text: str, what: str, cast=str) -> list:
    items = [t.strip() for t in text.split(",") if t.strip()]
    try:
        items = [cast(t) for t in items]
    except ValueError:
        raise UserError(
            f"{what} {text!r}: comma-separated {cast.__name__} values, e.g. {'1,2,3' if cast is int else '0.5,1.0'}"
        ) from None
    if not items:
        raise UserError(f"{what} {text!r}: empty; give at least one value")
    if len(set(items)) != len(items):
        raise UserError(f"{what} {text!r}: a value is repeated")
    return items


def parse_args(argv: Sequence[str] | None):
    p = _parser()
    args = p.parse_intermixed_args(argv)
    _validate(args)
    return args


def _parser() -> ArgumentParser:
    """lfr-compare's flags: the regime, arms and corpus here; the rest in :func:`_run_arguments`."""
    p = ArgumentParser(
        prog="lfr-compare",
        description="Train random sampling and LFR on one corpus and budget, "
        "seed by seed; compare held-out loss (paired per seed).",
    )
    p.add_argument("--preset", choices=sorted(PRESETS), default="small", help="experimental regime (default small)")
    p.add_argument("--seeds", default="1,2,3", help="comma-separated seeds (default 1,2,3)")
    p.add_argument("--arms", default="random,lfr,lfr_raw", help=f"comma-separated arms out of {', '.join(runs.ARMS)}")
    p.add_argument(
        "--out", required=True, help="output directory (corpus, runs, results.json, results.md, heldout.png)"
    )
    p.add_argument(
        "--train", default=str(SHARED / "webmix" / "train.jsonl"), help="training corpus (default webmix train)"
    )
    p.add_argument(
        "--split",
        help="the split of --train to train on, when it is a directory or glob holding several "
        "(a Hugging Face snapshot), as lfr-preprocess --split",
    )
    p.add_argument(
        "--valid",
        default=str(SHARED / "webmix" / "valid.jsonl"),
        help="held-out dev split, .jsonl with a source field or plain text (default webmix valid)",
    )
    p.add_argument(
        "--test",
        nargs="+",
        default=[],
        metavar="FILE",
        help="held-out test sets, reported once at the end of each run and never used for any choice",
    )
    p.add_argument(
        "--redundancy",
        type=float,
        default=0.0,
        help="share R in [0, 1) of the training tokens that are copies of other training documents (default 0)",
    )
    p.add_argument(
        "--budgets",
        default="1.0",
        help="token budgets as fractions of the full one, each with its own full schedule, for every arm (random "
        "too); must include 1.0 (e.g. 0.5,0.65,0.8,1.0: gives the budget-sweep token ratio against random's "
        "best budget)",
    )
    _run_arguments(p)
    _labels_argument(p)
    return p


def _labels_argument(p: ArgumentParser) -> None:
    p.add_argument(
        "--labels",
        choices=ceilings.LABELS,
        default="builder",
        help="whose copy labels the dedup and oracle arms (and the repeat columns) use: the redundancy builder's "
        "(default; needs --redundancy > 0) or lfr-dedup's on the training documents (any corpus)",
    )


def _run_arguments(p: ArgumentParser) -> None:
    """Evaluation, probes, schedule, threads and jobs, and the lfr-train overrides."""
    p.add_argument("--blimp", default=str(SHARED / "eval" / "blimp"), help="BLiMP directory ('' for none)")
    p.add_argument("--blimp-pairs", type=int, default=10, help="pairs per BLiMP file at each evaluation (default 10)")
    p.add_argument("--valid-blocks", type=int, default=512, help="fixed held-out blocks (default 512)")
    p.add_argument(
        "--evals",
        type=int,
        default=4,
        help="evaluations per run, the last at the end (default 4: at 512 blocks, under 20%% of a small run)",
    )
    p.add_argument(
        "--vocab-size",
        type=int,
        default=None,
        help="tokenizer vocabulary (default: the preset's; 1024 for data-rich, else 4096)",
    )
    p.add_argument(
        "--probe-fraction",
        type=float,
        default=0.0,
        help="split off this share of the unique tokens (at least 128 blocks) as a probe set every arm scores "
        "and none trains on (lfr.probe_path; issue 21); default 0 = none",
    )
    p.add_argument(
        "--subset-seed", type=int, default=0, help="seed of the training subset and the held-out choice (default 0)"
    )
    p.add_argument("--schedule", help="the LFR arms' schedule, instead of the preset's")
    p.add_argument(
        "--threads",
        type=int,
        default=1,
        help="CPU threads of each run (default 1); part of each run's record, since on CPU the numbers depend on it",
    )
    p.add_argument(
        "--jobs",
        type=int,
        default=None,
        help="runs trained side by side (default: cores / --threads); changes the wall time, never the numbers",
    )
    p.add_argument(
        "overrides",
        nargs="*",
        help="lfr-train settings for every arm (an arm's own settings win), e.g. lfr.temperature=2",
    )


def _validate(args) -> None:
    """Every flag checked, lists parsed in place; bad input fails in one line."""
    args.seeds = _csv(args.seeds, "--seeds", int)
    args.arms = _csv(args.arms, "--arms")
    unknown = [a for a in args.arms if a not in runs.ARMS]
    if unknown or "random" not in args.arms:
        raise UserError(f"--arms {','.join(args.arms)}: need random plus any of {', '.join(runs.ARMS)}")
    args.budgets = sorted(_csv(args.budgets, "--budgets", float))
    if not all(0 < b <= 1 for b in args.budgets) or args.budgets[-1] != 1.0:
        raise UserError(
            f"--budgets {','.join(map(str, args.budgets))}: fractions in (0, 1], including 1.0 (the full budget)"
        )
    if not 0 <= args.redundancy < 1:
        raise UserError(f"--redundancy {args.redundancy}: must be in [0, 1)")
    ceiling = [a for a in args.arms if a in ceilings.ARMS]
    if ceiling and args.redundancy == 0 and args.labels == "builder":
        raise UserError(
            f"--arms {','.join(args.arms)}: the ceiling arms ({', '.join(ceiling)}) need the redundancy builder's "
            "copy labels, and --redundancy 0 makes no copies; give --redundancy R > 0 or --labels lfr-dedup, or "
            "leave them out"
        )
    if not 0 <= args.probe_fraction <= 0.5:  # probes (issue 21)
        raise UserError(f"--probe-fraction {args.probe_fraction}: must be in [0, 0.5] (0 = no probes)")
    args.jobs = args.jobs if args.jobs is not None else max(1, (os.cpu_count() or 1) // max(1, args.threads))
    args.vocab_size = args.vocab_size if args.vocab_size is not None else PRESETS[args.preset].vocab_size
    for name in ("valid_blocks", "evals", "blimp_pairs", "vocab_size", "threads", "jobs"):
        if getattr(args, name) < 1:
            raise UserError(f"--{name.replace('_', '-')} {getattr(args, name)}: must be at least 1")
    check_inputs([args.train], args.split)
    check_inputs([args.valid, *args.test])
    for path in args.test:
        if not any(d.text for d in iter_documents([path], DEFAULT_READ)):
            raise UserError(f"--test {path}: holds no text; give a .jsonl of documents or a plain-text file")
    if args.blimp and not Path(args.blimp).exists():
        raise UserError(f"--blimp {args.blimp}: not found; pass '' to skip BLiMP")
    runs.check_overrides(args.overrides)


def command_line(args) -> str:
    """The full command, every setting explicit, so it reproduces the table whatever the defaults become."""
    parts = [
        "lfr-compare",
        "--preset",
        args.preset,
        "--seeds",
        ",".join(map(str, args.seeds)),
        "--arms",
        ",".join(args.arms),
        "--out",
        args.out,
        "--train",
        args.train,
        "--valid",
        args.valid,
        "--redundancy",
        str(args.redundancy),
        "--budgets",
        ",".join(f"{b:g}" for b in args.budgets),
        "--blimp",
        args.blimp,
        "--blimp-pairs",
        str(args.blimp_pairs),
        "--valid-blocks",
        str(args.valid_blocks),
        "--evals",
        str(args.evals),
        "--vocab-size",
        str(args.vocab_size),
        "--subset-seed",
        str(args.subset_seed),
        "--threads",
        str(args.threads),
    ]
    if args.split:
        parts += ["--split", args.split]
    if args.schedule:
        parts += ["--schedule", args.schedule]
    if args.probe_fraction:  # probes (issue 21)
        parts += ["--probe-fraction", str(args.probe_fraction)]
    if args.labels != "builder":
        parts += ["--labels", args.labels]
    if args.test:
        parts += ["--test", *args.test]
    return " ".join(shlex.quote(p) for p in [*parts, *args.overrides])


def plan(args) -> list[runs.Run]:
    """Seed by seed (so paired results accumulate), random first, each arm at each budget."""
    return [runs.Run(arm, seed, b) for seed in args.seeds for arm in args.arms for b in args.budgets]


@cli
def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    preset = PRESETS[args.preset]
    out = Path(args.out)
    # The arms' shared lfr-train config is checked before anything is written.
    shared = load_config(None, [*preset.overrides, *args.overrides, f"data.path={out / 'data' / 'train'}"])
    out.mkdir(parents=True, exist_ok=True)
    seq, G = shared.model.seq_length, shared.engine.global_batch_size
    corpus = prepare(
        CorpusSpec(
            args.train,
            args.valid,
            args.redundancy,
            args.subset_seed,
            args.vocab_size,
            preset.unique_tokens,
            seq,
            args.valid_blocks,
            args.split,
            args.probe_fraction,
        ),
        out,
    )
    corpus = ceilings.with_labels(corpus, args.labels)
    ceilings.prepare(corpus, args.arms, args.seeds, seq)
    ds = open_dataset(corpus.prefix)
    blocks = (ds.num_tokens - 1) // seq
    steps = max(1, round(preset.passes * blocks / G))
    # A user's lfr.schedule=... override is the LFR arms' schedule too (the random arm's own setting wins).
    schedule = args.schedule or preset.schedule
    for o in args.overrides:
        if o.startswith("lfr.schedule="):
            schedule = o.split("=", 1)[1]
    phases = parse_schedule(schedule, total_steps=steps, tokens_per_step=G * seq, review_steps=-(-blocks // G))
    args.regime = regime.of(shared.model, Tokenizer(corpus.tokenizer).vocab_size, blocks * seq, steps * G / blocks)
    setup = runs.Setup(
        out,
        corpus,
        preset.overrides,
        schedule,
        tuple(args.overrides),
        steps,
        args.valid_blocks,
        args.evals,
        args.blimp,
        args.blimp_pairs,
        args.threads,
    )
    todo = plan(args)
    for run in todo:
        runs.check_reusable(run, setup)
    _log(
        f"corpus: {ds.num_documents:,} documents, {ds.num_tokens:,} tokens "
        f"({corpus.info['repeat_token_share']:.1%} repeats), "
        f"{blocks:,} blocks; {steps} steps = {preset.passes} passes; held-out: {args.valid_blocks} blocks"
    )
    _log(f"regime: {regime.line(args.regime)}")
    total = sum(r.budget for r in todo)
    _log(
        f"plan: {len(todo)} runs ({', '.join(r.name for r in todo)}); "
        f"ETA ~{total * preset.minutes / args.jobs:.0f} min "
        f"(reused runs take none)"
    )
    results = {}
    for i, (run, (run_dir, seconds)) in enumerate(zip(todo, launch_all(todo, setup, args), strict=True)):
        if seconds is not None:  # the ETA from this machine's pace, per unit of budget, --jobs runs at a time
            left = sum(r.budget for r in todo[i + 1 :]) * seconds / 60 / run.budget / args.jobs
            _log(f"{run.name}: done in {seconds:.0f}s; {len(todo) - i - 1} runs left, ETA ~{left:.0f} min")
        results[run.arm, run.seed, run.budget] = runs.result(run_dir, corpus, args.test)
        if i + 1 == len(todo) or todo[i + 1].seed != run.seed:
            write_results(
                args, setup, results, [s for s in args.seeds if ("random", s, 1.0) in results], phases, G * seq
            )
    _log(f"wrote {out / 'results.json'}, {out / 'results.md'}, {out / 'heldout.png'}")
    return 0


def launch_all(todo: list[runs.Run], setup: runs.Setup, args) -> Iterator[tuple[Path, float | None]]:
    """Launch ``todo``, ``--jobs`` runs side by side; yield each run's ``(directory, seconds)`` in ``todo``'s
    order, so results accumulate seed by seed as they did one at a time. Runs are independent processes
    (their own run_dir, seed, data order and ``--threads``), so side by side changes only the wall time
    (tests/compare: ``--jobs 1`` and ``--jobs 2`` give the same results.json)."""
    with ThreadPoolExecutor(args.jobs) as pool:
        futures = [pool.submit(runs.launch, run, setup, args.test, _log) for run in todo]
        try:
            for future in futures:
                yield future.result()
        finally:  # a failed run: start no more (those already running finish, their directories stay reusable)
            for future in futures:
                future.cancel()


def write_results(args, setup: runs.Setup, results: dict, seeds: list[int], phases: list, tokens_per_step: int) -> None:
    summary = {
        "command": command_line(args),
        "preset": args.preset,
        "regime": args.regime,
        "seeds": seeds,
        "redundancy": args.redundancy,
        "budgets": args.budgets,
        "steps": setup.steps,
        "schedule": setup.schedule,
        "overrides": args.overrides,
        "valid": args.valid,
        "heldout_blocks": args.valid_blocks,
        "test": args.test,
        "corpus": setup.corpus.info,
        "labels": ceilings.labels_info(setup.corpus),
        "arms": stats.summarise(results, args.arms, seeds, args.budgets),
    }
    atomic.write_json(setup.out / "results.json", summary)
    atomic.write_bytes(setup.out / "results.md", report.markdown(summary).encode())
    report.plot(summary, phases, tokens_per_step, setup.out / "heldout.png")
    print(report.markdown(summary))


if __name__ == "__main__":
    sys.exit(main())
