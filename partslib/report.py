"""The study's report: headline numbers against the targets, tables T1–T4, and the README block.

``python -m partslib.report --profile default --readme`` rewrites the block between the
``<!-- headline:begin -->`` and ``<!-- headline:end -->`` markers of README.md from
``results/<profile>/metrics.json``, so the README's numbers are the run's numbers.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pandas as pd

__all__ = ["TARGETS", "load_run", "targets_table", "headline_markdown", "update_readme",
           "export_html"]

BEGIN, END = "<!-- headline:begin -->", "<!-- headline:end -->"

# (label, metric key in results/<profile>/metrics.json, comparison, target, format)
TARGETS: list[tuple[str, str, str, float, str]] = [
    ("classifier test accuracy", "classifier/test_accuracy", ">=", 0.97, ".3f"),
    ("PDM part mIoU (test)", "pdm/miou", ">=", 0.90, ".3f"),
    ("PDM mIoU minus IBD linear maps", "baselines/pdm_minus_ibd_miou", ">=", 0.30, ".3f"),
    ("completeness, max relative error", "explanations/completeness_max_rel_error", "<=", 1e-4,
     ".1e"),
    ("decisive-part accuracy, best PDM mode", "validity/best_pdm_decisive", ">=", 0.90, ".3f"),
    ("part-removal Spearman, PDM-region vs re-render", "validity/pdm-region-soft/rerender/spearman",
     ">=", 0.70, ".3f"),
    ("PDM-region cost / classifier forward (batch 64)",
     "benchmark/pdm-region-soft_vs_forward@64", "<=", 2.0, ".2f"),
    ("PDM-region cost / pytorch-grad-cam GradCAM", "benchmark/pdm-region-soft_vs_gradcam@64", "<",
     1.0, ".2f"),
    ("whole study wall time, minutes", "study/total_minutes", "<=", 10.0, ".1f"),
]


def load_run(run_dir: str | Path) -> dict[str, Any]:
    """Merged metrics of a run folder, plus ``study/total_minutes`` from its timings."""
    run_dir = Path(run_dir)
    metrics = json.loads((run_dir / "metrics.json").read_text())
    timings_path = run_dir / "timings.json"
    if timings_path.exists():
        t = json.loads(timings_path.read_text())
        if t.get("total_seconds") is not None and not t.get("only"):
            metrics["study/total_minutes"] = t["total_seconds"] / 60
        metrics.update({f"study/stage_seconds/{k}": v for k, v in t.get("stages", {}).items()})
    return metrics


def _met(value: float, op: str, target: float) -> bool:
    return {">=": value >= target, "<=": value <= target, "<": value < target}[op]


def targets_table(metrics: Mapping[str, Any]) -> pd.DataFrame:
    """One row per target of SPEC §8: measured value, target, and whether it is met."""
    rows = []
    for label, key, op, target, fmt in TARGETS:
        value = metrics.get(key)
        ok = None
        if isinstance(value, (int, float)) and not math.isnan(value):
            ok = _met(float(value), op, target)
            shown = format(float(value), fmt)
        else:
            shown = "not measured"
        rows.append({"what": label, "measured": shown, "target": f"{op} {target:g}",
                     "met": {True: "yes", False: "no", None: "–"}[ok], "key": key})
    return pd.DataFrame(rows)


def headline_markdown(metrics: Mapping[str, Any], profile: str) -> str:
    table = targets_table(metrics)
    lines = [f"Profile `{profile}` — measured by `scripts/study.sh {profile}` "
             f"(`results/{profile}/metrics.json`, report `results/{profile}/report.html`):", "",
             "| what | measured | target | met |", "|---|---|---|---|"]
    for r in table.itertuples():
        lines.append(f"| {r.what} | {r.measured} | {r.target} | {r.met} |")
    return "\n".join(lines)


def update_readme(readme: str | Path, metrics: Mapping[str, Any], profile: str) -> bool:
    """Rewrite the headline block of the README; returns whether the file changed."""
    readme = Path(readme)
    text = readme.read_text()
    if BEGIN not in text or END not in text:
        raise ValueError(f"{readme} has no {BEGIN} ... {END} block to rewrite")
    head, rest = text.split(BEGIN, 1)
    _, tail = rest.split(END, 1)
    new = f"{head}{BEGIN}\n{headline_markdown(metrics, profile)}\n{END}{tail}"
    if new != text:
        readme.write_text(new)
    return new != text


def export_html(notebook: str | Path, out: str | Path, hide_code: bool = True) -> Path:
    """Export an executed notebook to a standalone HTML file (figures embedded)."""
    import nbformat
    from nbconvert import HTMLExporter

    nb = nbformat.read(str(notebook), as_version=4)
    exporter = HTMLExporter(exclude_input=hide_code, exclude_input_prompt=True,
                            exclude_output_prompt=True)
    body, _ = exporter.from_notebook_node(nb)
    out = Path(out)
    out.write_text(body)
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="Headline numbers of a study run against the targets")
    ap.add_argument("--profile", default="default")
    ap.add_argument("--results", default="results")
    ap.add_argument("--readme", action="store_true", help="rewrite README.md's headline block")
    args = ap.parse_args(argv)
    run_dir = Path(args.results) / args.profile
    if not (run_dir / "metrics.json").exists():
        print(f"error: {run_dir / 'metrics.json'} not found: run scripts/study.sh "
              f"{args.profile} first", file=sys.stderr)
        return 1
    metrics = load_run(run_dir)
    print(targets_table(metrics).drop(columns="key").to_string(index=False))
    if args.readme:
        changed = update_readme(Path("README.md"), metrics, args.profile)
        print("README.md " + ("updated" if changed else "already up to date"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
