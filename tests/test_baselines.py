"""Baselines (Grad-CAM via pytorch-grad-cam, CAM, IBD on a partslib classifier), the 2×2
ablation and table T1."""

import math

import matplotlib
import pandas as pd

matplotlib.use("Agg")

import pytest
import torch
import torch.nn.functional as F

from partslib.baselines import (
    cam_maps,
    fit_ibd,
    gradcam_maps,
    heatmap_part_contributions,
    normalise_maps,
)
from partslib.explain import PartExplainer
from partslib.metrics import confusion_matrix, mean_iou
from partslib.pdm import train_pdm
from partslib.studies.localization import (
    METHODS,
    localization_figure,
    localization_table,
)

from toys import PALETTE, PaletteClassifier, palette_blocks, small_classifier

# The toy classifier (toys.PaletteClassifier): each part has its own colour, so part identity is
# linearly decodable from its final features. Labels are constant on 16×16 blocks (2×2 feature
# cells).

L = len(PALETTE)  # background + 3 parts
NAMES = ["background", "a", "b", "c"]


@pytest.fixture(scope="module")
def toy():
    clf = PaletteClassifier().eval()
    clf.requires_grad_(False)
    torch.manual_seed(0)  # train_pdm initialises its PDM from the global RNG
    images, masks = palette_blocks(48, seed=1)
    ibd = fit_ibd(clf, images, masks, L, n_components=7, epochs=15, seed=0)
    pdm, _ = train_pdm(clf, images, masks, L, epochs=4, widths=[8, 8], image_width=4,
                       image_kernel=1, batch_size=16, lr=5e-3, progress=False)
    return clf, ibd, pdm.eval()


@pytest.fixture(scope="module")
def resnet():
    return small_classifier()


# --------------------------------------------------------------------------- Grad-CAM and CAM


def test_gradcam_library_equals_relu_cam_up_to_scale(resnet):
    """GAP + linear head: Grad-CAM weights are w_k/(h·w), so the library's map is ReLU(CAM)
    through its own scaling: min–max on the grid, bilinear resize, min–max again."""
    x = torch.rand(4, 3, 64, 64, generator=torch.Generator().manual_seed(2))
    t = torch.tensor([0, 1, 3, 4])
    lib = gradcam_maps(resnet, x, t)
    with torch.no_grad():
        A = resnet.features(x)[resnet.final_stage]
    cam = torch.einsum("bc,bchw->bhw", resnet.fc.weight[t], A)
    r = cam.relu()
    r = r - r.amin((1, 2), keepdim=True)
    r = r / (1e-7 + r.amax((1, 2), keepdim=True))
    up = F.interpolate(r[:, None], size=(64, 64), mode="bilinear", align_corners=False)[:, 0]
    up = up - up.amin((1, 2), keepdim=True)
    up = up / (1e-7 + up.amax((1, 2), keepdim=True))
    assert lib.shape == (4, 64, 64) and lib.dtype == torch.float32
    torch.testing.assert_close(lib, up, atol=1e-4, rtol=0)
    # cam_maps is that CAM upsampled, and its mean is the logit minus the bias
    cm = cam_maps(resnet, x, t)
    torch.testing.assert_close(cm, F.interpolate(cam[:, None], size=(64, 64), mode="bilinear",
                                                 align_corners=False)[:, 0])
    logits = resnet(x)
    torch.testing.assert_close(cam.mean((1, 2)) + resnet.fc.bias[t],
                               logits[torch.arange(4), t], atol=1e-5, rtol=0)
    # targets=None explains the predicted class
    torch.testing.assert_close(gradcam_maps(resnet, x), gradcam_maps(resnet, x, logits.argmax(1)))


def test_gradcam_releases_hooks_and_leaves_classifier_as_it_was(resnet):
    layer = getattr(resnet, resnet.final_stage)
    x = torch.rand(3, 3, 64, 64, generator=torch.Generator().manual_seed(3))
    hooks = (len(resnet._forward_hooks), len(layer._forward_hooks),
             len(layer._backward_hooks))
    resnet.train()
    try:
        for _ in range(2):
            gradcam_maps(resnet, x, 1)
            assert (len(resnet._forward_hooks), len(layer._forward_hooks),
                    len(layer._backward_hooks)) == hooks
        assert resnet.training  # the library sets eval(); the mode is restored
    finally:
        resnet.eval()
    assert all(p.requires_grad and p.grad is None for p in resnet.parameters())
    resnet.requires_grad_(False)  # a frozen classifier (as load_classifier returns) works too
    try:
        assert gradcam_maps(resnet, x, 1).shape == (3, 64, 64)
        assert not any(p.requires_grad for p in resnet.parameters())
    finally:
        resnet.requires_grad_(True)


