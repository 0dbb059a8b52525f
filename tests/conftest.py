"""Shared test setup: single-threaded deterministic torch for the package tests, and nbval
settings for the notebook regression (pytest --nbval-lax ... tests/nb_reference)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

# Before torch is imported anywhere: CPU results depend on the thread count (pytorch#88718).
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")

import torch

NB_REFERENCE = Path(__file__).parent / "nb_reference"


def pytest_configure(config):
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True, warn_only=True)
    if getattr(config.option, "nbval_lax", False) or getattr(config.option, "nbval", False):
        # The reference notebooks write to nb_reference/_results; start from nothing, as the
        # reference run did (a leftover checkpoint would be loaded instead of trained).
        shutil.rmtree(NB_REFERENCE / "_results", ignore_errors=True)


def pytest_collectstart(collector):
    # nbval compares stderr and HTML by default: warnings and pandas' HTML are not regressions.
    path = str(getattr(collector, "path", ""))
    if hasattr(collector, "skip_compare") and path.endswith(".ipynb"):
        collector.skip_compare += ("text/html", "application/javascript", "stderr")
