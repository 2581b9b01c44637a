"""``lfr-eval``: score a checkpoint on held-out text and zero-shot tasks, optionally export it to HuggingFace.

    lfr-eval runs/gpt2 --valid data/valid.jsonl --blimp eval/blimp --lambada eval/lambada_test.jsonl
    lfr-eval runs/gpt2/checkpoints/step_00005000 --mc arc_easy.jsonl --json results.json
    lfr-eval runs/gpt2 --export-hf hf/gpt2-lfr

Every input is read and checked before the model loads, so bad input fails in a second with one line.
Results go to stdout as a table (and to ``--json``); progress bars go to stderr.
"""

from __future__ import annotations

import sys
import time
import warnings
from collections.abc import Sequence
from pathlib import Path

from lfr_ds import atomic
from lfr_ds.errors import ArgumentParser, UserError, cli
from lfr_ds.eval.checkpoint import load_model, open_checkpoint
from lfr_ds.eval.export_hf import check_out_dir, export_hf
from lfr_ds.eval.perplexity import heldout_loss, load_heldout
from lfr_ds.eval.zeroshot import (
    evaluate_blimp,
    evaluate_lambada,
    evaluate_mc,
    load_blimp,
    load_lambada,
    load_mc,
)
from lfr_ds.resources import out_of_disk, out_of_memory


def parse_args(argv: Sequence[str] | None):
    p = ArgumentParser(
        prog="lfr-eval",
        description="Evaluate an lfr-ds checkpoint: held-out perplexity, multiple choice, BLiMP, LAMBADA; "
        "export it as a HuggingFace GPT-2.",
    )
    p.add_argument(
        "checkpoint",
        metavar="RUN_OR_CKPT",
        help="a run directory (its latest checkpoint) or a step_* directory",
    )
    p.add_argument(
        "--valid",
        nargs="+",
        action="extend",
        default=[],
        metavar="PATH",
        help="held-out text (any lfr-preprocess input: .jsonl, .txt, .gz, .zst, .parquet, a directory or glob; "
        "tokenized with the run's tokenizer) or a dataset prefix",
    )
    p.add_argument(
        "--blimp",
        nargs="+",
        action="extend",
        default=[],
        metavar="DIR_OR_FILE",
        help="BLiMP .jsonl files or their directory",
    )
    p.add_argument("--lambada", metavar="FILE", help="LAMBADA .jsonl ({'text'} per passage)")
    p.add_argument(
        "--mc",
        nargs="+",
        action="extend",
        default=[],
        metavar="FILE",
        help="multiple-choice .jsonl ({'context', 'choices', 'label'} per item)",
    )
    p.add_argument(
        "--max-examples",
        type=int,
        metavar="N",
        help="cap each task: the first N items of each MC/BLiMP/LAMBADA file, N blocks of each --valid set",
    )
    p.add_argument("--batch-size", type=int, default=8, help="sequences per forward pass (default: 8)")
    p.add_argument("--tokenizer", metavar="MODEL", help="the run's tokenizer, if it has moved since training")
    p.add_argument("--json", metavar="OUT", help="also write the results as JSON to this file")
    p.add_argument("--export-hf", metavar="DIR", help="write a HuggingFace GPT-2 directory (needs transformers)")
    args = p.parse_args(argv)
    if not (args.valid or args.blimp or args.lambada or args.mc or args.export_hf):
        raise UserError("nothing to do; give --valid, --blimp, --lambada, --mc or --export-hf")
    if args.max_examples is not None and args.max_examples < 1:
        raise UserError(f"--max-examples {args.max_examples}: must be at least 1")
    if args.batch_size < 1:
        raise UserError(f"--batch-size {args.batch_size}: must be at least 1")
    if args.json is not None and not Path(args.json).absolute().parent.is_dir():
        raise UserError(
            f"--json {args.json}: directory {Path(args.json).absolute().parent} does not exist; create it first"
        )
    if args.export_hf is not None:
        check_out_dir(args.export_hf)
    return args


