"""``lfr-rewrite``: run a phase's sample index rewrite offline, from a checkpoint's saved loss table.

    lfr-rewrite runs/x/checkpoints/step_00002000 --out /tmp/focus.npy                # the next phase, as training would
    lfr-rewrite runs/x/checkpoints/step_00002000 --out /tmp/raw.npy lfr.score=raw    # the same with the paper's
                                                                                     # raw losses
    lfr-rewrite CKPT --phase 3 --drop 0.6 --out /tmp/p3.npy lfr.temperature=2        # any phase, any settings

The result is byte-identical to what training writes for the same inputs (same code path), so it is
also how to try selection settings on a real loss table without training.
"""

from __future__ import annotations

import dataclasses
import sys
from collections.abc import Sequence
from pathlib import Path

from lfr_ds.config import config_from_dict, load_config
from lfr_ds.data.blend import Blend, BlendView, blend_spec
from lfr_ds.errors import ArgumentParser, UserError, cli
from lfr_ds.identity import check_fits, dataset_digest
from lfr_ds.lfr.loss_table import LossTable
from lfr_ds.lfr.rewriter import Rewriter
from lfr_ds.resources import out_of_disk, out_of_memory
from lfr_ds.run_state import ARRAYS_FILE, STATE_FILE, RunState
from lfr_ds.safe_load import load_arrays


def load_checkpoint_state(path: str) -> tuple[RunState, LossTable]:
    """``(state, loss table)`` of an lfr-ds checkpoint directory, without DeepSpeed or a model."""
    if not (Path(path) / STATE_FILE).is_file() or not (Path(path) / ARRAYS_FILE).is_file():
        raise UserError(
            f"{path}: not an lfr-ds checkpoint (no {STATE_FILE}); give a step_* directory under RUN_DIR/checkpoints"
        )
    state = RunState.read(path)
    table = LossTable.from_arrays(load_arrays(Path(path) / ARRAYS_FILE))
    return state, table


@cli
def main(argv: Sequence[str] | None = None) -> int:
    p = ArgumentParser(
        prog="lfr-rewrite", description="Write a phase's sample index offline from a checkpoint's loss table."
    )
    p.add_argument("checkpoint", help="a RUN_DIR/checkpoints/step_* directory")
    p.add_argument("--out", "-o", required=True, help="the .npy to write (its .json manifest goes next to it)")
    p.add_argument(
        "--phase", type=int, help="schedule phase index (default: the first phase starting at or after the checkpoint)"
    )
    p.add_argument("--drop", type=float, help="override the phase's drop fraction (focus)")
    p.add_argument("--data", help="dataset prefix or blend (default: the checkpoint config's data.path)")
    p.add_argument("overrides", nargs="*", help="lfr.* settings as key=value, e.g. lfr.score=raw lfr.temperature=2")
    args = p.parse_intermixed_args(argv)  # key=value overrides may follow options

    state, table = load_checkpoint_state(args.checkpoint)
    try:
        cfg = config_from_dict(state.config)
    except UserError as e:
        raise UserError(f"{args.checkpoint}/{STATE_FILE}: the run's config is not valid here ({e})") from None
    if args.overrides:
        bad = [o for o in args.overrides if not o.startswith("lfr.")]
        if bad:
            raise UserError(f"override {bad[0]!r}: only lfr.* settings change a rewrite")
        cfg = dataclasses.replace(
            cfg, lfr=load_config(None, [f"data.path={blend_spec(cfg.data.path)}", *args.overrides]).lfr
        )
    phases = state.schedule
    if args.phase is None:
        later = [ph for ph in phases if ph.start >= state.step]
        if not later:
            raise UserError(f"{args.checkpoint}: the run ends at step {state.step}, no phase left; pass --phase")
        phase = later[0]
    elif 0 <= args.phase < len(phases):
        phase = phases[args.phase]
    else:
        raise UserError(f"--phase {args.phase}: the schedule has phases 0..{len(phases) - 1}")
    if args.drop is not None:
        if not 0 <= args.drop < 1:
            raise UserError(f"--drop {args.drop}: must be in [0, 1)")
        phase = dataclasses.replace(phase, drop=args.drop, auto_drop=False)
    out = Path(args.out)
    if out.suffix != ".npy" or not out.parent.is_dir():
        raise UserError(f"--out {out}: must be a .npy path in an existing directory")

    dataset = Blend(args.data or cfg.data.path, "--data")
    check_fits(Path(args.checkpoint), state, {"data.path": dataset_digest(dataset)}, flags={"data.path": "--data"})
    rewriter = Rewriter.for_run(cfg, dataset, BlendView(dataset, cfg.model.seq_length, cfg.data.seed))
    with out_of_memory(
        "ranking and clustering the blocks",
        f"lower lfr.centroids (now {cfg.lfr.centroids}), or run lfr-rewrite on a machine with more memory",
    ):
        built = rewriter.build(phase, table)
    with out_of_disk(out.parent, "--out"):
        manifest = rewriter.write(out, built)
    print(
        f"wrote {out}: {phase.name}, {manifest.length:,} samples, "
        f"kept {manifest.kept:,} of {manifest.num_blocks:,} blocks",
        file=sys.stderr,
    )
    return 0