@pytest.mark.parametrize("method", ["gradcam++", "eigencam", "layercam"])
def test_other_library_methods(resnet, method):
    x = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(4))
    m = gradcam_maps(resnet, x, [0, 1], method=method, batch_size=1)
    assert m.shape == (2, 64, 64) and m.min() >= 0 and m.max() <= 1 + 1e-6


def test_gradcam_rejects_unknown_method(resnet):
    with pytest.raises(ValueError, match="gradcam"):
        gradcam_maps(resnet, torch.rand(1, 3, 64, 64), method="nope")


def test_normalise_maps():
    m = torch.tensor([[[1.0, 3.0], [2.0, 5.0]], [[2.0, 2.0], [2.0, 2.0]]])
    n = normalise_maps(m)
    torch.testing.assert_close(n[0], torch.tensor([[0.0, 0.5], [0.25, 1.0]]))
    assert torch.equal(n[1], torch.zeros(2, 2))


# --------------------------------------------------------------------------- heatmap mass


def test_heatmap_part_contributions_on_a_hand_made_map():
    labels = torch.tensor([[[0, 1, 1, 2],
                            [0, 1, 255, 2]]])
    maps = torch.tensor([[[1.0, 2.0, 0.0, 3.0],
                          [-5.0, 1.0, 1.0, 2.0]]])  # positive mass 10; -5 is ignored
    c = heatmap_part_contributions(maps, labels, num_labels=4)
    assert c.shape == (1, 4)
    torch.testing.assert_close(c[0], torch.tensor([0.1, 0.3, 0.5, 0.0], dtype=torch.float64))
    assert math.isclose(float(c.sum()), 0.9)  # 0.1 sits on the unannotated pixel
    # scale-free, and a map without positive mass credits no part
    torch.testing.assert_close(heatmap_part_contributions(7 * maps, labels, 4), c)
    assert torch.equal(heatmap_part_contributions(-maps.abs(), labels, 4),
                       torch.zeros(1, 4, dtype=torch.float64))


# --------------------------------------------------------------------------- IBD


def test_fit_ibd_segments_linearly_decodable_parts(toy):
    _, ibd, _ = toy
    assert ibd.concept_classifiers.concepts == (0, 1, 2, 3)  # background is a concept too
    assert ibd.part_concepts == (1, 2, 3)  # ... but the decomposition uses parts only
    assert ibd.n_components_requested == 7 and ibd.decomposition.n_components == 3  # capped
    images, masks = palette_blocks(16, seed=5)
    seg = ibd.segment(images)
    assert seg.shape == (16, 64, 64)
    assert mean_iou(confusion_matrix(seg, masks, L)) > 0.8
    maps = ibd.linear_maps(images)
    assert maps.shape == (16, L, 64, 64)
    assert ibd.linear_scores(images).shape == (16, L, 8, 8)
    torch.testing.assert_close(ibd.part_probs(images).sum(1), torch.ones(16, 64, 64))


def test_ibd_contributions_complete_and_per_part(toy):
    clf, ibd, _ = toy
    images, _ = palette_blocks(8, seed=6)
    c = ibd.contributions(images)
    assert c.contributions.shape == (8, L)
    assert torch.equal(c.targets, clf(images).argmax(1))
    assert torch.all(c.contributions[:, 0] == 0)  # background is not in IBD's basis
    # the reference identity: components + residual = cosine; in logit units, completeness
    torch.testing.assert_close(c.contributions.sum(1) + c.residual, c.total)
    assert c.completeness_error().max() < 1e-5
    torch.testing.assert_close(c.percentages.sum(1) + 100 * c.residual / c.total,
                               torch.full((8,), 100.0))
    maps, parts = ibd.heatmaps(images, c.targets)
    assert maps.shape == (8, 3, 64, 64) and parts.shape == (8, 3)
    assert sorted(parts[0].tolist()) == [1, 2, 3] and maps.max() <= 1
    # each heatmap is its part's ReLU'd linear score (upsampled), scaled or gated to 0
    relu = F.interpolate(ibd.linear_scores(images).relu(), size=(64, 64), mode="bilinear",
                         align_corners=False)
    for b in range(8):
        for i, p in enumerate(parts[b].tolist()):
            ref = relu[b, p]
            ratio = (maps[b, i] * ref).sum() / (ref * ref).sum().clamp_min(1e-12)
            torch.testing.assert_close(maps[b, i], ratio * ref, atol=1e-5, rtol=0)


