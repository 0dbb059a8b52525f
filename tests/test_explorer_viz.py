import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt
import pandas as pd
import pytest
import torch

from partslib import viz
from partslib.explain import PartExplainer
from partslib.explain.amortised import ContributionHead
from partslib.explorer import (
    EXPLORER_MODES,
    ExplorerState,
    build_explorer,
    default_mode,
    explorer_modes,
    render,
)

from toys import random_images, small_classifier, small_pdm

NAMES = ["background", "head", "body", "tail"]
CLASSES = ["a", "b", "c"]


@pytest.fixture(scope="module")
def setup():
    clf = small_classifier(num_classes=3)
    pdm = small_pdm(clf, len(NAMES), image_width=0)
    images = random_images(4, seed=0)
    with torch.random.fork_rng():
        torch.manual_seed(0)
        head = ContributionHead(clf.fc.in_features, len(NAMES), 3, hidden=8)
    return PartExplainer(clf, pdm, NAMES, head=head.eval()), images


def test_modes_follow_the_explainer(setup):
    ex, _ = setup
    assert default_mode(ex) == "pdm-amortised"  # the default rule, with a head
    plain = PartExplainer(ex.classifier, ex.segmenter, NAMES)
    assert default_mode(plain) == "pdm-region-soft"
    assert "pdm-amortised" not in explorer_modes(plain)
    with pytest.raises(ValueError, match="mode must be one of"):
        render(plain, random_images(2, seed=1), ExplorerState(mode="pdm-amortised"))


@pytest.mark.parametrize("mode", list(EXPLORER_MODES))
def test_render_every_mode(setup, mode):
    ex, images = setup
    fig = render(ex, images, ExplorerState(index=2, target=1, mode=mode), CLASSES, [0, 1, 2, 0])
    assert mode in ("pdm-amortised", "pdm-shapley", "pdm-region-soft", "pdm-region-hard",
                    "pdm-occlusion", "pdm-region-soft-contrastive", "pdm-occlusion-contrastive",
                    "captum-ablation", "captum-shapley")
    titles = [ax.get_title() for ax in fig.axes]
    assert titles[0].startswith("#2: explain b")
    assert "true c" in titles[0]
    assert titles[2].startswith("P(")
    plt.close(fig)


def test_render_rejects_bad_state(setup):
    ex, images = setup
    with pytest.raises(ValueError, match="out of range"):
        render(ex, images, ExplorerState(index=9))
    with pytest.raises(ValueError, match="mode"):
        render(ex, images, ExplorerState(mode="magic"))


def test_widgets_drive_the_state_without_a_browser(setup):
    pytest.importorskip("ipywidgets")
    ex, images = setup
    box = build_explorer(ex, images, CLASSES, [0, 1, 2, 0])
    assert box.render_state() == ExplorerState(mode="pdm-amortised")
    (w_index, w_target), (w_mode, w_part) = box.children[0].children, box.children[1].children
    w_index.value = 3
    w_target.value = 2
    assert w_mode.label == "amortised (default)"  # display names shown, registry names kept
    w_mode.value = "pdm-occlusion"
    assert w_mode.label == "occlusion (blur)"
    w_part.value = 1
    assert box.render_state() == ExplorerState(index=3, target=2, mode="pdm-occlusion", part=1)
    plt.close("all")


def test_explanation_figures(setup):
    ex, images = setup
    e = ex(images)
    fig = viz.plot_explanation(e, images, 1, CLASSES, true_label=0)
    assert len(fig.axes) == 3 and "explained" in fig.axes[0].get_title()
    fig2 = viz.plot_gallery(e, images, [0, 3], CLASSES, torch.tensor([0, 1, 2, 0]))
    assert len(fig2.axes) == 6
    table = e.to_dataframe(CLASSES).pivot_table(index="part", columns="target",
                                                values="contribution")
    fig3 = viz.plot_part_class_heatmap(table)
    assert fig3.axes[0].get_title().startswith("mean part contribution")
    fig4 = viz.plot_segmentations(images, {"PDM": e.labels}, NAMES, n=2)
    assert len(fig4.axes) == 4
    fig5 = viz.plot_iou({"background": 0.9, "head": 0.5})
    assert "mIoU 0.700" in fig5.axes[0].get_legend().get_texts()[0].get_text()
    for f in (fig, fig2, fig3, fig4, fig5):
        plt.close(f)
    assert isinstance(table, pd.DataFrame)
