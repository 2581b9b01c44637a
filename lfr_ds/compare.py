"""``lfr-compare``: random sampling vs LFR on the same data, model and token budget, once per seed.

    lfr-compare --preset small --seeds 1,2 --out runs/compare-small          # ~25 min a seed on 2 CPU cores
    lfr-compare --preset multipass --seeds 1,2 --out runs/compare-multipass

Arms (each one ``lfr-train`` run per seed, same steps and global batch, so the same tokens):

- ``random``: a fresh seeded shuffle of all blocks every pass: the baseline.
- ``lfr``: the recipe's default LFR (drift-corrected difficulty, drops capped per cluster).
- ``lfr_raw``: paper-faithful LFR: raw recorded losses, whole easiest clusters dropped.

Data: a seeded, document-level subset of ``--train`` (whole documents until ``unique_tokens`` is reached)
with a tokenizer trained on it; held-out loss on ``--valid`` (documents shuffled before subsetting: the
file is grouped by source), evaluated during training, plus BLiMP at the end. Writes ``OUT/results.json``,
``OUT/results.md`` (the tables) and ``OUT/heldout.png`` (held-out loss against tokens, phases shaded).

``token_ratio`` = tokens LFR needed to first reach the random arm's final held-out loss (linear
interpolation between evaluations, seeds averaged) / the random arm's tokens; ``null`` if it never does.
"""

from __future__ import annotations

import json
import os
import random
import shlex
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from lfr_ds import atomic
from lfr_ds.config import load_config
from lfr_ds.data.dataset import open_dataset
from lfr_ds.data.preprocess import preprocess
from lfr_ds.data.reader import ReadOptions, check_inputs, iter_documents
from lfr_ds.data.tokenizer import train_tokenizer
from lfr_ds.errors import ArgumentParser, UserError, cli
from lfr_ds.lfr.schedule import parse_schedule

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"


@dataclass(frozen=True)
class Preset:
    """One experimental regime."""

    unique_tokens: int
    """Training-set size: whole documents of ``--train`` until this many tokens."""
    passes: float
    """Training length in passes over the training blocks (the same for every arm)."""
    schedule: str
    """The LFR arms' schedule (``ep`` = passes)."""
    overrides: tuple[str, ...] = ()
    """lfr-train settings shared by every arm."""


_COMMON = ("model.preset=tiny", "engine.micro_batch_size=16", "engine.global_batch_size=16", "optim.lr=2e-3",
           "optim.warmup_steps=20", "optim.min_lr_ratio=0.1", "checkpoint.interval=0", "log.interval=25")
PRESETS = {
    # The pilots' regime at a third of their size: 3 passes, so every block still teaches the model something.
    "small": Preset(350_000, 3, "learn:1ep,focus:0.5ep@0.5,review:1ep,focus:*@0.7", _COMMON),
    # The paper's regime: many passes over little data, where blocks get learned and forgotten.
    "multipass": Preset(100_000, 12, "learn:2ep,focus:2ep@0.5,review:1ep,focus:2ep@0.7,review:1ep,focus:*@0.7", _COMMON),
    # The pilots' own size (about 25 min per arm here).
    "pilot": Preset(1_000_000, 3, "learn:1ep,focus:0.5ep@0.5,review:1ep,focus:*@0.7", _COMMON),
    # The README's main job: the planted corpus (or DATA) whole, 6 passes of a small GPT, ~1 min an arm.
    # Learn takes two passes so that Focus 1 already sees each block's progress.
    "demo": Preset(10**9, 6, "learn:2ep,focus:1ep@0.5,review:1ep,focus:*@0.7", (
        "model.preset=null", "model.num_layers=2", "model.hidden_size=128", "model.num_attention_heads=4", "model.seq_length=64",
        "engine.micro_batch_size=32", "engine.global_batch_size=32", "optim.lr=3e-3", "optim.warmup_steps=10",
        "checkpoint.interval=0", "log.interval=20")),
    # For tests: seconds.
    "smoke": Preset(30_000, 2, "learn:1ep,focus:*@0.5", ("model.preset=null", "model.num_layers=2", "model.hidden_size=64",
                    "model.num_attention_heads=4", "model.seq_length=64", "engine.micro_batch_size=16",
                    "engine.global_batch_size=16", "optim.lr=3e-3", "optim.warmup_steps=5", "checkpoint.interval=0",
                    "log.interval=10")),
}
ARMS = {
    "random": ("lfr.schedule=random",),
    "lfr": (),
    "lfr_raw": ("lfr.score=raw", "lfr.selection=paper"),
}


