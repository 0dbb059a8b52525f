"""HTML tables of the report: the T2 method x operator matrix, T1 and T4 compact, small helpers.

Every function returns an HTML fragment (a string). Missing values are shown as "–" and
explained in a footnote; nothing prints "nan".
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from html import escape
from typing import Any

import pandas as pd

__all__ = [
    "BENCH_LABELS",
    "DASH",
    "DEFAULT_RULE",
    "OPERATOR_LABELS",
    "fmt",
    "html_table",
    "method_label",
    "t1_compact",
    "t2_details",
    "t2_matrix",
    "t4_compact",
]

DASH = "–"

# The benchmark's references, and its explainers under the names of runs made before the
# method registry (partslib.explain.registry) named them.
BENCH_LABELS = {"forward": "classifier forward (reference)",
                "gradcam": "Grad-CAM (pytorch-grad-cam)",
                "captum_occlusion": "Captum occlusion of PDM parts",
                "pdm_region": "pdm-region-soft", "pdm_occlusion": "pdm-occlusion"}
DEFAULT_RULE = "pdm-region-soft"


def method_label(name: str) -> str:
    """The display name of a T2 or T4 method: the registry's, else the benchmark's."""
    from partslib.explain.registry import REGISTRY

    name = BENCH_LABELS.get(name, name) if name not in REGISTRY else name
    entry = REGISTRY.get(name)
    return entry.display if entry is not None else name.replace("_", " ")
OPERATOR_LABELS = {"rerender": "re-render", "mean": "mean fill", "blur": "blur",
                   "road": "ROAD"}
OPERATOR_NOTES = {"rerender": "exact: the image drawn again without the part",
                  "mean": "part filled with the image mean", "blur": "Gaussian blur, k 11, σ 5",
                  "road": "noisy linear imputation"}


def _missing(value: Any) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value)) or value is pd.NA


def fmt(value: Any, spec: str = ".3f") -> str:
    """A number formatted with ``spec``, or "–" for None/NaN; other values as text."""
    if _missing(value):
        return DASH
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        text = format(value, spec)
        return text[1:] if text.startswith("-") and float(text) == 0 else text  # no "-0.00"
    return escape(str(value))


def _shade(score: float | None, hue: int = 145) -> str:
    """A background colour for a score in [0, 1] (None or NaN: none; below 0: light red)."""
    if score is None or math.isnan(score):
        return ""
    if score < 0:
        return "background:hsl(5 70% 92%)"
    light = 97 - 42 * min(score, 1.0)
    return f"background:hsl({hue} 45% {light:.0f}%)"


def html_table(df: pd.DataFrame, formats: dict[str, str] | None = None,
               cls: str = "compact", head: Sequence[str] | None = None) -> str:
    """A plain table of ``df`` without its index: numbers rounded by ``formats`` (column ->
    format spec, default ".3f"), missing values "–"."""
    formats = formats or {}
    head = list(head or df.columns)
    rows = ["<tr>" + "".join(f"<th>{escape(str(h))}</th>" for h in head) + "</tr>"]
    for rec in df.itertuples(index=False):
        cells = []
        for col, v in zip(df.columns, rec, strict=True):
            num = isinstance(v, (int, float)) and not isinstance(v, bool)
            cells.append(f"<td class='{'num' if num else 'txt'}'>"
                         f"{fmt(v, formats.get(col, '.3f'))}</td>")
        rows.append("<tr>" + "".join(cells) + "</tr>")
    return f"<table class='{cls}'>" + "".join(rows) + "</table>"


def _ordered(values: Iterable[str]) -> list[str]:
    return list(dict.fromkeys(values))


def _interval(r: dict[str, Any], col: str) -> str:
    """`` [lo, hi]`` of the row's bootstrap interval for ``col``, if the run has one."""
    lo, hi = r.get(f"{col}_lo"), r.get(f"{col}_hi")
    if _missing(lo) or _missing(hi):
        return ""
    return f"<br><small class='ci'>[{fmt(lo, '.2f')}, {fmt(hi, '.2f')}]</small>"


def _own_operator(method: str) -> str | None:
    """The removal operator a method's claim is itself made with (registry), or None."""
    from partslib.explain.registry import REGISTRY

    entry = REGISTRY.get(method)
    return None if entry is None else entry.operator


