"""T2's report text and numbers: the metrics written to ``metrics.json``, the headline, the
2×2 ablation table, a reading generated from the numbers and the region-rule gap summary."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, cast

import pandas as pd
import torch

from partslib.explain.registry import DEFAULT_METHOD, METHODS, REGISTRY
from partslib.metrics.validity import claimed_order, removal_agreement

if TYPE_CHECKING:
    from partslib.studies.validity import ValidityExtras

__all__ = ["ablation_table", "gap_summary", "headline", "metrics_dict", "own_operator",
           "reading"]

PDM_METHODS = tuple(m for m in METHODS if m.startswith("pdm-"))


_METRIC_COLUMNS = ("spearman", "top_part", "norm_abs_error", "auc_claimed", "auc_random",
                   "auc_greedy", "decisive", "decisive_ceiling", "completeness_error_max",
                   "completeness_error_mean")


# the 95% bootstrap intervals written to metrics.json as <score>_lo / <score>_hi
_INTERVAL_KEYS = ("spearman", "top_part", "decisive")


def _where(df: pd.DataFrame, mask: Any) -> pd.DataFrame:
    """The rows of ``df`` where the boolean Series ``mask`` holds."""
    # a boolean mask selects rows, so the result is a DataFrame; pandas types df[key] as a
    # Series or a DataFrame, for any key
    return cast(pd.DataFrame, df[mask])


def _column(df: pd.DataFrame, name: str) -> pd.Series:
    """Column ``name`` of ``df`` (a Series: the frames here have unique column names)."""
    return cast(pd.Series, df[name])  # pandas types df[key] as a Series or a DataFrame


def metrics_dict(t2: pd.DataFrame, sanity: pd.DataFrame | None = None) -> dict[str, float]:
    """Flat ``{"<method>/<operator>/<metric>": value}`` for ``metrics.json`` (NaN → None; the
    bootstrap intervals ``spearman|top_part|decisive _lo|_hi`` where T2 has them),
    plus ``<method>/sanity/<module>/spearman_contrib|maps[_abs]`` from V5 and ``n_images``."""
    out: dict[str, Any] = {}

    def num(v: Any) -> float | None:
        v = float(v)
        return v if math.isfinite(v) else None

    cols = [*_METRIC_COLUMNS, *(f"{c}_{s}" for c in _INTERVAL_KEYS for s in ("lo", "hi")
                                if f"{c}_{s}" in t2.columns)]
    for r in t2.to_dict("records"):
        for col in cols:
            out[f"{r['method']}/{r['operator']}/{col}"] = num(r[col])
    if len(t2):
        out["n_images"] = int(t2["n_images"].iloc[0])
        out["seed"] = int(t2["seed"].iloc[0])
    if sanity is not None:
        for r in sanity.to_dict("records"):
            for col in ("spearman_contrib", "spearman_maps", "spearman_contrib_abs",
                        "spearman_maps_abs"):
                if col not in r:
                    continue
                out[f"{r['method']}/sanity/{r['module']}/{col}"] = num(r[col])
    return out


def own_operator(method: str, default: str = "rerender") -> str:
    """The removal operator a method's decisive-part accuracy is compared under: the one its
    claim is itself made with (registry ``operator``, e.g. blur for occlusion), else
    ``default``."""
    entry = REGISTRY.get(method)
    return entry.operator if entry is not None and entry.operator else default


def headline(t2: pd.DataFrame, reference: str = "rerender") -> dict[str, Any]:
    """The SPEC §8 numbers, each decisive-part accuracy beside the ceiling of the same removal
    operator: the default rule's (``default_*``, against ``reference``; the amortised rule
    when T2 has it, else the region rule), then the best PDM
    mode's (``best_pdm_*``; ``pdm-basis``, which equals IBD, does not count) against the
    ceiling of its own operator (:func:`own_operator`: blur for occlusion); PDM-region (soft)
    Spearman against ``reference`` effects, with IBD, Grad-CAM and random beside it."""
    ref = t2[t2.operator == reference].set_index("method")
    # pdm-basis is left out: the basis rule reads no PDM map, its numbers are IBD's
    pdm = ref.loc[[m for m in PDM_METHODS if m in ref.index and m != "pdm-basis"]]
    out: dict[str, Any] = {}
    default = next((m for m in (DEFAULT_METHOD, "pdm-region-soft") if m in ref.index), None)
    if default is not None:
        out.update(default_method=default, default_decisive=float(ref.loc[default, "decisive"]),
                   default_operator=reference,
                   default_spearman=float(ref.loc[default, "spearman"]),
                   default_ceiling=float(ref.loc[default, "decisive_ceiling"]))
    if len(pdm):
        best = str(pdm["decisive"].astype(float).idxmax())
        op = own_operator(best, reference)
        own = _where(t2, (t2.method == best) & (t2.operator == op))
        out.update(best_pdm_mode=best, best_pdm_decisive=float(pdm.loc[best, "decisive"]),
                   best_pdm_operator=op,
                   best_pdm_ceiling=float(own["decisive_ceiling"].iloc[0]) if len(own)
                   else math.nan)
    for m, key in (("pdm-region-soft", "pdm_region_spearman"), ("ibd", "ibd_spearman"),
                   ("gradcam-mass", "gradcam_spearman"), ("random", "random_spearman")):
        if m in ref.index:
            out[key] = float(ref.loc[m, "spearman"])
    return out


def ablation_table(t2: pd.DataFrame, operator: str = "rerender",
                   metric: str = "spearman") -> pd.DataFrame:
    """SPEC §4's 2×2: rows maps {linear, pdm}, columns rule {basis, region}, one metric."""
    cells = {("linear", "basis"): "ibd", ("pdm", "basis"): "pdm-basis",
             ("linear", "region"): "ibd-linear-region", ("pdm", "region"): "pdm-region-soft"}
    rows = _where(t2, t2.operator == operator)
    ref = dict(zip(rows["method"], rows[metric]))
    data = {rule: {maps: float(ref.get(m, math.nan)) for (maps, r), m in cells.items()
                   if r == rule} for rule in ("basis", "region")}
    df = pd.DataFrame(data).reindex(["linear", "pdm"])
    df.index.name, df.columns.name = "maps", "rule"
    df.attrs.update(operator=operator, metric=metric)
    return df


