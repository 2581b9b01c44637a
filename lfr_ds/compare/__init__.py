"""``lfr-compare``: the experiment that decides whether LFR is worth turning on.

:mod:`~lfr_ds.compare.cli` (the command and its plan), :mod:`~lfr_ds.compare.corpus` (the data, built
once per comparison), :mod:`~lfr_ds.compare.runs` (launching, reusing and reading runs),
:mod:`~lfr_ds.compare.stats` (paired differences and token ratios), :mod:`~lfr_ds.compare.report`
(tables and plot).
"""
