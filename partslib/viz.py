"""Figures for the notebooks and the explorer: sample grids with part masks, confusion
matrices, learning curves, part explanations.

The ``plot_*`` functions return a ``matplotlib.figure.Figure`` (those drawing into one given
``ax`` return the axes) and show nothing by themselves; save a figure with :func:`save_figure`.
:func:`part_palette` and :func:`overlay_parts` are the one part colouring of the study: the
localization study and the explorer use them too.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import seaborn as sns
import torch
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.legend import Legend
from matplotlib.patches import Patch
from matplotlib.ticker import MaxNLocator

from partslib.io import atomic_write

__all__ = [
    "Bar",
    "bars_that_fit",
    "contribution_bars",
    "contributions_height",
    "legend_rows_that_fit",
    "overlay_parts",
    "part_legend",
    "part_palette",
    "plot_confusion",
    "plot_contributions",
    "plot_explanation",
    "plot_gallery",
    "plot_history",
    "plot_iou",
    "plot_part_class_heatmap",
    "plot_part_overlay",
    "plot_samples",
    "plot_segmentations",
    "refit_contributions",
    "save_figure",
    "set_style",
]


def set_style() -> None:
    """The seaborn look used by all figures of the study."""
    sns.set_theme(context="notebook", style="whitegrid", font_scale=0.9)


def part_palette(num_labels: int) -> np.ndarray:
    """RGB colours ``[num_labels, 3]`` in [0, 1]; label 0 (background) is dark grey."""
    n = max(num_labels - 1, 1)
    # tab10 up to 10 parts (unchanged), then tab20, then husl: no two parts share a colour
    name = "tab10" if n <= 10 else "tab20" if n <= 20 else "husl"
    colours = np.array(sns.color_palette(name, n))[: num_labels - 1]
    return np.vstack([[0.2, 0.2, 0.2], colours])


def overlay_parts(image: np.ndarray | torch.Tensor, mask: np.ndarray | torch.Tensor,
                  alpha: float = 0.55, num_labels: int | None = None) -> np.ndarray:
    """Blend part colours over an image: ``image`` uint8/float ``[3,H,W]`` or ``[H,W,3]``,
    ``mask`` ``[H,W]`` labels (0 = background, left as is). Returns float ``[H,W,3]`` in [0,1].
    Pass ``num_labels`` so colours stay the same across images whatever parts they show."""
    img = _hwc_float(image)
    m = np.asarray(mask).astype(np.int64)
    m = np.where(m == 255, 0, m)
    colours = part_palette(num_labels or (int(m.max()) + 1 if m.size else 1))
    out = img.copy()
    fg = m > 0
    out[fg] = (1 - alpha) * img[fg] + alpha * colours[m[fg]]
    return out


def _hwc_float(image: np.ndarray | torch.Tensor) -> np.ndarray:
    x = image.detach().cpu().numpy() if isinstance(image, torch.Tensor) else np.asarray(image)
    if x.ndim == 3 and x.shape[0] == 3 and x.shape[-1] != 3:
        x = x.transpose(1, 2, 0)
    x = x.astype(np.float64)
    return x / 255.0 if x.max() > 1.0 else x


def plot_samples(dataset, n: int = 12, ncols: int = 6, seed: int = 0,
                 alpha: float = 0.55) -> Figure:
    """A grid of ``n`` samples: each image above its part-mask overlay, titled with its class;
    one legend for the part colours. ``dataset`` has ``images`` ``[N,3,H,W]``, ``masks``,
    ``labels``, ``part_names`` and ``class_names`` (a :class:`~partslib.data.SynthParts`)."""
    n = min(n, len(dataset))
    g = torch.Generator().manual_seed(seed)
    idx = torch.randperm(len(dataset), generator=g)[:n].sort().values.tolist()
    ncols = min(ncols, n)
    nrows = 2 * -(-n // ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(1.9 * ncols, 1.9 * nrows), squeeze=False)
    for ax in axes.flat:
        ax.set_axis_off()
    for j, i in enumerate(idx):
        r, c = 2 * (j // ncols), j % ncols
        image, mask = dataset.images[i], dataset.masks[i]
        axes[r, c].imshow(_hwc_float(image))
        axes[r, c].set_title(dataset.class_names[int(dataset.labels[i])], fontsize=7)
        axes[r + 1, c].imshow(overlay_parts(image, mask, alpha))
    colours = part_palette(len(dataset.part_names))
    handles = [Patch(color=colours[k], label=name) for k, name in enumerate(dataset.part_names)
               if k > 0]
    fig.legend(handles=handles, loc="lower center", ncol=len(handles), frameon=False,
               fontsize=8)
    fig.tight_layout(rect=(0, 0.04, 1, 1))
    return fig


def plot_confusion(cm: Sequence[Sequence[int]] | np.ndarray | torch.Tensor,
                   class_names: Sequence[str], normalize: bool = True) -> Figure:
    """Confusion matrix heatmap, rows = true class; ``normalize`` shows row shares (recall)
    with the counts as annotations."""
    counts = np.asarray(cm.tolist() if isinstance(cm, torch.Tensor) else cm, dtype=np.float64)
    shown = counts / np.clip(counts.sum(1, keepdims=True), 1, None) if normalize else counts
    k = len(class_names)
    fig, ax = plt.subplots(figsize=(1.0 + 0.75 * k, 0.6 + 0.65 * k))
    sns.heatmap(shown, annot=counts.astype(int), fmt="d", cmap="Blues", vmin=0,
                vmax=1 if normalize else None, cbar=normalize, square=True,
                xticklabels=class_names, yticklabels=class_names, ax=ax,
                annot_kws={"fontsize": 8})
    ax.set_xlabel("predicted class")
    ax.set_ylabel("true class")
    ax.tick_params(axis="x", rotation=45, labelsize=8)
    ax.tick_params(axis="y", rotation=0, labelsize=8)
    for label in ax.get_xticklabels():
        label.set_horizontalalignment("right")
    fig.tight_layout()
    return fig


def plot_history(history: Sequence[Mapping[str, float]]) -> Figure:
    """Learning curves from ``fit`` history: losses (left) and accuracies (right) per epoch."""
    if not history:
        raise ValueError("history is empty: nothing to plot")
    epochs = [h["epoch"] for h in history]
    loss_keys = [k for k in history[0] if k.endswith("loss")]
    acc_keys = [k for k in history[0] if k.endswith("accuracy") or "miou" in k]
    ncols = 1 + bool(acc_keys)
    fig, axes = plt.subplots(1, ncols, figsize=(4.2 * ncols, 3.2), squeeze=False)
    for k in loss_keys:
        axes[0, 0].plot(epochs, [h[k] for h in history], marker="o", ms=3,
                        label=k.replace("_", " "))
    axes[0, 0].set(xlabel="epoch", ylabel="cross-entropy", title="loss")
    axes[0, 0].legend()
    if acc_keys:
        for k in acc_keys:
            axes[0, 1].plot(epochs, [h[k] for h in history], marker="o", ms=3,
                            label=k.replace("_", " "))
        title = "validation score" if all(k.startswith("val_") for k in acc_keys) else "score"
        axes[0, 1].set(xlabel="epoch", ylabel="score", title=title, ylim=(0, 1.02))
        axes[0, 1].legend()
    for ax in axes.flat:
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    fig.tight_layout()
    return fig


def save_figure(fig: Figure, path: str | os.PathLike, dpi: int = 120) -> Path:
    """Save ``fig`` as PNG (or the format of ``path``'s suffix; parent folders created)
    atomically (:func:`partslib.io.atomic_write`) and return the path."""
    path = Path(path)
    with atomic_write(path) as tmp:
        fig.savefig(tmp, dpi=dpi, bbox_inches="tight", format=path.suffix[1:].lower() or "png")
    return path


# -- part explanations -------------------------------------------------------------------------

def part_legend(part_names: Sequence[str], ax: Axes | None = None, fig: Figure | None = None,
                **kwargs) -> Legend:
    """A legend of the part colours (background included), on ``ax``, else on ``fig``."""
    colours = part_palette(len(part_names))
    handles = [Patch(color=colours[i], label=name) for i, name in enumerate(part_names)]
    options = {"fontsize": 8, "frameon": False, **kwargs}
    if ax is not None:
        return ax.legend(handles=handles, **options)
    if fig is not None:
        return fig.legend(handles=handles, **options)
    raise ValueError("part_legend needs ax or fig to draw the legend on; both are None")


def plot_part_overlay(image, labels, part_names: Sequence[str], ax: Axes | None = None,
                      title: str = "parts", legend: bool = True, alpha: float = 0.6,
                      legend_rows: int | None = None) -> Axes:
    """The image with its part map blended over it, and a legend of the parts it shows (a map
    of background only says so in the legend instead of drawing an empty box), in columns of
    ``legend_rows`` entries (default: as many as fit beside the image)."""
    if ax is None:
        _, ax = plt.subplots(figsize=(3, 3))
    ax.imshow(overlay_parts(image, labels, alpha=alpha, num_labels=len(part_names)))
    ax.set(title=title, xticks=[], yticks=[])
    ax.grid(False)
    if legend:
        shown: list[int] = sorted(set(np.unique(np.asarray(labels)).tolist()) - {0, 255})
        colours = part_palette(len(part_names))
        handles = [Patch(color=colours[p], label=part_names[p]) for p in shown]
        if not handles:
            handles = [Patch(color=colours[0], label=f"{part_names[0]} only: no part found")]
        rows = legend_rows or legend_rows_that_fit(_axes_size_pt(ax)[1] / 72)
        ax.legend(handles=handles, fontsize=7, frameon=True, loc="upper left",
                  bbox_to_anchor=(1.0, 1.0), ncol=-(-len(handles) // rows),
                  columnspacing=0.8, handlelength=1.2)
    return ax


def _axes_size_pt(ax: Axes) -> tuple[float, float]:
    """Width and height of ``ax`` in points, at its figure's current layout."""
    fig = ax.get_figure(root=True)
    if fig is None:
        raise ValueError("the axes belong to no figure")
    pos = ax.get_position()
    return pos.width * fig.get_figwidth() * 72, pos.height * fig.get_figheight() * 72


def legend_rows_that_fit(height: float) -> int:
    """Entries of a 7-point part legend (about 1.9 line heights each) beside an image
    ``height`` inches high."""
    return max(4, int(height * 72 / (1.9 * 7)))


def _panel_layout(explanation, indices: Sequence[int], height: float
                  ) -> tuple[float, list[float], int]:
    """Figure width, column widths (inches: image, parts with their legend, contribution bars)
    and legend entries per column for panels ``height`` inches high showing ``indices``."""
    rows = legend_rows_that_fit(0.75 * height)
    most = max((int(explanation.present[i, 1:].sum()) for i in indices), default=0)
    cols = max(1, -(-most // rows))
    longest = max([len(n) for n in explanation.part_names[1:]] + [10])
    column = (longest * 0.55 * 7 + 24) / 72  # one legend column at 7 pt: patch, gap, name
    image = 0.75 * height  # the images are square, about as high as the panel less its title
    widths = [image, image + cols * column, 4.0]
    return sum(widths) + 0.8, widths, rows


def _layout(fig: Figure) -> None:
    """Lay a constrained-layout figure out now (positions are then final)."""
    engine = fig.get_layout_engine()
    if engine is not None:
        engine.execute(fig)


# Contribution bars: label font size (points) and the height one bar needs (in label heights).
BAR_FONT = 8.0
MIN_BAR_FONT = 7.0
BAR_PITCH = 1.6


@dataclass(frozen=True)
class Bar:
    """One bar of :func:`plot_contributions`: a part, or the sum of the parts not drawn."""

    label: str
    value: float
    share: float
    colour: tuple[float, float, float]
    pixels: bool  # whether the part has a pixel in the argmax map (False: drawn hatched)


def contribution_bars(explanation, i: int = 0, max_bars: int | None = None) -> list[Bar]:
    """The bars :func:`plot_contributions` draws for image ``i``, largest contribution first.

    Every part with a non-zero contribution or a pixel in the argmax map gets a bar (a part can
    contribute without winning any pixel: a soft rule credits its probabilities). With more
    than ``max_bars`` such parts, the ``max_bars - 1`` largest by ``|c|`` are drawn and one last
    bar ``other parts (n)`` holds the sum of the rest, so the bars always sum to ``Σc``."""
    e = explanation
    if not 0 <= i < len(e):
        raise ValueError(f"image index i={i} is out of range for an explanation of {len(e)} "
                         f"images")
    if max_bars is not None and max_bars < 2:
        raise ValueError(f"max_bars must be >= 2 (the largest parts and 'other parts') or "
                         f"None, got {max_bars}")
    c = e.contributions[i].detach().cpu().double().numpy()
    shares = e.shares[i].detach().cpu().double().numpy()
    pixels = e.present[i].cpu().numpy()
    colours = part_palette(len(e.part_names))
    drawn = np.flatnonzero(pixels | (c != 0))
    rest: np.ndarray = np.array([], dtype=np.int64)
    if max_bars is not None and len(drawn) > max_bars:
        by_size = drawn[np.argsort(-np.abs(c[drawn]), kind="stable")]
        drawn, rest = by_size[:max_bars - 1], by_size[max_bars - 1:]
    drawn = drawn[np.argsort(-c[drawn], kind="stable")]
    bars = [Bar(e.part_names[p], float(c[p]), float(shares[p]), tuple(colours[p]),
                bool(pixels[p])) for p in drawn]
    if len(rest):
        bars.append(Bar(f"other parts ({len(rest)})", float(c[rest].sum()),
                        float(shares[rest].sum()), (0.75, 0.75, 0.75), True))
    return bars


def bars_that_fit(ax: Axes, fontsize: float = MIN_BAR_FONT) -> int:
    """How many bars, one label each at ``fontsize`` points, the height of ``ax`` holds."""
    return max(2, int(0.85 * _axes_size_pt(ax)[1] / (BAR_PITCH * fontsize)))


def contributions_height(n_bars: int) -> float:
    """Height in inches of a contribution chart with ``n_bars`` bars at the label font."""
    # the axes get about 0.77 of a figure's height (matplotlib's default margins) and
    # bars_that_fit keeps 0.85 of that for the bars
    return 0.4 + n_bars * BAR_PITCH * BAR_FONT / 72 / (0.77 * 0.85)


def plot_contributions(explanation, i: int = 0, ax: Axes | None = None,
                       title: str | None = None, max_bars: int | None = None) -> Axes:
    """Horizontal bars of one image's part contributions, coloured like the part map.

    Every contributing part is drawn (see :func:`contribution_bars`; parts without a pixel in
    the part map are hatched), so the bars add up to the ``Σc`` of the title, which states the
    explained score and, for rules with a bias, ``score = bias + Σc``. Without ``ax`` the
    figure grows with the number of bars; on a given ``ax``, at most as many bars as its height
    holds at a readable font (``max_bars``, default: that many), the rest as ``other parts``.
    """
    e = explanation
    if ax is None:
        n = len(contribution_bars(e, i, max_bars))
        _, ax = plt.subplots(figsize=(3.6, max(2.8, contributions_height(n))))
    fit = bars_that_fit(ax)
    bars = contribution_bars(e, i, fit if max_bars is None else min(max_bars, fit))
    width_pt, height_pt = _axes_size_pt(ax)
    pitch = 0.85 * height_pt / (BAR_PITCH * max(len(bars), 1))
    font = float(np.clip(pitch, MIN_BAR_FONT, BAR_FONT))
    vals = np.array([b.value for b in bars])
    y = np.arange(len(bars))
    ax.barh(y, vals, color=[b.colour for b in bars],
            hatch=[None if b.pixels else "///" for b in bars], edgecolor="white", linewidth=0)
    ax.set_yticks(y, [b.label for b in bars], fontsize=font)
    ax.set_ylim(len(bars) - 0.5, -0.5)
    ax.axvline(0, color="k", lw=0.8)
    for k, b in enumerate(bars):
        ax.annotate(f"{100 * b.share:+.0f}%", (b.value, k), fontsize=max(font - 1, MIN_BAR_FONT),
                    va="center", ha="left" if b.value >= 0 else "right",
                    xytext=(3 if b.value >= 0 else -3, 0), textcoords="offset points")
    # room beyond the longest bars for their "+12%" labels (about 4.5 characters wide)
    lo, hi = min(vals.min(initial=0), 0), max(vals.max(initial=0), 0)
    f = min(0.4, (3 + 4.5 * 0.62 * font) / max(width_pt, 1.0))
    pad = (hi - lo + 1e-9) * f / (1 - 2 * f)
    ax.set_xlim(lo - (pad if lo < 0 else 0.02 * pad), hi + (pad if hi > 0 else 0.02 * pad))
    total = float(vals.sum())
    if title is None:
        score = float(e.score[i])
        title = f"{e.mode}\nscore {score:.2f}"
        title += (f" = bias {float(e.bias[i]):.2f} + Σc {total:.2f}"
                  if not np.isnan(float(e.bias[i])) else f", Σc {total:.2f}")
    ax.set_title(title, fontsize=8)
    xlabel = "contribution to the score"
    if not all(b.pixels for b in bars):
        xlabel += "\n(hatched: no pixel in the part map)"
    ax.set_xlabel(xlabel, fontsize=8)
    return ax


def plot_explanation(explanation, images, i: int = 0, class_names: Sequence[str] | None = None,
                     true_label: int | None = None) -> Figure:
    """The panel image | parts | contributions for image ``i`` of an explanation."""
    e = explanation
    height = max(3.0, contributions_height(len(contribution_bars(e, i))))
    width, widths, rows = _panel_layout(e, [i], height)
    fig, axes = plt.subplots(1, 3, figsize=(width, height), layout="constrained",
                             gridspec_kw={"width_ratios": widths})
    name = (lambda k: class_names[k]) if class_names is not None else str
    k = int(e.target[i])
    title = f"explained: {name(k)}"
    if e.contrast is not None:
        title += f"\nvs {name(int(e.contrast[i]))}"
    if true_label is not None:
        title += f"\n(true: {name(int(true_label))})"
    axes[0].imshow(_hwc_float(images[i]))
    axes[0].set(title=title, xticks=[], yticks=[])
    axes[0].grid(False)
    plot_part_overlay(images[i], e.labels[i].cpu(), e.part_names, ax=axes[1], legend_rows=rows)
    plot_contributions(e, i, ax=axes[2])
    refit_contributions(fig, [(axes[2], e, i, None)])
    return fig


def refit_contributions(fig: Figure, charts: Sequence[tuple[Axes, object, int, int | None]]
                        ) -> None:
    """Draw the contribution charts ``(ax, explanation, i, max_bars)`` of ``fig`` again once
    its layout is set (the layout shrinks axes to make room for titles and legends), so their
    bars and fonts fit the final heights; then lay the figure out again. A figure without a
    layout engine is laid out with ``tight_layout``."""
    if fig.get_layout_engine() is None:
        fig.tight_layout()
    _layout(fig)
    for ax, e, i, max_bars in charts:
        title = ax.get_title()
        ax.clear()
        plot_contributions(e, i, ax=ax, max_bars=max_bars, title=title)
    if fig.get_layout_engine() is None:
        fig.tight_layout()
    _layout(fig)


def plot_gallery(explanation, images, indices: Sequence[int],
                 class_names: Sequence[str] | None = None,
                 true_labels: Sequence[int] | torch.Tensor | None = None,
                 suptitle: str | None = None, max_bars: int = 12) -> Figure:
    """Rows of (image, parts, contribution bars) for several images of one explanation.

    Rows grow with the number of contributing parts, up to ``max_bars`` bars per chart; an
    image with more shows its ``max_bars - 1`` largest and one ``other parts`` bar."""
    e = explanation
    n = len(indices)
    most = max((len(contribution_bars(e, i)) for i in indices), default=0)
    row = max(2.7, contributions_height(min(most, max_bars)))
    width, widths, rows = _panel_layout(e, indices, row)
    fig, axes = plt.subplots(n, 3, figsize=(width, row * n), squeeze=False,
                             layout="constrained", gridspec_kw={"width_ratios": widths})
    name = (lambda k: class_names[k]) if class_names is not None else str
    for r, i in enumerate(indices):
        k = int(e.target[i])
        t = f"pred {name(k)}"
        if true_labels is not None:
            y = int(true_labels[i])
            t += f"\ntrue {name(y)}" + ("" if y == k else "  ✗")
        axes[r, 0].imshow(_hwc_float(images[i]))
        axes[r, 0].set(title=t, xticks=[], yticks=[])
        axes[r, 0].grid(False)
        plot_part_overlay(images[i], e.labels[i].cpu(), e.part_names, ax=axes[r, 1],
                          legend_rows=rows)
        plot_contributions(e, i, ax=axes[r, 2], max_bars=max_bars)
    if suptitle:
        fig.suptitle(suptitle)
    refit_contributions(fig, [(axes[r, 2], e, i, max_bars) for r, i in enumerate(indices)])
    return fig


def plot_part_class_heatmap(table, title: str = "mean part contribution by class",
                            fmt: str = ".2f", center: float = 0.0) -> Figure:
    """Heatmap of a part × class table (e.g. mean contributions); rows parts, columns classes."""
    fig, ax = plt.subplots(figsize=(1.1 * table.shape[1] + 2.5, 0.45 * table.shape[0] + 1.6))
    sns.heatmap(table, annot=True, fmt=fmt, cmap="RdBu_r", center=center, ax=ax,
                cbar_kws={"label": "contribution"}, annot_kws={"fontsize": 8})
    ax.set_title(title)
    ax.tick_params(axis="x", rotation=30, labelsize=8)
    ax.tick_params(axis="y", rotation=0, labelsize=8)
    for label in ax.get_xticklabels():
        label.set_horizontalalignment("right")
    fig.tight_layout()
    return fig


def plot_segmentations(images, maps: Mapping[str, torch.Tensor], part_names: Sequence[str],
                       n: int = 6) -> Figure:
    """Rows of images; columns: the image and one part-map overlay per entry of ``maps``
    (e.g. ``{"ground truth": masks, "PDM": pred}``)."""
    cols = 1 + len(maps)
    fig, axes = plt.subplots(n, cols, figsize=(2.1 * cols + 1.2, 2.1 * n), squeeze=False)
    for r in range(n):
        axes[r, 0].imshow(_hwc_float(images[r]))
        for c, (title, m) in enumerate(maps.items(), start=1):
            axes[r, c].imshow(overlay_parts(images[r], m[r].cpu(), num_labels=len(part_names)))
            if r == 0:
                axes[r, c].set_title(title)
        if r == 0:
            axes[r, 0].set_title("image")
        for ax in axes[r]:
            ax.set(xticks=[], yticks=[])
            ax.grid(False)
    part_legend(part_names, fig=fig, loc="center right", bbox_to_anchor=(1.0, 0.5))
    fig.tight_layout(rect=(0, 0, 1 - 1.1 / (2.1 * cols + 1.2), 1))
    return fig


def plot_iou(iou: Mapping[str, float], title: str = "per-part IoU (test)") -> Figure:
    """Bar chart of per-part IoU, coloured like the part maps, with the mean as a line."""
    names, vals = list(iou), np.array(list(iou.values()))
    fig, ax = plt.subplots(figsize=(0.8 * len(names) + 1.5, 2.8))
    ax.bar(names, vals, color=part_palette(len(names)))
    ax.axhline(vals.mean(), color="k", ls="--", lw=1, label=f"mIoU {vals.mean():.3f}")
    for x, v in enumerate(vals):
        ax.annotate(f"{v:.2f}", (x, v), ha="center", va="bottom", fontsize=8)
    ax.set(ylim=(0, 1.08), ylabel="IoU", title=title)
    ax.legend(loc="lower right")
    ax.tick_params(axis="x", rotation=20)
    fig.tight_layout()
    return fig
