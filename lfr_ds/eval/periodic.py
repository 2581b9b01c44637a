"""Evaluation inside the training loop: the held-out loss (per source) and BLiMP, on every rank.

Every rank runs the same forward passes (ZeRO-3 gathers parameters collectively in each one); the
held-out sums are all-reduced, BLiMP is small enough to score whole on each rank.
"""

from __future__ import annotations

import os
from collections.abc import Callable

import torch

from lfr_ds.config import EvalConfig
from lfr_ds.data.blend import blend_prefixes
from lfr_ds.data.tokenizer import Tokenizer
from lfr_ds.errors import UserError
from lfr_ds.eval.perplexity import heldout_loss, is_raw_text, load_heldout
from lfr_ds.eval.zeroshot import evaluate_blimp, load_blimp


def check_eval_paths(cfg: EvalConfig) -> None:
    """The evaluation inputs exist. Called before any process group starts; their contents are read after."""
    valid = cfg.valid_path
    raw = isinstance(valid, str) and is_raw_text(valid)
    for path in [valid] if raw else blend_prefixes(valid, "eval.valid_path") if valid else []:
        if not os.path.isfile(path if raw else path + ".idx"):
            raise UserError(
                f"eval.valid_path: {path} not found; give a .jsonl/.txt file or a dataset prefix (PREFIX.idx)"
            )
    if cfg.blimp and not os.path.exists(cfg.blimp):
        raise UserError(f"eval.blimp: {cfg.blimp} not found; give BLiMP's directory or one of its .jsonl files")


class PeriodicEval:
    """Loads the evaluation data once; :meth:`run` scores the model on it."""

    def __init__(
        self,
        cfg: EvalConfig,
        *,
        tokenizer: Tokenizer | None,
        seq_length: int,
        seed: int,
        micro_batch_size: int,
        rank: int,
        barrier: Callable[[], None],
    ) -> None:
        self.cfg = cfg
        self.seq_length = seq_length
        self.micro_batch_size = micro_batch_size
        self.tokenizer = tokenizer
        if tokenizer is None and (cfg.blimp or (isinstance(cfg.valid_path, str) and is_raw_text(cfg.valid_path))):
            raise UserError("eval: scoring text needs the run's tokenizer; set data.tokenizer")
        self.heldout = None
        if cfg.valid_path:
            self.heldout = load_heldout(
                cfg.valid_path,
                seq_length,
                tokenizer=tokenizer,
                max_blocks=cfg.valid_blocks,
                seed=seed,
                rank=rank,
                barrier=barrier,
            )
        self.blimp = None
        if cfg.blimp:
            self.blimp = {name: pairs[: cfg.blimp_pairs] for name, pairs in load_blimp([cfg.blimp]).items()}

    @property
    def enabled(self) -> bool:
        return self.heldout is not None or self.blimp is not None

    def due(self, step: int, last: int) -> bool:
        return self.enabled and (step == last or bool(self.cfg.interval and step % self.cfg.interval == 0))

    @torch.no_grad()
    def run(self, model: torch.nn.Module) -> dict:
        results: dict = {}
        if self.heldout is not None:
            results["valid"] = heldout_loss(model, self.heldout, micro_batch_size=self.micro_batch_size)
        if self.blimp is not None:
            blimp = evaluate_blimp(
                model, self.tokenizer, self.blimp, seq_length=self.seq_length, batch_size=self.micro_batch_size * 4
            )
            results["blimp"] = {"acc": blimp["acc"], "acc_mean": blimp["acc_mean"]}
        return results
