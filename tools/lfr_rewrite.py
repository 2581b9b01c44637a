#!/usr/bin/env python3
"""Thin front end; the logic (and its tests) live in lfr_ds.lfr.offline. Same as the console script."""

import sys

from lfr_ds.lfr.offline import main

if __name__ == "__main__":
    sys.exit(main())
