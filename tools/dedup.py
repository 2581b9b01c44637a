#!/usr/bin/env python
"""Find exact and near-duplicate documents (same as the ``lfr-dedup`` console script)."""

import sys

from lfr_ds.data.dedup import main

if __name__ == "__main__":
    sys.exit(main())
