"""The study's headline: what a run folder holds, its wall time, and the targets of SPEC §8.

``python -m partslib.report --profile default --readme`` rewrites the block between the
``<!-- headline:begin -->`` and ``<!-- headline:end -->`` markers of README.md from
``results/<profile>/metrics.json``, so the README's numbers are the run's numbers.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from partslib.io import atomic_write, merge_metrics, read_json
from partslib.report.tables import OPERATOR_LABELS

__all__ = [
    "BESIDE",
    "TARGETS",
    "Run",
    "Target",
    "headline_markdown",
    "headline_table",
    "load_run",
    "read_run",
    "targets_table",
    "update_readme",
    "wall_time",
]

BEGIN, END = "<!-- headline:begin -->", "<!-- headline:end -->"


@dataclass(frozen=True)
class Target:
    """One row of the headline: a metric key of ``metrics.json`` against a target."""
    label: str
    key: str
    op: str  # ">=", "<=" or "<"
    target: float
    fmt: str
    meaning: str  # one plain line: what the number is
    older_keys: tuple[str, ...] = ()  # the same number under the key of runs made before

    def value(self, metrics: Mapping[str, Any]) -> Any:
        """The metric under :attr:`key`, else under the first of :attr:`older_keys` present."""
        for key in (self.key, *self.older_keys):
            if key in metrics:
                return metrics[key]
        return None


TARGETS: list[Target] = [
    Target("classifier test accuracy", "classifier/test_accuracy", ">=", 0.97, ".3f",
           "share of the test images the classifier labels correctly"),
    Target("PDM part mIoU (test), PDM with the image step", "pdm/miou", ">=", 0.90, ".3f",
           "overlap of the default PDM's part maps with the true part masks (mean IoU, "
           "background included); this PDM also reads the raw image in a full-resolution step"),
    Target("PDM mIoU minus IBD linear maps", "baselines/pdm_minus_ibd_miou", ">=", 0.30, ".3f",
           "how much better the PDM segments parts than IBD's linear concept maps on the same "
           "features"),
    Target("completeness, max relative error", "explanations/completeness_max_rel_error", "<=",
           1e-4, ".1e", "default (amortised) and region rules: bias + the parts' contributions "
                        "give back the logit; the worst relative error"),
    Target("decisive-part accuracy, default rule (amortised)",
           "validity/pdm-amortised/rerender/decisive", ">=", 0.95, ".3f",
           "share of images whose top-ranked part by the default rule defines the class; the "
           "ceiling is the share the re-render effects themselves reach"),
    Target("part-removal Spearman, default rule (amortised) vs re-render",
           "validity/pdm-amortised/rerender/spearman", ">=", 0.85, ".3f",
           "rank agreement of the default rule's part contributions with the logit drop when "
           "the image is re-rendered without each part"),
    Target("default rule (amortised) cost / classifier forward (batch 64)",
           "benchmark/pdm-amortised_vs_forward@64", "<=", 2.0, ".2f",
           "time of one default explanation over one plain forward pass of the classifier"),
    Target("PDM-region cost / pytorch-grad-cam GradCAM",
           "benchmark/pdm-region-soft_vs_gradcam@64", "<", 1.0, ".2f",
           "time of one PDM-region explanation over one pytorch-grad-cam GradCAM map",
           ("benchmark/pdm_region_vs_gradcam@64",)),
    Target("whole study wall time, minutes", "study/total_minutes", "<=", 10.0, ".1f",
           "the whole study, from data generation to this report, on the machine above"),
]

# Rows shown right after the target they qualify, and not counted in the study's totals: the
# paper's region rule beside the default rule, and the best PDM mode (chosen after the fact)
# beside the default rule's decisive-part accuracy, never in its place, each against the
# ceiling of its own removal operator.
BESIDE: dict[str, list[Target]] = {
    "pdm/miou": [Target(
        "PDM part mIoU (test), features only", "pdm/features_only/miou", ">=", 0.90, ".3f",
        "the same decoder without the image step: it reads the classifier's features only, "
        "as the paper's PDM and IBD's maps do")],
    "validity/pdm-amortised/rerender/decisive": [Target(
        "decisive-part accuracy, region rule (the paper's)",
        "validity/pdm-region-soft/rerender/decisive", ">=", 0.95, ".3f",
        "the same share for the paper's rule (CAM x PDM part probabilities), the default "
        "before the amortised rule"), Target(
        "decisive-part accuracy, best PDM mode", "validity/best_pdm_decisive", ">=", 0.95,
        ".3f", "the same share for the PDM rule that scores best (chosen after the fact); its "
               "ceiling is that of the removal operator its claim is made with")],
    "validity/pdm-amortised/rerender/spearman": [Target(
        "part-removal Spearman, region rule (the paper's) vs re-render",
        "validity/pdm-region-soft/rerender/spearman", ">=", 0.85, ".3f",
        "the same agreement for the paper's region rule")],
    "benchmark/pdm-amortised_vs_forward@64": [Target(
        "PDM-region cost / classifier forward (batch 64)",
        "benchmark/pdm-region-soft_vs_forward@64", "<=", 2.0, ".2f",
        "time of one PDM-region explanation over one plain forward pass of the classifier",
        ("benchmark/pdm_region_vs_forward@64",))],
}


def _ceiling(t: Target, metrics: Mapping[str, Any]) -> tuple[float | None, str, str]:
    """The ceiling of a decisive-part row under the same removal operator: (value, operator,
    method), from the run's T2 keys; (None, "", "") for other rows."""
    parts = t.key.split("/")
    if t.key == "validity/best_pdm_decisive":
        mode = metrics.get("validity/best_pdm_mode")
        if not isinstance(mode, str):
            return None, "", ""
        op = metrics.get("validity/best_pdm_operator")
        if not isinstance(op, str):  # a run made before the key: the registry's operator
            from partslib.studies.validity_text import own_operator

            op = own_operator(mode)
        return _number(metrics.get(f"validity/{mode}/{op}/decisive_ceiling")), op, mode
    if len(parts) == 4 and parts[0] == "validity" and parts[3] == "decisive":
        return _number(metrics.get(f"{t.key}_ceiling")), parts[2], parts[1]
    return None, "", ""