def subset_documents(src: str, dst: Path, unique_tokens: int, seed: int, chars_per_token: float) -> int:
    """Write whole documents of ``src``, in a seeded random order, until about ``unique_tokens`` tokens."""
    docs = [{"text": d.text, "source": d.source} for d in iter_documents([src], ReadOptions())]
    random.Random(seed).shuffle(docs)
    budget, out = unique_tokens * chars_per_token, []
    for d in docs:
        if budget <= 0:
            break
        out.append(d)
        budget -= len(d["text"])
    atomic.write_bytes(dst, "".join(json.dumps(d) + "\n" for d in out).encode())
    return len(out)


def prepare_data(train: str, out: Path, unique_tokens: int, vocab_size: int, seed: int) -> str:
    """The training subset, its tokenizer and its ``.bin/.idx``; reused if already there."""
    prefix = out / "data" / "train"
    if (out / "data" / "train.meta.json").is_file():
        return str(prefix)
    (out / "data").mkdir(parents=True, exist_ok=True)
    subset = out / "data" / "train.jsonl"
    chars_per_token = 4.0  # English BPE at a few thousand pieces; corrected by one re-cut below
    for _ in range(2):
        subset_documents(train, subset, unique_tokens, seed, chars_per_token)
        train_tokenizer([str(subset)], str(out / "data" / "tokenizer.model"), vocab_size)
        meta = preprocess([str(subset)], str(prefix), str(out / "data" / "tokenizer.model"), progress=False)
        chars_per_token *= unique_tokens / meta["num_tokens"]
        if abs(meta["num_tokens"] / unique_tokens - 1) < 0.1:
            break
    return str(prefix)


def run_arm(name: str, seed: int, data: str, preset: Preset, steps: int, args, out: Path) -> Path:
    run_dir = out / f"{name}-seed{seed}"
    if (run_dir / "checkpoints" / "latest").is_file() and (run_dir / "eval.jsonl").is_file() and _finished(run_dir, steps):
        _log(f"{run_dir.name}: already done, reusing")
        return run_dir
    overrides = [*preset.overrides, f"lfr.schedule={preset.schedule}", *ARMS[name], f"data.path={data}", f"run_dir={run_dir}",
                 f"steps={steps}", f"seed={seed}", f"data.seed={seed}", f"eval.valid_path={args.valid}",
                 f"eval.valid_blocks={args.valid_blocks}", f"eval.interval={max(1, steps // args.evals)}",
                 "log.progress_bar=false", *args.overrides]
    if args.blimp:
        overrides += [f"eval.blimp={args.blimp}", f"eval.blimp_pairs={args.blimp_pairs}"]
    cmd = [sys.executable, "-m", "lfr_ds.train", *overrides]
    _log(f"{run_dir.name}: {' '.join(shlex.quote(c) for c in cmd[3:])}")
    t0 = time.time()
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", str(os.cpu_count() or 1))}
    with open(out / f"{name}-seed{seed}.log", "w") as log:
        proc = subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT, env=env)
    if proc.returncode != 0:
        raise UserError(f"arm {name} seed {seed} failed (exit {proc.returncode}); see {out / f'{name}-seed{seed}.log'}")
    _log(f"{run_dir.name}: done in {time.time() - t0:.0f}s")
    return run_dir


def _finished(run_dir: Path, steps: int) -> bool:
    lines = (run_dir / "eval.jsonl").read_text().split("\n")
    return any(json.loads(line)["step"] == steps for line in lines if line.strip())


def _log(msg: str) -> None:
    print(f"[lfr-compare] {msg}", file=sys.stderr, flush=True)


def read_curve(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "eval.jsonl").read_text().split("\n") if line.strip()]


def tokens_to_reach(curve: list[tuple[int, float]], target: float) -> float | None:
    """First token count where the curve reaches ``target`` (linear interpolation), or ``None``."""
    prev = None
    for tokens, loss in curve:
        if loss <= target:
            if prev is None:
                return float(tokens)
            (t0, l0) = prev
            return t0 + (tokens - t0) * (l0 - target) / (l0 - loss)
        prev = (tokens, loss)
    return None