def reading(t2: pd.DataFrame, gap: tuple[pd.DataFrame, dict[str, float]] | None = None,
            gap_operator: str = "rerender") -> str:
    """A short reading of T2 in Markdown, generated from the numbers (so it stays true).

    Args:
        t2: from :func:`run_validity`.
        gap: ``gap_summary(extras, gap_operator, part_names)``, to say *why* the region rule
            and the removal effects differ.
    """
    lines = []
    scored = _where(t2, t2.units.isin(["logit", "margin"]) | (t2.method == "gradcam-mass"))
    for op in t2.operator.unique():
        sub = _where(scored, scored.operator == op).set_index("method")
        spearman = _column(sub, "spearman")
        if not len(sub) or bool(spearman.isna().all()):
            continue
        best = str(spearman.astype(float).idxmax())
        floor = _where(t2, (t2.operator == op) & (t2.method == "random"))["spearman"]
        floor_txt = f"; the random floor is {float(floor.iloc[0]):.2f}" if len(floor) else ""
        own = (" -- its own counterfactual, on PDM instead of ground-truth masks"
               if op == "blur" and "occlusion" in best else "")
        ceiling = float(_where(t2, (t2.operator == op) & (t2.score_v2 == "logit"))
                        ["decisive_ceiling"].iloc[0])
        region = (float(spearman.loc["pdm-region-soft"]) if "pdm-region-soft" in spearman.index
                  else math.nan)
        region_txt = (f" The PDM region rule reaches {region:.2f}." if math.isfinite(region)
                      and best != "pdm-region-soft" else "")
        lines.append(f"* **{op}**: the ranking that best matches the measured effects is "
                     f"`{best}` (Spearman {sub.loc[best, 'spearman']:.2f}, top part "
                     f"{sub.loc[best, 'top_part']:.2f}{own}){floor_txt}.{region_txt} The "
                     f"effects themselves rank a decisive part first for {ceiling:.2f} of the "
                     f"images.")
    dec = t2.drop_duplicates("method").set_index("method")["decisive"].astype(float)
    dec = dec.drop(labels=["random"], errors="ignore")
    if len(dec):
        best = str(dec.idxmax())
        op = own_operator(best, str(t2.operator.iloc[0]))
        own = _where(t2, (t2.method == best) & (t2.operator == op))["decisive_ceiling"]
        own_txt = (f", against {float(own.iloc[0]):.2f} for the `{op}` effects themselves "
                   f"(the ceiling of the operator its claim is made with)" if len(own) else "")
        lines.append(f"* Decisive-part accuracy is highest for `{best}` "
                     f"({dec[best]:.2f}{own_txt}); chance is "
                     f"{float(t2['decisive_chance'].iloc[0]):.2f}.")
    if {"ibd", "ibd-linear-region", "pdm-region-soft"} <= set(t2.method) and \
            "rerender" in set(t2.operator):
        ab = ablation_table(t2, "rerender")
        rule_gain = ab.loc["pdm", "region"] - ab.loc["pdm", "basis"]
        map_gain = ab.loc["pdm", "region"] - ab.loc["linear", "region"]
        lines.append(f"* 2×2 ablation against re-rendering (Spearman): switching the rule from "
                     f"basis to region changes agreement by {rule_gain:+.2f}; switching the "
                     f"maps from linear to PDM within the region rule by {map_gain:+.2f}.")
    if gap is not None:
        per_part, sm = gap
        top = per_part["top_by_claim"].astype(float).idxmax()
        r = per_part.loc[top]
        lines.append(
            f"* Why the region rule disagrees with `{gap_operator}` effects: with "
            f"ground-truth masks it reaches Spearman {sm['gt_region_spearman']:.2f} "
            f"({sm['gt_region_spearman_objects']:.2f} over object parts only), so the "
            f"segmentation is not the cause. The rule ranks `{top}` first for "
            f"{r.top_by_claim:.2f} of the images (mean claim {r.claim:.2f}), while removing "
            f"it changes the logit by {r.effect:.2f} on average: after the removal its cells "
            f"still hold {r.remaining:.2f} of CAM mass (the rule's baseline is zero features, "
            f"the counterfactual's is not) and the other parts' cells change by "
            f"{-r.context:+.2f}. Per part, claim = effect + remaining − context exactly.")
    return "\n".join(lines)


