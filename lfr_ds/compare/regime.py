"""The regime of a comparison: parameters, tokens a pass, passes, tokens per parameter.

A finding at 0.25 tokens per parameter says nothing about 20: pruning pays when data is abundant relative to the
model, not when it is scarce (Sorscher et al. 2022, "Beyond neural scaling laws"), and this project's LFR lost to
random at 0.25 and beat it at 45 (docs/lfr.md). So the plan line, results.json and results.md all carry it.
"""

from __future__ import annotations

import dataclasses

from lfr_ds.config import ModelConfig


def of(model: ModelConfig, vocab_size: int, tokens_per_pass: int, passes: float) -> dict:
    """Parameters are all of them, the (tied) embedding included, at the padded vocabulary; a pass is every training
    block once, and ``passes`` is the full budget's."""
    n = dataclasses.replace(model, vocab_size=vocab_size).num_parameters
    return {
        "parameters": n,
        "tokens_per_pass": tokens_per_pass,
        "passes": passes,
        "tokens_per_parameter_pass": tokens_per_pass / n,
        "tokens_per_parameter": passes * tokens_per_pass / n,
    }


def line(r: dict) -> str:
    return (
        f"{r['parameters']:,} parameters; {r['tokens_per_pass']:,} tokens a pass x {r['passes']:.2f} passes: "
        f"{r['tokens_per_parameter_pass']:.3g} tokens per parameter a pass, {r['tokens_per_parameter']:.3g} in all"
    )