def summarise(runs: dict[str, list[Path]]) -> dict:
    """Per arm: per-seed finals (held-out loss, per source, BLiMP, tokens) and their means."""
    arms = {}
    for name, dirs in runs.items():
        seeds = []
        for d in dirs:
            curve = read_curve(d)
            final = curve[-1]
            unique = _unique_blocks_trained(d)
            seeds.append({
                "run_dir": str(d), "tokens": final["tokens"], "valid_loss": final["valid"]["loss"], "valid_ppl": final["valid"]["ppl"],
                "per_source": {s: v["loss"] for s, v in final["valid"]["per_source"].items()},
                "blimp_acc": final.get("blimp", {}).get("acc"), "unique_blocks_trained": unique,
                "curve": [(c["tokens"], c["valid"]["loss"]) for c in curve],
            })
        mean = {
            "valid_loss": float(np.mean([s["valid_loss"] for s in seeds])),
            "valid_ppl": float(np.mean([s["valid_ppl"] for s in seeds])),
            "per_source": {src: float(np.mean([s["per_source"][src] for s in seeds])) for src in seeds[0]["per_source"]},
            "blimp_acc": float(np.mean([s["blimp_acc"] for s in seeds])) if seeds[0]["blimp_acc"] is not None else None,
            "tokens": seeds[0]["tokens"],
            "curve": _mean_curve([s["curve"] for s in seeds]),
        }
        arms[name] = {"seeds": seeds, "mean": mean}
    return arms


def _unique_blocks_trained(run_dir: Path) -> int:
    ids = set()
    for p in sorted((run_dir / "index").glob("phase_*.npy")):
        if not p.name.endswith(".kept.npy"):
            manifest = json.loads(p.with_suffix(".json").read_text())
            ids.update(np.unique(np.load(p, allow_pickle=False)[: manifest["steps"] * manifest["global_batch_size"]]).tolist())
    return len(ids)


def _mean_curve(curves: list[list[tuple[int, float]]]) -> list[tuple[int, float]]:
    n = min(len(c) for c in curves)
    return [(curves[0][i][0], float(np.mean([c[i][1] for c in curves]))) for i in range(n)]


def token_ratio(arms: dict, arm: str) -> float | None:
    target = arms["random"]["mean"]["valid_loss"]
    reached = tokens_to_reach(arms[arm]["mean"]["curve"], target)
    return None if reached is None else reached / arms["random"]["mean"]["tokens"]


def markdown(results: dict) -> str:
    arms = results["arms"]
    sources = list(next(iter(arms.values()))["mean"]["per_source"])
    lines = [f"# lfr-compare: {results['preset']} ({results['unique_tokens']:,} unique tokens, {results['passes']} passes, "
             f"{len(results['seeds'])} seeds)", "",
             "| arm | held-out loss | ppl | " + " | ".join(sources) + " | BLiMP | tokens | unique blocks | reaches random at |",
             "|---|---|---|" + "---|" * len(sources) + "---|---|---|---|"]
    for name, a in arms.items():
        m = a["mean"]
        ratio = results["token_ratio"] if name == "lfr" else results.get(f"token_ratio_{name}") if name != "random" else 1.0
        reach = "never" if ratio is None else f"{ratio:.0%} of tokens"
        blimp = f"{m['blimp_acc']:.3f}" if m["blimp_acc"] is not None else "-"
        uniq = np.mean([s["unique_blocks_trained"] for s in a["seeds"]])
        lines.append(f"| {name} | {m['valid_loss']:.4f} | {m['valid_ppl']:.2f} | " + " | ".join(f"{m['per_source'][s]:.3f}" for s in sources)
                     + f" | {blimp} | {m['tokens']:,} | {uniq:,.0f} | {reach} |")
    lines += ["", "Per seed (held-out loss):", ""]
    for name, a in arms.items():
        lines.append(f"- {name}: " + ", ".join(f"{s['valid_loss']:.4f}" for s in a["seeds"]))
    lines += ["", f"Command: `{results['command']}`"]
    return "\n".join(lines) + "\n"


def plot(results: dict, phases: list, tokens_per_step: int, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 4.5))
    colors = {"learn": "#dddddd", "focus": "#ffe0b3", "review": "#cfe8ff"}
    for ph in phases:
        ax.axvspan(ph.start * tokens_per_step, ph.end * tokens_per_step, color=colors.get(ph.kind, "white"), alpha=0.6, lw=0)
        ax.text((ph.start + ph.steps / 2) * tokens_per_step, 1.0, ph.kind, transform=ax.get_xaxis_transform(), ha="center",
                va="bottom", fontsize=7)
    for name, a in results["arms"].items():
        for s in a["seeds"]:
            t, loss = zip(*s["curve"], strict=True)
            ax.plot(t, loss, lw=0.6, alpha=0.35, color={"random": "C0", "lfr": "C1", "lfr_raw": "C2"}.get(name))
        t, loss = zip(*a["mean"]["curve"], strict=True)
        ax.plot(t, loss, lw=2, label=name, color={"random": "C0", "lfr": "C1", "lfr_raw": "C2"}.get(name))
    ax.set_xlabel("training tokens")
    ax.set_ylabel("held-out loss (nats/token)")
    ax.set_title(f"{results['preset']}: held-out loss vs tokens (LFR phases shaded)", fontsize=10)
    ax.legend()
    fig.tight_layout()
    with atomic.atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=120)
    plt.close(fig)


