"""Contribution charts add up and stay readable: every contributing part (or an explicit
"other parts" bar) is drawn, the bars sum to the Σc of the title, no labels overlap at 18 and
30 parts, and a part map of background only does not draw an empty legend."""

import itertools
import re

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt
import numpy as np
import pytest
import torch
from matplotlib.patches import Rectangle

from partslib import viz
from partslib.explain.explanation import PartExplanation


def synthetic_explanation(num_parts: int, present: int, batch: int = 3, seed: int = 0,
                          bias: float = 0.02) -> PartExplanation:
    """``num_parts`` parts + background; only the first ``present`` parts win argmax pixels,
    every label has a non-zero contribution (as a soft rule gives to parts without pixels)."""
    g = torch.Generator().manual_seed(seed)
    L, H = num_parts + 1, 32
    labels = torch.zeros(batch, H, H, dtype=torch.long)
    for b in range(batch):
        for p in range(1, present + 1):
            r = (p - 1) % 6
            c = (p - 1) // 6
            labels[b, 5 * r:5 * r + 4, 5 * c:5 * c + 4] = p
    contributions = torch.randn(batch, L, generator=g) * torch.rand(batch, L, generator=g)
    score = bias + contributions.sum(1)
    probs = torch.softmax(torch.randn(batch, L, H, H, generator=g), 1)
    return PartExplanation(
        part_names=["background"] + [f"part number {p}" for p in range(1, L)],
        part_probs=probs, labels=labels, contributions=contributions, score=score,
        bias=torch.full((batch,), bias), target=torch.zeros(batch, dtype=torch.long),
        contrast=None, mode="pdm-region-soft", logits=torch.randn(batch, 3, generator=g))


def bar_heights(ax) -> np.ndarray:
    """The widths of the horizontal bars drawn on ``ax`` (their values)."""
    return np.array([p.get_width() for p in ax.patches if isinstance(p, Rectangle)])


def title_sum(ax) -> float:
    match = re.search(r"Σc (-?[0-9.]+)", ax.get_title())
    assert match, ax.get_title()
    return float(match.group(1))


@pytest.mark.parametrize("max_bars", [None, 6])
def test_bars_sum_to_the_title_when_parts_win_no_pixel(max_bars):
    e = synthetic_explanation(num_parts=8, present=2)
    assert (~e.present[0] & (e.contributions[0] != 0)).sum() == 6  # contribute, no pixel
    fig, ax = plt.subplots(figsize=(4, 6))
    viz.plot_contributions(e, 0, ax=ax, **({} if max_bars is None else {"max_bars": max_bars}))
    heights = bar_heights(ax)
    sigma = float(e.contributions[0].double().sum())
    assert heights.sum() == pytest.approx(sigma, abs=1e-6)
    assert title_sum(ax) == pytest.approx(sigma, abs=5e-3)  # as printed, 2 decimals
    labels = [t.get_text() for t in ax.get_yticklabels()]
    if max_bars is None:
        assert len(heights) == 9 and not any(lab.startswith("other") for lab in labels)
    else:
        assert len(heights) == 6 and labels[-1] == "other parts (4)"
        kept = np.sort(np.abs(e.contributions[0].numpy()))[::-1][:5]
        assert np.sort(np.abs(heights[:-1]))[::-1] == pytest.approx(kept)
    assert "hatched" in ax.get_xlabel()
    plt.close(fig)


def test_bars_of_rule_without_bias_sum_to_the_title():
    e = synthetic_explanation(num_parts=5, present=1, bias=float("nan"))
    ax = viz.plot_contributions(e, 1)
    assert bar_heights(ax).sum() == pytest.approx(float(e.contributions[1].double().sum()),
                                                  abs=1e-6)
    assert ", Σc" in ax.get_title()
    plt.close("all")


def test_contribution_bars_reject_bad_arguments():
    e = synthetic_explanation(num_parts=3, present=1)
    with pytest.raises(ValueError, match="i=5 is out of range"):
        viz.contribution_bars(e, 5)
    with pytest.raises(ValueError, match="max_bars must be >= 2"):
        viz.contribution_bars(e, 0, max_bars=1)


def test_background_only_legend_says_so():
    names = ["background", "head", "tail"]
    ax = viz.plot_part_overlay(torch.rand(3, 16, 16), torch.zeros(16, 16, dtype=torch.long),
                               names)
    legend = ax.get_legend()
    assert legend is not None
    texts = [t.get_text() for t in legend.get_texts()]
    assert texts == ["background only: no part found"]
    plt.close("all")


def _overlaps(fig, texts) -> list[tuple[str, str]]:
    renderer = fig.canvas.get_renderer()
    boxes = [(t.get_text(), t.get_window_extent(renderer)) for t in texts
             if t.get_visible() and t.get_text()]
    return [(a, b) for (a, ba), (b, bb) in itertools.combinations(boxes, 2)
            if ba.overlaps(bb) and ba.intersection(ba, bb).width * ba.intersection(ba, bb).height
            > 0.5]


def _chart_texts(ax) -> list:
    return list(ax.get_yticklabels()) + list(ax.texts)


@pytest.mark.parametrize("num_parts", [18, 30])
def test_charts_stay_readable_at_many_parts(num_parts):
    e = synthetic_explanation(num_parts=num_parts, present=num_parts, batch=3, seed=1)
    charts = [(viz.plot_contributions(e, 0), 0)]  # its own figure: sized to every bar
    assert len(charts[0][0].get_yticklabels()) == num_parts + 1
    fig = viz.plot_gallery(e, torch.rand(3, 3, 32, 32), [0, 1, 2], ["a", "b", "c"])
    charts += [(fig.axes[3 * r + 2], r) for r in range(3)]
    fig2 = viz.plot_explanation(e, torch.rand(3, 3, 32, 32), 2, ["a", "b", "c"])
    charts.append((fig2.axes[2], 2))
    for ax, i in charts:
        ax.figure.canvas.draw()
        texts = _chart_texts(ax)
        assert len(texts) >= 2 * 12
        assert _overlaps(ax.figure, texts) == []
        assert min(t.get_fontsize() for t in texts) >= 7
        assert bar_heights(ax).sum() == pytest.approx(float(e.contributions[i].double().sum()),
                                                      abs=1e-6)
    for fig_, overlay, chart in ((fig, fig.axes[1], fig.axes[2]), (fig, fig.axes[4], fig.axes[5]),
                                 (fig2, fig2.axes[1], fig2.axes[2])):
        renderer = fig_.canvas.get_renderer()
        legend = overlay.get_legend()
        assert legend is not None
        box = legend.get_window_extent(renderer)
        assert not any(box.overlaps(t.get_window_extent(renderer)) for t in _chart_texts(chart))
        assert box.x1 < chart.get_window_extent(renderer).x0  # beside the image, left of bars
    gallery_labels = [t.get_text() for t in fig.axes[2].get_yticklabels()]
    assert len(gallery_labels) == 12 and gallery_labels[-1].startswith("other parts")
    plt.close("all")

