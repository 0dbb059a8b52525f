"""T2's figures: claimed contribution vs measured effect, deletion curves, V5 sanity."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import pandas as pd

if TYPE_CHECKING:
    from matplotlib.figure import Figure

    from partslib.studies.validity import ValidityExtras

__all__ = ["plot_claimed_vs_measured", "plot_deletion_curves", "plot_sanity"]


def plot_claimed_vs_measured(extras: ValidityExtras, operator: str = "rerender",
                             part_names: Sequence[str] | None = None,
                             methods: Sequence[str] | None = None, col_wrap: int = 5
                             ) -> Figure:
    """Claimed contribution against measured effect (present parts, one point per image and
    part), one panel per method; contrastive methods against the margin effect."""
    import matplotlib.pyplot as plt
    import seaborn as sns

    methods = list(methods or extras.claims)
    L = extras.present.shape[1]
    names = list(part_names) if part_names is not None else [str(p) for p in range(L)]
    frames = []
    pr = extras.present
    for m in methods:
        d = extras.margin_effects.get((operator, m), extras.effects[operator])
        c = extras.claims[m].contributions.detach().cpu()
        b, p = pr.nonzero(as_tuple=True)
        frames.append(pd.DataFrame({"method": m, "measured": d[b, p].double().numpy(),
                                    "claimed": c[b, p].double().numpy(),
                                    "part": [names[i] for i in p.tolist()]}))
    df = pd.concat(frames, ignore_index=True)
    g = sns.relplot(data=df, x="measured", y="claimed", hue="part", col="method",
                    col_wrap=min(col_wrap, len(methods)), height=2.3, s=9, alpha=0.5,
                    linewidth=0, facet_kws={"sharey": False, "sharex": False})
    g.set_titles("{col_name}", size=8)
    g.set_axis_labels(f"measured effect ({operator})", "claimed")
    for ax, m in zip(g.axes.flat, methods):
        if extras.claims[m].units in ("logit", "margin"):
            lo, hi = ax.get_xlim()
            ax.plot([lo, hi], [lo, hi], color="0.5", lw=0.8, ls="--")
    sns.move_legend(g, "center left", bbox_to_anchor=(1.0, 0.5), markerscale=2, frameon=False)
    plt.close(g.figure)
    return g.figure


def plot_deletion_curves(extras: ValidityExtras, operators: Sequence[str] | None = None,
                         methods: Sequence[str] | None = None) -> Figure:
    """Mean class probability after removing 0, 1, ... parts in the claimed order of each
    method, a random order and the greedy order (by single-removal effect); one panel per
    operator."""
    import matplotlib.pyplot as plt
    import seaborn as sns

    ops = list(operators or extras.effects)
    methods = list(methods or extras.claims)
    rows = []
    for (order, op), curve in extras.curves.items():
        if op not in ops or (order not in methods and order not in ("random", "greedy")):
            continue
        mean = curve.double().mean(0).numpy()
        rows += [{"order": order, "operator": op, "parts removed": j, "probability": v}
                 for j, v in enumerate(mean)]
    df = pd.DataFrame(rows)
    hue_order = [*methods, "random", "greedy"]
    palette: dict[str, str | tuple[float, float, float]] = dict(
        zip(methods, sns.color_palette("husl", len(methods))))
    palette.update(random="0.55", greedy="black")
    # (None, None): matplotlib's solid line (Line2D.set_dashes)
    dashes = {o: (2, 2) if o in ("random", "greedy") else (None, None) for o in hue_order}
    g = sns.relplot(data=df, x="parts removed", y="probability", hue="order", style="order",
                    hue_order=hue_order, style_order=hue_order, palette=palette, dashes=dashes,
                    col="operator", col_order=ops, kind="line", height=2.8, aspect=1.0,
                    linewidth=1.2)
    g.set_titles("{col_name}")
    g.set(ylim=(-0.02, 1.02))
    plt.close(g.figure)
    return g.figure


def plot_sanity(sanity: pd.DataFrame) -> Figure:
    """V5: Spearman of contributions (solid) and maps (dashed) with the trained model's, after
    each step of the cascading re-initialisation; signed values on the left, absolute values
    on the right (runs made before the absolute columns: the signed panel only)."""
    import matplotlib.pyplot as plt
    import seaborn as sns

    panels = [("signed", "")]
    if {"spearman_contrib_abs", "spearman_maps_abs"} <= set(sanity.columns):
        panels.append(("absolute values", "_abs"))
    fig, axes = plt.subplots(1, len(panels), figsize=(3.6 * len(panels) + 2.0, 3.4),
                             sharey=True, squeeze=False)
    steps = sanity.drop_duplicates("step").sort_values("step")
    for ax, (title, tag) in zip(axes[0], panels, strict=True):
        named = sanity.rename(columns={f"spearman_contrib{tag}": "contributions",
                                       f"spearman_maps{tag}": "maps"})
        long = named.melt(id_vars=["method", "step", "module"],
                          value_vars=["contributions", "maps"], var_name="what",
                          value_name="spearman")
        sns.lineplot(data=long, x="step", y="spearman", hue="method", style="what",
                     style_order=["contributions", "maps"],
                     dashes={"contributions": (1, 0), "maps": (3, 2)}, markers=True, ax=ax,
                     legend=ax is axes[0][-1])
        ax.set_xticks(steps["step"].tolist(), steps["module"].tolist(), rotation=30, fontsize=8)
        ax.set(xlabel="re-initialised down to", ylabel="Spearman with trained",
               ylim=(-1.05, 1.05), title=title)
        ax.axhline(0, color="0.6", lw=0.8)
    axes[0][-1].legend(fontsize=7, frameon=False, bbox_to_anchor=(1.02, 1), loc="upper left")
    fig.tight_layout()
    plt.close(fig)
    return fig
