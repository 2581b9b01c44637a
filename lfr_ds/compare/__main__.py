import sys

from lfr_ds.compare.cli import main

sys.exit(main())
