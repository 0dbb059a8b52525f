"""FunnyBirds figures: the spider (radar) plot of the paper and the per-threshold curves."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

    from partslib.metrics.funnybirds_protocol import FunnyBirdsResult

__all__ = ["SPIDER_AXES", "SPIDER_CHECKS", "plot_spider", "plot_threshold_curves"]

SPIDER_AXES = ("accuracy", "BI", "Com", "Cor", "Con")  # the paper's summary plot
SPIDER_CHECKS = ("CSDC", "PC", "DC", "D", "BI", "SD", "TS")  # the seven checks


def plot_spider(scores: Mapping[str, Mapping[str, float]],
                axes: Sequence[str] = SPIDER_AXES, title: str | None = None,
                ax: Axes | None = None) -> Figure:
    """One closed polygon per explainer on a radar of ``axes`` (all scores in [0, 1]).

    Args:
        scores: explainer name -> its scores (:meth:`FunnyBirdsResult.scores`).
        axes: which scores, in order around the circle (at least 3).
        title: figure title; ax: a polar axes to draw into (``None``: a new figure).

    Returns:
        the figure. A score that is missing or NaN is drawn at 0 and flagged in the legend.
    """
    import matplotlib.pyplot as plt
    from matplotlib.projections.polar import PolarAxes

    if len(axes) < 3:
        raise ValueError(f"a spider plot needs at least 3 axes, got {list(axes)!r}")
    if not scores:
        raise ValueError("scores is empty: give at least one explainer's scores")
    if ax is None:
        fig = plt.figure(figsize=(5.5, 5.0))
        ax = fig.add_subplot(projection="polar")
    if not isinstance(ax, PolarAxes):
        raise ValueError(f"ax must be a polar axes (projection='polar'), got {type(ax).__name__}")
    fig = ax.get_figure(root=True)
    if fig is None:
        raise ValueError("ax belongs to no figure")
    ax.set_theta_offset(np.pi / 2)  # the first axis on top, then clockwise
    ax.set_theta_direction(-1)
    angles = np.linspace(0, 2 * np.pi, len(axes), endpoint=False)
    closed = np.append(angles, angles[0])
    for name, row in scores.items():
        values = np.array([float(row.get(a, np.nan)) for a in axes])
        missing = [a for a, v in zip(axes, values, strict=True) if np.isnan(v)]
        values = np.nan_to_num(values, nan=0.0)
        label = name if not missing else f"{name} (no {', '.join(missing)})"
        line, = ax.plot(closed, np.append(values, values[0]), label=label, linewidth=1.5)
        ax.fill(closed, np.append(values, values[0]), alpha=0.12, color=line.get_color())
    ax.set_xticks(angles)
    ax.set_xticklabels(list(axes))
    ax.set_ylim(0, 1)
    ax.set_yticks([0.25, 0.5, 0.75, 1.0])
    ax.set_rlabel_position(180 / len(axes))  # radial labels between the first two axes
    ax.legend(loc="upper right", bbox_to_anchor=(1.35, 1.12), fontsize="small")
    if title:
        ax.set_title(title, pad=18)
    return fig


def plot_threshold_curves(results: Mapping[str, FunnyBirdsResult]) -> Figure:
    """CSDC, PC, DC, D and the objective against the threshold, one panel per explainer, the
    chosen threshold marked."""
    import matplotlib.pyplot as plt

    if not results:
        raise ValueError("results is empty: give at least one explainer's result")
    n = len(results)
    fig, axs = plt.subplots(1, n, figsize=(3.6 * n, 3.0), squeeze=False, sharey=True)
    for ax, (name, res) in zip(axs[0], results.items(), strict=True):
        df = res.curves()
        for col in ("CSDC", "PC", "DC", "D"):
            ax.plot(df["threshold"], df[col], label=col, linewidth=1.2)
        ax.plot(df["threshold"], df["objective"] / 2, "k--", label="objective / 2", linewidth=1)
        ax.axvline(res.threshold, color="grey", linewidth=0.8)
        ax.set_title(f"{name} (t = {res.threshold:.3f})", fontsize="small")
        ax.set_xlabel("threshold t")
        ax.set_ylim(-0.02, 1.02)
    axs[0][0].legend(fontsize="x-small")
    fig.tight_layout()
    return fig
