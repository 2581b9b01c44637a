#!/usr/bin/env python3
"""Selection quality on the planted corpus, from one real loss table: what each Focus option drops and draws,
with the hidden-state sketch on and off.

1. Write the planted corpus (200 documents: trivial / learnable / noise, 50/35/15%), its 512-piece
   tokenizer and dataset; train the small model (``synthetic.SMALL_MODEL``) for a 2-pass Learn (176 steps
   of 32 blocks) and checkpoint its loss table (3.5 min in all on 2 busy cores).
2. From that one table, rewrite the Focus boundary offline (the code path training uses) for each option
   (``@0.5`` with perplexity weighting, ``@0.5`` with ``lfr.weighting=learnable``, ``@auto``), each with
   the table's 16-wide sketch and without it (``model.sketch_dim=0`` clusters on difficulty and progress
   alone), for three clustering/draw seeds, 3,200 draws each.

Prints progress to stderr and, as its last stdout line, one JSON object:
``{"noise_block_share": ..., "results": [{"option": ..., "sketch": "on"|"off", "seed": s,
"drop": {source: fraction}, "draw_share": {source: share}}, ...], "seconds": ...}``.

    .venv/bin/python bench/selection.py [--workdir DIR]

With ``--corpus OUT/data`` (a corpus ``lfr-compare`` built, e.g. at ``--redundancy 0.5``) it instead
trains that preset's 1-pass Learn (the small preset's tiny model) and rewrites Focus @0.5 with the
sketch on and off, three seeds each; on webmix no source is planted, so it scores the drop by the
builder's repeats: ``{"repeat_block_share": ..., "results": [{"sketch": ..., "seed": s,
"dropped_that_repeat": ..., "repeats_dropped": ..., "drop": {source: fraction}}, ...], "seconds": ...}``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from lfr_ds import synthetic
from lfr_ds.compare.cli import PRESETS
from lfr_ds.compare.runs import REPEAT_BLOCK
from lfr_ds.config import LFRConfig, load_config
from lfr_ds.data.blocks import BlockView
from lfr_ds.data.dataset import open_dataset
from lfr_ds.data.preprocess import preprocess
from lfr_ds.data.tokenizer import train_tokenizer
from lfr_ds.lfr.offline import load_checkpoint_state
from lfr_ds.lfr.rewriter import Rewriter
from lfr_ds.lfr.schedule import Phase

LEARN_STEPS, GLOBAL_BATCH, DRAW_STEPS = 176, 32, 100
OPTIONS = {
    "@0.5 perplexity": (Phase(1, "focus", LEARN_STEPS, DRAW_STEPS, drop=0.5), LFRConfig()),
    "@0.5 learnable": (Phase(1, "focus", LEARN_STEPS, DRAW_STEPS, drop=0.5), LFRConfig(weighting="learnable")),
    "@auto": (Phase(1, "focus", LEARN_STEPS, DRAW_STEPS, auto_drop=True), LFRConfig()),
}


def _rewriter(dataset, block_source: np.ndarray, seq: int, batch: int, seed: int, options: LFRConfig) -> Rewriter:
    """A rewriter for one seed and one set of options; only its :meth:`~Rewriter.build` is used (no run directory)."""
    return Rewriter(Path("."), options, seed, dataset.fingerprint, list(dataset.sources), block_source, seq, batch)


def train_planted(work: Path) -> tuple[str, Path]:
    """The planted dataset's prefix and the checkpoint that ends its 2-pass Learn."""
    corpus = work / "planted.jsonl"
    synthetic.write_jsonl(corpus, synthetic.generate(200, seed=0))
    train_tokenizer([str(corpus)], str(work / "tok.model"), 512)
    preprocess([str(corpus)], str(work / "data"), str(work / "tok.model"), progress=False)
    run = work / "run"
    cmd = [
        sys.executable,
        "-m",
        "lfr_ds.train",
        f"data.path={work / 'data'}",
        f"run_dir={run}",
        *synthetic.SMALL_MODEL,
        f"engine.micro_batch_size={GLOBAL_BATCH}",
        f"engine.global_batch_size={GLOBAL_BATCH}",
        f"steps={LEARN_STEPS + 4}",
        f"lfr.schedule=learn:{LEARN_STEPS},focus:*@0.5",
        f"checkpoint.interval={LEARN_STEPS}",
    ]
    subprocess.run(cmd, check=True, capture_output=True, env={**os.environ, "OMP_NUM_THREADS": "2"})
    return str(work / "data"), run / "checkpoints" / f"step_{LEARN_STEPS:08d}"


