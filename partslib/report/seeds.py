"""Several training seeds of one profile: the mean ± sd of every metric over the seeds.

A profile with ``seeds: [0, 1, 2]`` (:mod:`partslib.profiles`) runs once per seed into
``results/<profile>/seed-<n>/``; :func:`write_seed_summary` then writes, in
``results/<profile>/``:

* ``seeds.csv`` — one row per numeric metric: ``mean``, ``sd`` (sample standard deviation,
  ``ddof=1``; NaN with one seed), ``n`` (seeds with a finite value), ``min``, ``max`` and the
  value of each seed (``seed=<n>`` columns);
* ``metrics.json`` — ``<key>/mean`` and ``<key>/sd`` for every metric;
* ``seeds.md`` — the headline metrics (:data:`partslib.report.headline.TARGETS`) as
  ``mean ± sd`` in a Markdown table.

Earlier files of the same names are moved to ``previous/<time>/`` first (nothing is lost).
"""

from __future__ import annotations

import datetime as _dt
import math
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from partslib.io import atomic_write, write_json

__all__ = ["headline_rows", "seed_table", "seeds_markdown", "write_seed_summary"]

_OUTPUTS = ("seeds.csv", "seeds.md", "metrics.json")


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value)


def seed_table(runs: Mapping[int, Mapping[str, Any]]) -> pd.DataFrame:
    """Mean, sd, n, min, max and per-seed values of every numeric metric (index: metric key).

    Args:
        runs: ``{seed: merged metrics of that seed's run}``.
    """
    if not runs:
        raise ValueError("no runs to summarise: pass {seed: metrics} for at least one seed")
    numbers = {f"seed={s}": {k: x for k, x in ((k, _number(v)) for k, v in m.items())
                             if x is not None} for s, m in runs.items()}
    values = pd.DataFrame(numbers, dtype=float).sort_index()
    values = values.where(np.isfinite(values))  # inf counts as missing, like NaN
    table = pd.DataFrame({"mean": values.mean(axis=1), "sd": values.std(axis=1, ddof=1),
                          "n": values.count(axis=1), "min": values.min(axis=1),
                          "max": values.max(axis=1)})
    table = pd.concat([table, values], axis=1)
    table.index.name = "metric"
    return table


def headline_rows(table: pd.DataFrame) -> list[tuple[str, str, str, int]]:
    """The quality rows of the headline (in its order, the best mode beside the default rule)
    present in ``table``: ``(label, "mean ± sd", "min – max", n seeds)``."""
    from partslib.report.headline import BESIDE, TARGETS

    shown = []
    for target in TARGETS[:6]:
        shown += [target, *BESIDE.get(target.key, [])]
    rows = []
    for t in shown:
        key = next((k for k in (t.key, *t.older_keys) if k in table.index), None)
        if key is None:
            continue
        r = table.loc[key]
        sd = "–" if not math.isfinite(r["sd"]) else format(r["sd"], t.fmt)
        rows.append((t.label, f"{format(r['mean'], t.fmt)} ± {sd}",
                     f"{format(r['min'], t.fmt)} – {format(r['max'], t.fmt)}", int(r["n"])))
    return rows


def seeds_markdown(table: pd.DataFrame, seeds: list[int]) -> str:
    """The headline metrics as ``mean ± sd (n seeds)`` in a Markdown table."""
    rows = ["| what | mean ± sd | min – max | n |", "|---|---|---|---|"]
    rows += [f"| {label} | {ms} | {rng} | {n} |" for label, ms, rng, n in headline_rows(table)]
    return (f"Training seeds {seeds} (classifier, PDM, IBD, T2; the data are the same): "
            f"mean ± sample sd over the seeds.\n\n" + "\n".join(rows) + "\n")


def write_seed_summary(out_dir: str | Path, runs: Mapping[int, Mapping[str, Any]]
                       ) -> pd.DataFrame:
    """Write ``seeds.csv``, ``metrics.json`` and ``seeds.md`` to ``out_dir`` (see the module
    docstring); returns the table."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    old = [out / name for name in _OUTPUTS if (out / name).exists()]
    if old:
        keep = out / "previous" / _dt.datetime.now().strftime("%Y%m%d-%H%M%S")
        keep.mkdir(parents=True, exist_ok=True)
        for path in old:
            shutil.move(str(path), str(keep / path.name))
    table = seed_table(runs)
    with atomic_write(out / "seeds.csv") as tmp:
        table.to_csv(tmp)
    summary: dict[str, float | None] = {}
    for key, mean, sd in zip(table.index, table["mean"].tolist(), table["sd"].tolist()):
        summary[f"{key}/mean"] = mean if math.isfinite(mean) else None
        summary[f"{key}/sd"] = sd if math.isfinite(sd) else None
    write_json(out / "metrics.json", summary)
    with atomic_write(out / "seeds.md") as tmp:
        tmp.write_text(seeds_markdown(table, list(runs)))
    return table