def gap_summary(extras: ValidityExtras, operator: str = "rerender",
                part_names: Sequence[str] | None = None,
                method: str = "pdm-region-soft") -> tuple[pd.DataFrame, dict[str, float]]:
    """Why the region rule disagrees with ``operator``'s effects, from :func:`region_gap`.

    Returns:
        ``(per_part, summary)``: per part, the mean region claim on the ground-truth masks,
        the mean effect, the CAM mass ``remaining`` in the part's cells after the removal and
        the ``context`` change in the other parts' cells (claim = effect + remaining −
        context), and how often the part is ranked first by the claim and by the effect;
        ``summary`` holds V2 for the region rule on ground-truth masks (``gt_region_*``) and
        for ``method``, over all present parts and over object parts only (background left
        out).
    """
    g = _where(extras.gap, extras.gap.operator == operator)
    B, L = extras.present.shape
    names = list(part_names) if part_names is not None else [str(p) for p in range(L)]
    claim = torch.full((B, L), math.nan, dtype=torch.float64)
    effect = claim.clone()
    ii = torch.tensor(g["row"].to_numpy(), dtype=torch.long)
    pp = torch.tensor(g["part"].to_numpy(), dtype=torch.long)
    claim[ii, pp] = torch.tensor(g["claim"].to_numpy(), dtype=torch.float64)
    effect[ii, pp] = torch.tensor(g["effect"].to_numpy(), dtype=torch.float64)
    pr = extras.present
    top_claim = claimed_order(claim.nan_to_num(0.0), pr)[:, 0]
    top_effect = claimed_order(effect.nan_to_num(0.0), pr)[:, 0]
    # the mean of a groupby over a list of columns is a DataFrame (pandas types it as any value)
    per_part = cast(pd.DataFrame,
                    g.groupby("part")[["claim", "effect", "remaining", "context"]].mean())
    per_part["top_by_claim"] = [float((top_claim == p).double().mean()) for p in per_part.index]
    per_part["top_by_effect"] = [float((top_effect == p).double().mean())
                                 for p in per_part.index]
    per_part.index = [names[p] for p in per_part.index]
    per_part.index.name = "part"
    objects = pr.clone()
    objects[:, 0] = False
    measured = extras.effects[operator]
    summary = {}
    for tag, mask in (("", pr), ("_objects", objects)):
        a = removal_agreement(claim, effect, mask).summary
        summary[f"gt_region_spearman{tag}"] = a["spearman"]
        summary[f"gt_region_top_part{tag}"] = a["top_part"]
        if method in extras.claims:
            b = removal_agreement(extras.claims[method].contributions, measured, mask).summary
            summary[f"{method}_spearman{tag}"] = b["spearman"]
            summary[f"{method}_top_part{tag}"] = b["top_part"]
    if method in extras.claims:
        top = claimed_order(extras.claims[method].contributions, pr)[:, 0]
        summary[f"{method}_top_is_background"] = float((top == 0).double().mean())
    return per_part, summary