@dataclass(frozen=True)
class Run:
    """What a run folder holds, read once: merged metrics, timings, and where they come from."""
    path: Path
    profile: str
    metrics: dict[str, Any]
    timings: dict[str, Any] | None
    wall_minutes: float | None
    wall_note: str  # how the wall time was measured, or why it was not
    notes: list[str] = field(default_factory=list)


def wall_time(timings: Mapping[str, Any] | None) -> tuple[float | None, str]:
    """The whole study's wall time in minutes from ``timings.json``, or None and the reason."""
    if timings is None:
        return None, "not measured: the run folder has no timings.json (notebooks run by hand)"
    stages = timings.get("stages") or {}
    status = timings.get("status")
    if status == "running":
        planned = timings.get("notebooks") or []
        done = f"{len(stages)} of {len(planned)}" if planned else f"{len(stages)}"
        return None, (f"not measured yet: the study was running when this was rendered "
                      f"({done} stages done, {timings.get('elapsed_seconds', 0) / 60:.1f} min "
                      f"so far); the runner renders the report again after the last stage")
    if status in ("failed", "interrupted"):
        return None, f"not measured: the run {status} in {timings.get('failed', '?')}"
    if timings.get("only"):
        return None, (f"not measured: only {', '.join(timings['only'])} ran (--only); the other "
                      f"stages' times come from an earlier run")
    total = timings.get("total_seconds")
    if total is None:
        return None, "not measured: timings.json has no total"
    started = str(timings.get("started", "?")).replace("T", " ")
    return total / 60, f"all {len(stages)} stages, from data generation to the report, " \
                       f"started {started}"


