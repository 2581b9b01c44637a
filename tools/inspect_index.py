#!/usr/bin/env python3
"""Thin front end; the logic (and its tests) live in lfr_ds.lfr.inspect_index. Same as the console script."""

import sys

from lfr_ds.lfr.inspect_index import main

if __name__ == "__main__":
    sys.exit(main())
