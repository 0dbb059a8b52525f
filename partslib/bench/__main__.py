"""``python -m partslib.bench``: see :mod:`partslib.bench`."""

import sys

from partslib.bench.cli import main

sys.exit(main())
