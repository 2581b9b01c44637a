"""``lfr-compare``: the experiment that decides whether LFR is worth turning on (see :mod:`lfr_ds.compare.cli`)."""

from lfr_ds.compare.cli import PRESETS, main

__all__ = ["PRESETS", "main"]
