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
                      title: str = "parts", legend: bool = True, alpha: float = 0.6) -> Axes:
    """The image with its part map blended over it, and a legend of the parts it shows."""
    if ax is None:
        _, ax = plt.subplots(figsize=(3, 3))
    ax.imshow(overlay_parts(image, labels, alpha=alpha, num_labels=len(part_names)))
    ax.set(title=title, xticks=[], yticks=[])
    ax.grid(False)
    if legend:
        shown: list[int] = sorted(set(np.unique(np.asarray(labels)).tolist()) - {0, 255})
        colours = part_palette(len(part_names))
        ax.legend(handles=[Patch(color=colours[p], label=part_names[p]) for p in shown],
                  fontsize=7, frameon=True, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    return ax


def plot_contributions(explanation, i: int = 0, ax: Axes | None = None,
                       title: str | None = None) -> Axes:
    """Horizontal bars of one image's part contributions, coloured like the part map.

    The title states the explained score and, in region mode, ``bias + Σ c_p = score``.
    """
    e = explanation
    if ax is None:
        _, ax = plt.subplots(figsize=(3.6, 2.8))
    c = e.contributions[i].detach().cpu().numpy()
    present = e.present[i].cpu().numpy()
    names = [n for n, p in zip(e.part_names, present) if p]
    vals = c[present]
    colours = part_palette(len(e.part_names))[present]
    order = np.argsort(-vals, kind="stable")
    ax.barh(np.arange(len(order)), vals[order], color=colours[order])
    ax.set_yticks(np.arange(len(order)), [names[j] for j in order], fontsize=8)
    ax.invert_yaxis()
    ax.axvline(0, color="k", lw=0.8)
    shares = e.shares[i].cpu().numpy()[present]
    for y, j in enumerate(order):
        ax.annotate(f"{100 * shares[j]:+.0f}%", (vals[j], y), fontsize=7, va="center",
                    ha="left" if vals[j] >= 0 else "right",
                    xytext=(3 if vals[j] >= 0 else -3, 0), textcoords="offset points")
    lo, hi = min(vals.min(), 0), max(vals.max(), 0)
    pad = 0.25 * (hi - lo + 1e-9)
    ax.set_xlim(lo - pad, hi + pad)
    score = float(e.score[i])
    if title is None:
        title = f"{e.mode}\nscore {score:.2f}"
        if not np.isnan(float(e.bias[i])):
            title += f" = bias {float(e.bias[i]):.2f} + Σc {float(c.sum()):.2f}"
    ax.set_title(title, fontsize=8)
    ax.set_xlabel("contribution to the score", fontsize=8)
    return ax


def plot_explanation(explanation, images, i: int = 0, class_names: Sequence[str] | None = None,
                     true_label: int | None = None) -> Figure:
    """The panel image | parts | contributions for image ``i`` of an explanation."""
    e = explanation
    fig, axes = plt.subplots(1, 3, figsize=(10.5, 3.0),
                             gridspec_kw={"width_ratios": [1, 1.45, 1.6]})
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
    plot_part_overlay(images[i], e.labels[i].cpu(), e.part_names, ax=axes[1])
    plot_contributions(e, i, ax=axes[2])
    fig.tight_layout()
    return fig


def plot_gallery(explanation, images, indices: Sequence[int],
                 class_names: Sequence[str] | None = None,
                 true_labels: Sequence[int] | torch.Tensor | None = None,
                 suptitle: str | None = None) -> Figure:
    """Rows of (image, parts, contribution bars) for several images of one explanation."""
    e = explanation
    n = len(indices)
    fig, axes = plt.subplots(n, 3, figsize=(10.5, 2.7 * n), squeeze=False,
                             gridspec_kw={"width_ratios": [1, 1.45, 1.6]})
    name = (lambda k: class_names[k]) if class_names is not None else str
    for row, i in enumerate(indices):
        k = int(e.target[i])
        t = f"pred {name(k)}"
        if true_labels is not None:
            y = int(true_labels[i])
            t += f"\ntrue {name(y)}" + ("" if y == k else "  ✗")
        axes[row, 0].imshow(_hwc_float(images[i]))
        axes[row, 0].set(title=t, xticks=[], yticks=[])
        axes[row, 0].grid(False)
        plot_part_overlay(images[i], e.labels[i].cpu(), e.part_names, ax=axes[row, 1])
        plot_contributions(e, i, ax=axes[row, 2])
    if suptitle:
        fig.suptitle(suptitle)
    fig.tight_layout()
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