def train_corpus_learn(corpus: Path, work: Path, overrides: tuple[str, ...], steps: int) -> Path:
    """The checkpoint that ends a ``steps``-step Learn with lfr-train ``overrides`` (lfr-compare's
    ``small`` preset) on the corpus it built under ``corpus`` (``OUT/data``): the table a Focus of the
    study's schedules starts from. The sketch is on (16 wide) so that both modes read the same table."""
    run = work / "run"
    cmd = [
        sys.executable,
        "-m",
        "lfr_ds.train",
        f"data.path={corpus / 'train'}",
        f"data.tokenizer={corpus / 'tokenizer.model'}",
        f"run_dir={run}",
        *overrides,
        "model.sketch_dim=16",
        f"steps={steps + 4}",
        f"lfr.schedule=learn:{steps},focus:*@0.5",
        f"checkpoint.interval={steps}",
        "seed=1",
        "data.seed=1",
        "log.tensorboard=false",
    ]
    subprocess.run(cmd, check=True, capture_output=True, env={**os.environ, "OMP_NUM_THREADS": "2"})
    return run / "checkpoints" / f"step_{steps:08d}"


def corpus_results(corpus: Path, work: Path) -> dict:
    """Focus @0.5 (the study's options) after the small preset's 1-pass Learn, with the sketch on and
    off: which blocks it drops, measured by the builder's repeats (the blocks whose dropping saves tokens
    without losing text)."""
    overrides = PRESETS["small"].overrides
    cfg = load_config(None, [*overrides, f"data.path={corpus / 'train'}"])
    seq, batch = cfg.model.seq_length, cfg.engine.global_batch_size
    dataset = open_dataset(str(corpus / "train"))
    learn_steps = -(-((dataset.num_tokens - 1) // seq) // batch)  # one pass over the blocks
    state, table = load_checkpoint_state(str(train_corpus_learn(corpus, work, overrides, learn_steps)))
    view = BlockView(dataset, seq, state.config["data"]["seed"])
    repeat = view.token_share(np.load(str(corpus / "train.repeat.npy"), allow_pickle=False).astype(bool)) > REPEAT_BLOCK
    phase = Phase(1, "focus", learn_steps, DRAW_STEPS, drop=0.5)
    results, sketch = [], table.sketch
    for mode in ("on", "off"):
        table.sketch = sketch if mode == "on" else None
        for seed in (1, 2, 3):
            built = _rewriter(dataset, view.block_source, seq, batch, seed, LFRConfig()).build(phase, table)
            dropped = ~built.keep
            results.append(
                {
                    "sketch": mode,
                    "seed": seed,
                    "dropped_that_repeat": round(float(repeat[dropped].mean()), 4),
                    "repeats_dropped": round(float(dropped[repeat].mean()), 4),
                    "drop": built.manifest.source_drop_fraction,
                }
            )
            print(f"  sketch {mode}, seed {seed}: {results[-1]}", file=sys.stderr, flush=True)
    return {"repeat_block_share": round(float(repeat.mean()), 4), "results": results}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--workdir", help="scratch directory (default: a temporary one)")
    p.add_argument(
        "--corpus",
        type=Path,
        help="an lfr-compare corpus (OUT/data, e.g. of --redundancy 0.5) instead of the "
        "planted one: Focus @0.5 after the small preset's 1-pass Learn, sketch on and off, scored by repeats dropped",
    )
    args = p.parse_args()
    t0 = time.monotonic()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(args.workdir or tmp)
        work.mkdir(parents=True, exist_ok=True)
        if args.corpus:
            print(f"training the small preset's 1-pass Learn on {args.corpus} in {work}", file=sys.stderr, flush=True)
            print(json.dumps({**corpus_results(args.corpus, work), "seconds": round(time.monotonic() - t0, 1)}))
            return
        print(f"training the planted 2-pass Learn in {work}", file=sys.stderr, flush=True)
        prefix, checkpoint = train_planted(work)
        state, table = load_checkpoint_state(str(checkpoint))
        dataset = open_dataset(prefix)
        source = BlockView(dataset, 64, state.config["data"]["seed"]).block_source
        sources = dataset.sources
        results = []
        for sketch in ("on", "off"):
            if sketch == "off":
                table.sketch = None
            for name, (phase, options) in OPTIONS.items():
                for seed in (1, 2, 3):
                    built = _rewriter(dataset, source, 64, GLOBAL_BATCH, seed, options).build(phase, table)
                    order = built.order
                    share = np.bincount(source[order], minlength=len(sources)) / len(order)
                    results.append(
                        {
                            "option": name,
                            "sketch": sketch,
                            "seed": seed,
                            "drop": built.manifest.source_drop_fraction,
                            "draw_share": {s: round(float(x), 4) for s, x in zip(sources, share, strict=True)},
                        }
                    )
                    print(
                        f"  sketch {sketch}, {name}, seed {seed}: "
                        f"dropped {results[-1]['drop']}, drew {results[-1]['draw_share']}",
                        file=sys.stderr,
                        flush=True,
                    )
        noise = float(np.mean(source == sources.index("noise")))
    print(
        json.dumps(
            {"noise_block_share": round(noise, 4), "results": results, "seconds": round(time.monotonic() - t0, 1)}
        )
    )


if __name__ == "__main__":
    main()
