"""Figures for the notebooks: sample grids with part masks, confusion matrices, learning curves.

Every function returns a ``matplotlib.figure.Figure`` and shows nothing by itself; save it with
:func:`save_figure`. Nothing else in partslib imports this module.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import seaborn as sns
import torch
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator
from matplotlib.patches import Patch

__all__ = ["set_style", "part_palette", "overlay_parts", "plot_samples", "plot_confusion",
           "plot_history", "save_figure"]


def set_style() -> None:
    """The seaborn look used by all figures of the study."""
    sns.set_theme(context="notebook", style="whitegrid", font_scale=0.9)


def part_palette(num_labels: int) -> np.ndarray:
    """RGB colours ``[num_labels, 3]`` in [0, 1]; label 0 (background) is dark grey."""
    colours = np.array(sns.color_palette("tab10", max(num_labels - 1, 1)))[: num_labels - 1]
    return np.vstack([[0.2, 0.2, 0.2], colours])


def overlay_parts(image: np.ndarray | torch.Tensor, mask: np.ndarray | torch.Tensor,
                  alpha: float = 0.55) -> np.ndarray:
    """Blend part colours over an image: ``image`` uint8/float ``[3,H,W]`` or ``[H,W,3]``,
    ``mask`` ``[H,W]`` labels (0 = background, left as is). Returns float ``[H,W,3]`` in [0,1]."""
    img = _hwc_float(image)
    m = np.asarray(mask).astype(np.int64)
    colours = part_palette(int(m.max()) + 1 if m.size else 1)
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
    acc_keys = [k for k in history[0] if k.endswith("accuracy")]
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
        axes[0, 1].set(xlabel="epoch", ylabel="accuracy", title="accuracy", ylim=(0, 1.02))
        axes[0, 1].legend()
    for ax in axes.flat:
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    fig.tight_layout()
    return fig


def save_figure(fig: Figure, path: str | os.PathLike, dpi: int = 120) -> Path:
    """Save ``fig`` as PNG (parent folders created) and return the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=dpi, bbox_inches="tight")
    return path
