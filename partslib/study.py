"""Former name of the study runner: ``python -m partslib.study`` runs :mod:`partslib.runner`."""

from __future__ import annotations

import sys

from partslib.runner import main

if __name__ == "__main__":
    sys.exit(main())