def test_fit_ibd_label_missing_from_grid_warns():
    clf = PaletteClassifier().eval()
    images, masks = palette_blocks(8, seed=7)
    masks = torch.where(masks == 3, 0, masks)
    masks[:, 0, :] = 3  # row 0 is never a grid sample (rows 4, 12, ...)
    with pytest.warns(UserWarning, match=r"\[3\]"):
        ibd = fit_ibd(clf, images, masks, L, epochs=2)
    assert ibd.missing_labels == [3] and ibd.part_concepts == (1, 2)
    assert torch.isneginf(ibd.linear_maps(images[:2])[:, 3]).all()
    assert not (ibd.segment(images[:2]) == 3).any()
    assert torch.all(ibd.contributions(images[:2]).contributions[:, 3] == 0)


# --------------------------------------------------------------------------- 2×2 ablation


def test_ablation_2x2_through_the_registry(toy):
    """SPEC §4's {linear, PDM maps} x {basis, region rule} cells, as T2 runs them."""
    from partslib.explain import explain_methods

    clf, ibd, pdm = toy
    images, _ = palette_blocks(6, seed=8)
    cells = ("ibd", "pdm-basis", "ibd-linear-region", "pdm-region-soft")
    ex = explain_methods(clf, images, cells, pdm=pdm, ibd=ibd)
    for m in cells:
        assert ex[m].contributions.shape == (6, L), m
    e = PartExplainer(clf, pdm)(images, mode="region")
    assert torch.equal(ex["pdm-region-soft"].contributions, e.contributions)
    # the basis rule never reads a map
    assert torch.equal(ex["pdm-basis"].contributions, ex["ibd"].contributions)
    for m in ("ibd-linear-region", "pdm-region-soft"):  # region cells are complete
        assert ex[m].completeness_error().max() <= 1e-5
    basis = ibd.contributions(images, e.target)  # basis cells: complete with IBD's residual
    torch.testing.assert_close(ex["ibd"].contributions, basis.logit_contributions.float())
    torch.testing.assert_close(ex["ibd"].bias + ex["ibd"].contributions.sum(1)
                               + basis.logit_residual.float(), e.score, atol=1e-4, rtol=0)


# --------------------------------------------------------------------------- table T1


def test_localization_table(toy):
    clf, ibd, pdm = toy
    images, masks = palette_blocks(10, seed=9)
    masks[0, :2] = 255  # unannotated pixels are left out
    decisive = torch.zeros(10, L, dtype=torch.bool)
    decisive[:, 1] = True
    for dec in (None, decisive):
        df = localization_table(clf, pdm, ibd, images, masks, NAMES, targets=0, decisive=dec,
                                batch_size=4)
        assert list(df.method) == list(METHODS)
        expected = {"method", "mIoU", "pointing_game", "region_iou", "region_pointing",
                    "netdissect_mean", *(f"iou:{n}" for n in NAMES),
                    *(f"netdissect:{n}" for n in NAMES)}
        assert set(df.columns) == expected
        values = df.drop(columns="method").to_numpy(dtype=float)
        finite = values[~(values != values)]
        assert ((finite >= 0) & (finite <= 1)).all()
        seg = df.set_index("method")
        assert seg.loc["IBD linear maps", "mIoU"] > 0.8
        assert not math.isnan(seg.loc["PDM", "mIoU"])
        assert math.isnan(seg.loc["Grad-CAM (thresholded)", "mIoU"])
        assert not seg["region_iou"].isna().any()
    assert df.attrs["region"] == "decisive parts"


def test_localization_table_rows_for_extra_pdms(toy):
    """A second PDM gets a row of its own after ``PDM``; the same PDM twice gives the same
    numbers, so each row reads its own PDM."""
    clf, ibd, pdm = toy
    images, masks = palette_blocks(8, seed=3)
    df = localization_table(clf, pdm, ibd, images, masks, NAMES, targets=0, batch_size=4,
                            extra_pdms={"PDM, features only": pdm})
    assert list(df.method) == ["PDM", "PDM, features only", *METHODS[1:]]
    rows = df.set_index("method")
    pd.testing.assert_series_equal(rows.loc["PDM"], rows.loc["PDM, features only"],
                                   check_names=False)
    with pytest.raises(ValueError, match="'other' segments 3 labels"):
        localization_table(clf, pdm, ibd, images, masks, NAMES, targets=0,
                           extra_pdms={"other": _relabelled(pdm, 3)})


def _relabelled(pdm, num_labels):
    import copy

    other = copy.deepcopy(pdm)
    other.num_labels = num_labels
    return other


def test_localization_figure(toy):
    import matplotlib.pyplot as plt

    clf, ibd, pdm = toy
    images, masks = palette_blocks(3, seed=10)
    fig = localization_figure(clf, pdm, ibd, images, masks, NAMES, n=2)
    assert len(fig.axes) == 2 * 6
    plt.close(fig)