def _t2_cell(r: dict[str, Any], op: str, ceiling: float, chance: float) -> tuple[str, bool]:
    """The ρ and decisive cells of one (method, operator), and whether the decisive number is
    read against the method's own (margin) ceiling."""
    own_ceil, rho, dec = r.get("decisive_ceiling"), r["spearman"], r["decisive"]
    rho_td = (f"<td class='num' style='{_shade(None if _missing(rho) else rho)}'>"
              f"{fmt(rho, '.2f')}{_interval(r, 'spearman')}</td>")
    own_op = _own_operator(str(r["method"]))
    if own_op is not None and own_op != op:
        return (rho_td + f"<td class='num sep' title='its claim is a {escape(own_op)} "
                f"removal: read its decisive-part accuracy under {escape(own_op)}'>"
                f"→ {escape(OPERATOR_LABELS.get(own_op, own_op))}</td>"), False
    span = ceiling - chance
    rel = None if _missing(dec) or span <= 0 else (dec - chance) / span
    own = "" if _missing(own_ceil) or own_ceil == ceiling else \
        f"<small> of {own_ceil:.2f}</small>"
    return (rho_td + f"<td class='num sep' style='{_shade(rel, 210)}'>{fmt(dec, '.2f')}{own}"
            f"{_interval(r, 'decisive')}</td>"), bool(own)


def t2_matrix(t2: pd.DataFrame, default: str = DEFAULT_RULE,
              best: str | None = None) -> str:
    """T2 as a method x operator matrix: Spearman of claimed contributions against the measured
    removal effects, and decisive-part accuracy beside the ceiling of the same operator (the
    share the measured effects themselves reach) and the chance rate; 95% bootstrap intervals
    over images under each number where the run has them. A method whose claim is itself a
    removal (occlusion by blur) shows its decisive-part accuracy under that operator only."""
    methods, operators = _ordered(t2.method), _ordered(t2.operator)
    cell = {(r["method"], r["operator"]): r for r in t2.to_dict("records")}
    ceiling = {op: t2[t2.operator == op].decisive_ceiling.mode().iloc[0] for op in operators}
    chance = {op: t2[t2.operator == op].decisive_chance.mode().iloc[0] for op in operators}
    top = "<tr><th rowspan='2' class='left'>method</th>" + "".join(
        f"<th colspan='2' class='op' title='{escape(OPERATOR_NOTES.get(op, op))}'>"
        f"{escape(OPERATOR_LABELS.get(op, op))}</th>" for op in operators) + \
        "<th rowspan='2'>units</th></tr>"
    sub = "<tr>" + "<th>ρ</th><th class='sep'>decisive</th>" * len(operators) + "</tr>"
    rows, foot, own_ceiling, moved = [top, sub], [], False, False
    for m in methods:
        tags = ""
        if m == default:
            tags += " <span class='tag'>default</span>"
        if best and m == best:
            tags += " <span class='tag best'>best PDM mode</span>"
        tds, units = [], ""
        for op in operators:
            r = cell.get((m, op))
            if r is None:
                tds.append(f"<td>{DASH}</td><td class='sep'>{DASH}</td>")
                continue
            units = r.get("units", "")
            html, own = _t2_cell(r, op, ceiling[op], chance[op])
            own_ceiling = own_ceiling or own
            moved = moved or "→" in html
            tds.append(html)
        label = escape(method_label(m))
        cls = " class='default'" if m == default else ""
        rows.append(f"<tr{cls}><td class='left' title='{escape(m)}'>{label}{tags}</td>"
                    + "".join(tds) + f"<td class='txt'>{escape(str(units))}</td></tr>")
    rows.append("<tr class='ref'><td class='left'>measured effects (ceiling)</td>" + "".join(
        f"<td></td><td class='num sep'>{ceiling[op]:.2f}</td>" for op in operators)
        + "<td></td></tr>")
    rows.append("<tr class='ref'><td class='left'>chance (random part first)</td>" + "".join(
        f"<td></td><td class='num sep'>{chance[op]:.2f}</td>" for op in operators)
        + "<td></td></tr>")
    if bool(t2.loc[:, ["spearman", "decisive"]].isna().to_numpy().any()):
        foot.append(f"{DASH}: not computed (no image had two parts with distinct effects)")
    if own_ceiling:
        foot.append("“of x”: margin rules are scored against the margin's own ceiling")
    if moved:
        foot.append("→ op: the rule's claim is itself a removal by that operator; its "
                    "decisive-part accuracy is compared with that operator's ceiling only")
    if any(c.endswith("_lo") for c in t2.columns):
        foot.append("[lo, hi]: 95% bootstrap interval over the evaluated images")
    notes = "".join(f"<li>{escape(n)}</li>" for n in foot)
    return "<table class='matrix'>" + "".join(rows) + "</table>" + \
        (f"<ul class='foot'>{notes}</ul>" if notes else "")


