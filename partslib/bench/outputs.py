"""The benchmark's outputs: ``bench.json``, ``t4.csv`` and the text table."""

from __future__ import annotations

import csv
import os
from pathlib import Path
from typing import Any

from partslib.bench.timing import REFERENCE, _key

__all__ = ["format_table", "write_outputs"]


def _batch_of(payload: dict[str, Any], size: int) -> int:
    b = payload["batch"]
    return b if isinstance(b, int) else b[str(size)]


def _t4_rows(payload: dict[str, Any]) -> list[dict[str, Any]]:
    rows = []
    for size in payload["sizes"]:
        ref = payload["ms_per_batch"].get(_key(REFERENCE, size))
        for m in payload["methods"]:
            k = _key(m, size)
            ms = payload["ms_per_batch"][k]
            rows.append({"size": size, "method": m, "batch": _batch_of(payload, size),
                         "ms_per_batch": round(ms, 2),
                         "ms_per_batch_median": round(payload["ms_per_batch_median"][k], 2),
                         "images_per_s": round(payload["images_per_s"][k], 1),
                         "ratio_to_forward": None if ref is None else round(ms / ref, 3),
                         "cpu_ms_per_batch": round(payload["cpu_ms_per_batch"][k], 2),
                         "peak_rss_delta_mib": (
                             None if k not in payload["peak_rss_mib"]["per_method_delta"]
                             else round(payload["peak_rss_mib"]["per_method_delta"][k], 1))})
    return rows


def write_outputs(results_dir: str | os.PathLike, payload: dict[str, Any]) -> tuple[Path, Path]:
    """``bench.json`` and ``t4.csv`` in ``results_dir``; an existing pair becomes
    ``bench.previous.json`` / ``t4.previous.csv`` (never silently overwritten)."""
    from partslib.pipeline import write_json

    rd = Path(results_dir)
    rd.mkdir(parents=True, exist_ok=True)
    js, tc = rd / "bench.json", rd / "t4.csv"
    for path, prev in ((js, rd / "bench.previous.json"), (tc, rd / "t4.previous.csv")):
        if path.exists():
            os.replace(path, prev)
    write_json(js, payload)
    rows = _t4_rows(payload)
    tmp = tc.with_name(tc.name + ".tmp")
    with tmp.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    os.replace(tmp, tc)
    return js, tc


def format_table(payload: dict[str, Any]) -> str:
    """The T4 table and the ratios, as text."""
    batches = ", ".join(f"{_batch_of(payload, s)} at {s}px" for s in payload["sizes"])
    lines = [f"T4 cost: batch {batches}, {payload['threads']} threads, torch "
             f"{payload['torch']}, min of {payload['repeats']} interleaved repeats",
             f"{'size':>5} {'method':<17} {'ms/batch':>10} {'median':>10} {'img/s':>9} "
             f"{'x forward':>9} {'cpu ms':>9} {'peak MiB':>9}"]
    for r in _t4_rows(payload):
        ratio = "" if r["ratio_to_forward"] is None else f"{r['ratio_to_forward']:.2f}"
        mem = "" if r["peak_rss_delta_mib"] is None else f"{r['peak_rss_delta_mib']:.0f}"
        lines.append(f"{r['size']:>5} {r['method']:<17} {r['ms_per_batch']:>10.1f} "
                     f"{r['ms_per_batch_median']:>10.1f} {r['images_per_s']:>9.0f} {ratio:>9} "
                     f"{r['cpu_ms_per_batch']:>9.1f} {mem:>9}")
    lines.append("ratios: min wall time [median wall time] {min CPU time}")
    for k, v in payload.items():
        if "_vs_" in k and isinstance(v, float):
            lines.append(f"  {k:<42} {v:7.2f}  [{payload['ratios_median'][k]:.2f}] "
                         f"{{{payload['ratios_cpu'][k]:.2f}}}")
    for k, t in payload["targets"].items():
        lines.append(f"  target {k} {t['target']}: {'met' if t['met'] else 'NOT met'} "
                     f"({t['value']:.2f})")
    lines.append(f"process peak RSS: {payload['peak_rss_mib']['process']:.0f} MiB")
    return "\n".join(lines)