@cli
def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    # megatron-core warns about a CUDA-graph default it deprecates whenever a config is built.
    warnings.filterwarnings("ignore", message=".*cuda_graph_scope.*")
    ckpt = open_checkpoint(args.checkpoint, tokenizer=args.tokenizer)
    seq, n = ckpt.model_config.seq_length, args.max_examples
    # ---- read every input first: bad input fails before the (slow) model load
    mc = {path: load_mc(path)[:n] for path in args.mc}
    blimp = {name: pairs[:n] for name, pairs in load_blimp(args.blimp).items()} if args.blimp else None
    lambada = load_lambada(args.lambada)[:n] if args.lambada else None
    valid = {
        path: load_heldout(path, seq, tokenizer=ckpt.tokenizer, max_blocks=n, seed=ckpt.data_seed)
        for path in args.valid
    }

    t0 = time.time()
    with out_of_memory(
        "loading the model",
        "evaluate on a machine with more memory (or, on a GPU, hide it with CUDA_VISIBLE_DEVICES= to use host memory)",
    ):
        model = load_model(ckpt)
    device = next(model.parameters()).device
    print(
        f"lfr-eval: {ckpt.path} (step {ckpt.step}) on {device.type}, loaded in {time.time() - t0:.1f}s",
        file=sys.stderr,
    )
    kw = {"seq_length": seq, "batch_size": args.batch_size}
    results: dict = {
        "checkpoint": str(ckpt.path),
        "step": ckpt.step,
        "tokens_trained": ckpt.state.tokens,
        "tokenizer": {"path": ckpt.tokenizer.path, "sha256": ckpt.tokenizer.sha256},
    }
    with out_of_memory("evaluating", f"lower --batch-size (now {args.batch_size})"):
        if valid:
            results["valid"] = {
                path: heldout_loss(model, data, micro_batch_size=args.batch_size, progress=True)
                for path, data in valid.items()
            }
        if mc:
            results["mc"] = {
                path: evaluate_mc(model, ckpt.tokenizer, items, progress=f"mc {Path(path).name}", **kw)
                for path, items in mc.items()
            }
        if blimp is not None:
            results["blimp"] = evaluate_blimp(model, ckpt.tokenizer, blimp, progress="blimp", **kw)
        if lambada is not None:
            results["lambada"] = evaluate_lambada(model, ckpt.tokenizer, lambada, progress="lambada", **kw)
    if args.export_hf:
        with out_of_disk(args.export_hf, "--export-hf"):
            results["export_hf"] = str(export_hf(model, ckpt.model_config, ckpt.tokenizer, args.export_hf))

    results = _drop_logprobs(results)
    print(format_table(results))
    if args.json:
        with out_of_disk(Path(args.json).absolute().parent, "--json"):
            atomic.write_json(args.json, results)
    return 0


def _drop_logprobs(obj):
    """The summary without per-example log-likelihoods (the Python API returns those)."""
    if isinstance(obj, dict):
        return {k: _drop_logprobs(v) for k, v in obj.items() if k != "logprobs"}
    return obj


def format_table(results: dict) -> str:
    """The results as an aligned table: one row per task and metric."""
    rows = [("task", "metric", "value", "n")]
    for path, r in results.get("valid", {}).items():
        name = Path(path).name
        rows += [
            (name, "loss", f"{r['loss']:.4f}", f"{r['tokens']:,} tok"),
            ("", "ppl", f"{r['ppl']:.2f}", ""),
        ]
        for source, s in r["per_source"].items():
            rows.append((f"  {name} [{source}]", "loss", f"{s['loss']:.4f}", f"{s['tokens']:,} tok"))
    for path, r in results.get("mc", {}).items():
        rows += [
            (Path(path).name, "acc", f"{r['acc']:.4f}", f"{r['n']:,}"),
            ("", "acc_norm", f"{r['acc_norm']:.4f}", ""),
        ]
    if "blimp" in results:
        r = results["blimp"]
        rows += [
            (f"blimp ({len(r['per_set'])} sets)", "acc", f"{r['acc']:.4f}", f"{r['n']:,}"),
            ("", "acc_mean", f"{r['acc_mean']:.4f}", ""),
        ]
    if "lambada" in results:
        r = results["lambada"]
        rows += [("lambada", "acc", f"{r['acc']:.4f}", f"{r['n']:,}"), ("", "ppl", f"{r['ppl']:.2f}", "")]
    if "export_hf" in results:
        rows.append(("export_hf", "dir", results["export_hf"], ""))
    widths = [max(len(row[i]) for row in rows) for i in range(4)]
    lines = [f"step {results['step']}: {results['checkpoint']}"]
    for i, row in enumerate(rows):
        lines.append(
            f"{row[0]:<{widths[0]}}  {row[1]:<{widths[1]}}  {row[2]:>{widths[2]}}  {row[3]:>{widths[3]}}".rstrip()
        )
        if i == 0:
            lines.append("-" * len(lines[-1]))
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