@cli
def main(argv: Sequence[str] | None = None) -> int:
    p = ArgumentParser(prog="lfr-compare", description="Train random sampling and LFR on the same data and budget; compare held-out loss.")
    p.add_argument("--preset", choices=sorted(PRESETS), default="small", help="experimental regime (default small)")
    p.add_argument("--seeds", default="1,2", help="comma-separated seeds (default 1,2)")
    p.add_argument("--arms", default="random,lfr,lfr_raw", help=f"comma-separated arms out of {', '.join(ARMS)}")
    p.add_argument("--out", required=True, help="output directory (runs, results.json, results.md, heldout.png)")
    p.add_argument("--train", default=str(SHARED / "webmix" / "train.jsonl"), help="training corpus .jsonl (default webmix train)")
    p.add_argument("--valid", default=str(SHARED / "webmix" / "valid.jsonl"), help="held-out .jsonl (default webmix valid)")
    p.add_argument("--blimp", default=str(SHARED / "eval" / "blimp"), help="BLiMP directory ('' for none)")
    p.add_argument("--blimp-pairs", type=int, default=10, help="pairs per BLiMP file at each evaluation (default 10)")
    p.add_argument("--valid-blocks", type=int, default=96, help="held-out blocks per evaluation (default 96)")
    p.add_argument("--evals", type=int, default=10, help="evaluations per run (default 10)")
    p.add_argument("--vocab-size", type=int, default=4096, help="tokenizer vocabulary (default 4096)")
    p.add_argument("--subset-seed", type=int, default=0, help="seed of the training-document subset (default 0)")
    p.add_argument("--schedule", help="override the preset's LFR schedule")
    p.add_argument("overrides", nargs="*", help="lfr-train settings for every arm, e.g. lfr.temperature=2")
    args = p.parse_intermixed_args(argv)
    preset = PRESETS[args.preset]
    if args.schedule:
        preset = Preset(preset.unique_tokens, preset.passes, args.schedule, preset.overrides)
    arms = [a.strip() for a in args.arms.split(",") if a.strip()]
    unknown = [a for a in arms if a not in ARMS]
    if unknown or "random" not in arms:
        raise UserError(f"--arms {args.arms}: need random plus any of {', '.join(ARMS)}")
    try:
        seeds = [int(s) for s in args.seeds.split(",")]
    except ValueError:
        raise UserError(f"--seeds {args.seeds!r}: comma-separated integers, e.g. 1,2") from None
    check_inputs([args.train, args.valid])
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if args.blimp and not Path(args.blimp).exists():
        raise UserError(f"--blimp {args.blimp}: not found; pass '' to skip BLiMP")

    data = prepare_data(args.train, out, preset.unique_tokens, args.vocab_size, args.subset_seed)
    ds = open_dataset(data)
    cfg = load_config(None, [*preset.overrides, f"data.path={data}", *args.overrides])
    seq, G = cfg.model.seq_length, cfg.engine.global_batch_size
    blocks = (ds.num_tokens - 1) // seq
    steps = max(1, round(preset.passes * blocks / G))
    _log(f"data: {ds.num_documents:,} documents, {ds.num_tokens:,} tokens, {blocks:,} blocks; {steps} steps = {preset.passes} passes")
    runs = {name: [run_arm(name, s, data, preset, steps, args, out) for s in seeds] for name in arms}

    summary = summarise(runs)
    command = "lfr-compare " + " ".join(shlex.quote(a) for a in (argv if argv is not None else sys.argv[1:]))
    results = {"arms": summary, "token_ratio": token_ratio(summary, "lfr") if "lfr" in summary else None,
               "command": command, "preset": args.preset, "seeds": seeds, "unique_tokens": ds.num_tokens, "passes": preset.passes,
               "steps": steps, "schedule": preset.schedule}
    for name in summary:
        if name not in ("random", "lfr"):
            results[f"token_ratio_{name}"] = token_ratio(summary, name)
    if results["token_ratio"] is None and "lfr" in summary:
        results["note"] = "LFR never reached the random arm's final held-out loss within the same token budget"
    atomic.write_json(out / "results.json", results)
    atomic.write_bytes(out / "results.md", markdown(results).encode())
    phases = parse_schedule(preset.schedule, total_steps=steps, tokens_per_step=G * seq, review_steps=-(-blocks // G))
    plot(results, phases, G * seq, out / "heldout.png")
    print(markdown(results))
    _log(f"wrote {out / 'results.json'}, {out / 'results.md'}, {out / 'heldout.png'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
