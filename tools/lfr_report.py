#!/usr/bin/env python3
"""Thin front end; the logic (and its tests) live in lfr_ds.report. Same as the console script lfr-report."""

import sys

from lfr_ds.report import main

if __name__ == "__main__":
    sys.exit(main())