def t2_details(t2: pd.DataFrame) -> str:
    """The other T2 columns (top-part agreement, error, deletion AUCs) as a long table."""
    cols = ["method", "operator", "top_part", "norm_abs_error", "auc_claimed", "auc_random",
            "auc_greedy", "completeness_error_max"]
    # runs made before the greedy deletion order had its name called it "oracle"
    df = t2.rename(columns={"auc_oracle": "auc_greedy"})
    df = df.loc[:, [c for c in cols if c in df.columns]].copy()
    df["method"] = df.method.map(method_label)
    return html_table(df, {"completeness_error_max": ".1e"}, cls="long")


def t1_compact(t1: pd.DataFrame) -> tuple[str, str]:
    """T1 in a few columns (part mIoU, pointing game, decisive-region IoU and pointing,
    Network Dissection IoU) and the per-part IoU as a second table."""
    t1 = t1.rename(columns={t1.columns[0]: "method"})
    cols = {"method": "method", "mIoU": "part mIoU", "pointing_game": "pointing game",
            "region_iou": "region IoU", "region_pointing": "region pointing",
            "netdissect_mean": "NetDissect IoU"}
    main = t1.loc[:, [c for c in cols if c in t1.columns]]
    table = html_table(main, head=[cols[c] for c in main.columns])
    if bool(main.drop(columns="method").isna().to_numpy().any()):
        table += (f"<p class='foot'>{DASH}: not defined for the method (Grad-CAM and CAM give "
                  f"one map for the class, not part maps; NetDissect's quantile threshold "
                  f"applies to linear maps only).</p>")
    parts = [c for c in t1.columns if c.startswith("iou:")]
    per_part = t1.loc[t1.loc[:, parts].notna().to_numpy().any(axis=1), ["method", *parts]]
    return table, html_table(per_part, head=["method", *(c[4:] for c in parts)])


def t4_compact(t4: pd.DataFrame) -> str:
    """T4 as one row per method: time per batch and ratio to a forward pass, per image size."""
    sizes = sorted(t4["size"].unique())
    methods = _ordered(t4.method)
    head = "<tr><th rowspan='2' class='left'>method</th>" + "".join(
        f"<th colspan='2' class='op'>{s}×{s}, batch "
        f"{int(t4[t4['size'] == s].batch.iloc[0])}</th>" for s in sizes) + "</tr>"
    sub = "<tr>" + "<th>ms / batch</th><th class='sep'>× forward</th>" * len(sizes) + "</tr>"
    rows = [head, sub]
    for m in methods:
        tds = []
        for s in sizes:
            r = t4[(t4.method == m) & (t4["size"] == s)]
            if r.empty:
                tds.append(f"<td>{DASH}</td><td class='sep'>{DASH}</td>")
                continue
            ratio = float(r.ratio_to_forward.iloc[0])
            tds.append(f"<td class='num'>{fmt(float(r.ms_per_batch.iloc[0]), '.0f')}</td>"
                       f"<td class='num sep'>{fmt(ratio, '.2f')}</td>")
        cls = " class='default'" if BENCH_LABELS.get(m, m) == DEFAULT_RULE else ""
        label = method_label(m)
        rows.append(f"<tr{cls}><td class='left'>{escape(label)}</td>"
                    + "".join(tds) + "</tr>")
    return "<table class='matrix'>" + "".join(rows) + "</table>"