def read_run(run_dir: str | Path) -> Run:
    """Read a run folder: ``metrics.json`` as the runner merged it (or, for notebooks run
    without the runner, the stage folders' metrics merged the same way), ``timings.json``,
    and the wall time, added to the metrics as ``study/total_minutes`` when measured."""
    run_dir = Path(run_dir)
    notes = []
    metrics = read_json(run_dir / "metrics.json")
    timings = read_json(run_dir / "timings.json")
    stages = sorted(p.parent.name for p in run_dir.glob("*/metrics.json"))
    in_folders, _ = merge_metrics(run_dir, stages)
    # a notebook rerun by hand after the runner merged leaves metrics.json behind its folder
    stale = sorted({k.split("/", 1)[0] for k, v in in_folders.items()
                    if metrics is not None and k in metrics and metrics[k] != v
                    and v == v})  # v == v: NaN equals nothing
    if metrics is None or stale:
        metrics = in_folders
        why = (f"the runner's metrics.json differs from what {', '.join(stale)} wrote since "
               f"(a notebook rerun by hand)" if stale else "no metrics.json from the runner")
        notes.append(f"{why}: the stage folders' metrics were merged for this report")
    minutes, note = wall_time(timings)
    if minutes is not None:
        metrics["study/total_minutes"] = minutes
    if timings:
        metrics.update({f"study/stage_seconds/{k}": v
                        for k, v in (timings.get("stages") or {}).items()})
    profile = (timings or {}).get("profile") or run_dir.name
    return Run(run_dir, profile, metrics, timings, minutes, note, notes)


def load_run(run_dir: str | Path) -> dict[str, Any]:
    """Merged metrics of a run folder, plus ``study/total_minutes`` and
    ``study/stage_seconds/<notebook>`` from its timings."""
    return read_run(run_dir).metrics


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return None if math.isnan(value) else float(value)


def _row(t: Target, metrics: Mapping[str, Any], counted: bool) -> dict[str, Any]:
    value = _number(t.value(metrics))
    ok = None
    if value is not None:
        ok = {">=": value >= t.target, "<=": value <= t.target, "<": value < t.target}[t.op]
    ceiling, op, method = _ceiling(t, metrics)
    label = t.label
    if t.key == "validity/best_pdm_decisive" and method:
        label = f"{label} ({method})"
    return {"what": label, "measured": "not measured" if value is None else format(value, t.fmt),
            "ceiling": "" if ceiling is None else
                       f"{ceiling:{t.fmt}} ({OPERATOR_LABELS.get(op, op)})",
            "target": f"{t.op} {t.target:g}", "met": {True: "yes", False: "no", None: "–"}[ok],
            "key": t.key, "value": value, "meaning": t.meaning, "counted": counted}


def targets_table(metrics: Mapping[str, Any]) -> pd.DataFrame:
    """One row per target of SPEC §8 (what, measured, target, met, key): the rows the study's
    totals count."""
    cols = ("what", "measured", "target", "met", "key")
    return pd.DataFrame([{c: _row(t, metrics, True)[c] for c in cols} for t in TARGETS])


def headline_table(metrics: Mapping[str, Any]) -> pd.DataFrame:
    """The targets with the rows of :data:`BESIDE` right after the ones they qualify; columns of
    :func:`targets_table` plus ``ceiling`` (a decisive-part row's ceiling under the same
    removal operator, with the operator, else ""), ``value`` (float or None), ``meaning`` and
    ``counted``."""
    rows = []
    for t in TARGETS:
        rows.append(_row(t, metrics, True))
        rows += [_row(b, metrics, False) for b in BESIDE.get(t.key, [])]
    return pd.DataFrame(rows)


def headline_markdown(metrics: Mapping[str, Any], profile: str) -> str:
    """The README's headline block: one Markdown table of :func:`headline_table`."""
    table = headline_table(metrics)
    lines = [f"Profile `{profile}` — measured by `scripts/study.sh {profile}` "
             f"(`results/{profile}/metrics.json`, report `results/{profile}/report.html`):", "",
             "| what | measured | ceiling, same operator | target | met |",
             "|---|---|---|---|---|"]
    for r in table.to_dict("records"):
        met = r["met"] if r["counted"] else f"{r['met']} (beside, not counted)"
        lines.append(f"| {r['what']} | {r['measured']} | {r['ceiling']} | {r['target']} | "
                     f"{met} |")
    lines += ["", "Each decisive-part accuracy stands beside the ceiling of the same removal "
                  "operator: the share of images for which the measured effects of that "
                  "operator themselves rank a decisive part first."]
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
        with atomic_write(readme) as tmp:
            tmp.write_text(new)
    return new != text
