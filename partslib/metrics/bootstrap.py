"""Per-image bootstrap intervals of mean scores (T2's Spearman, decisive-part accuracy, top
part): resample the images with replacement, take the mean ignoring NaN, read the percentiles.

The resamples depend only on ``seed`` and the number of images, so methods scored on the same
images are resampled the same way (paired), and a run is reproducible.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence

import numpy as np
import pandas as pd

__all__ = ["BOOTSTRAP_RESAMPLES", "bootstrap_interval", "bootstrap_intervals"]

BOOTSTRAP_RESAMPLES = 1000


def _check(n_resamples: int, level: float) -> None:
    if isinstance(n_resamples, bool) or not isinstance(n_resamples, (int, np.integer)) \
            or n_resamples < 1:
        raise ValueError(f"n_resamples must be a positive int, got {n_resamples!r}")
    if not 0.0 < float(level) < 1.0:
        raise ValueError(f"level must lie strictly between 0 and 1, got {level!r}")


def bootstrap_interval(values: Sequence[float] | np.ndarray, n_resamples: int = BOOTSTRAP_RESAMPLES,
                       level: float = 0.95, seed: int = 0) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean of per-image ``values`` (NaN ignored, as in
    T2's means).

    Args:
        values: one score per image (NaN: not defined for that image).
        n_resamples: bootstrap resamples of the images.
        level: coverage of the interval (0.95: the 2.5th and 97.5th percentiles).
        seed: of ``numpy.random.default_rng``; the resamples depend only on it and
            ``len(values)``.

    Returns:
        ``(lo, hi)``; ``(nan, nan)`` when no value is finite. Resamples holding no finite
        value are left out of the percentiles.
    """
    _check(n_resamples, level)
    v = np.asarray(values, dtype=np.float64).reshape(-1)
    if not np.isfinite(v).any():
        return math.nan, math.nan
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(v), size=(int(n_resamples), len(v)))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # a resample of NaN only
        means = np.nanmean(v[idx], axis=1)
    means = means[np.isfinite(means)]
    alpha = (1.0 - float(level)) / 2.0
    lo, hi = np.quantile(means, [alpha, 1.0 - alpha])
    return float(lo), float(hi)


def bootstrap_intervals(per_image: pd.DataFrame, by: Sequence[str], columns: Sequence[str],
                        n_resamples: int = BOOTSTRAP_RESAMPLES, level: float = 0.95,
                        seed: int = 0) -> pd.DataFrame:
    """:func:`bootstrap_interval` of each of ``columns`` for each group of ``per_image``.

    Args:
        per_image: one row per (group, image), e.g. T2's ``per_image.csv``.
        by: the columns naming a group (``["method", "operator"]``).
        columns: the per-image scores to bound.

    Returns:
        One row per group: the ``by`` columns, then ``<column>_lo`` and ``<column>_hi``.
    """
    missing = [c for c in (*by, *columns) if c not in per_image.columns]
    if missing:
        raise ValueError(f"per_image has no column(s) {missing}; it has "
                         f"{list(per_image.columns)}")
    rows = []
    for key, group in per_image.groupby(list(by), sort=False):
        keys = key if isinstance(key, tuple) else (key,)
        row = dict(zip(by, keys, strict=True))
        for c in columns:
            lo, hi = bootstrap_interval(group[c].to_numpy(dtype=np.float64), n_resamples,
                                        level, seed)
            row[f"{c}_lo"], row[f"{c}_hi"] = lo, hi
        rows.append(row)
    cols = [*by, *(f"{c}_{s}" for c in columns for s in ("lo", "hi"))]
    return pd.DataFrame(rows, columns=cols)
