"""Tests of partslib.metrics (SPEC §5 V1-V6).

The core fixture is a model whose part effects are known analytically: a linear model
(``toys.PixelLinearModel``) ``logit_k = b_k + Σ_{c,u} W[k,c,u] x[c,u]`` on images where every
part is a flat colour. Its exact region decomposition is ``c_p = Σ_{u∈p} W_k · x(u)``, and
removing part p by filling it with black (``MeanFill((0,0,0))``) lowers the logit by exactly
``c_p``.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import torch

from partslib.metrics import (
    ORDER_PAD,
    RandomExplainer,
    cascading_randomisation,
    claimed_order,
    completeness_error,
    confusion_matrix,
    decisive_part_accuracy,
    deletion_auc,
    deletion_curve,
    mean_iou,
    netdissect_iou,
    part_iou,
    pointing_game,
    random_order,
    relevance_mass,
    removal_agreement,
    removal_effects,
    spearman,
)
from partslib.removal import MeanFill

from toys import PixelLinearModel, tiny_convnet

P = 4  # parts 1..4, plus background 0
BLACK = MeanFill((0.0, 0.0, 0.0))


def scenes(n: int, size: int = 8, block: int = 2, seed: int = 0, min_parts: int = 2):
    """n images of flat-coloured block parts; every image has >= min_parts present parts."""
    g = torch.Generator().manual_seed(seed)
    c = size // block
    coarse = torch.randint(0, P + 1, (n, c, c), generator=g)
    coarse[:, 0, 0], coarse[:, 0, 1] = 0, 1 + torch.randint(0, P, (n,), generator=g)
    if min_parts < 2:
        coarse[:, 0, 1] = 0
    labels = coarse.repeat_interleave(block, 1).repeat_interleave(block, 2)
    colours = torch.rand(n, P + 1, 3, generator=g) * 0.8 + 0.1
    images = colours.gather(1, labels.reshape(n, -1, 1).expand(-1, -1, 3))
    images = images.reshape(n, size, size, 3).permute(0, 3, 1, 2).contiguous()
    present = torch.nn.functional.one_hot(labels, P + 1).bool().any(1).any(1)
    return images, labels, present


@pytest.fixture(scope="module")
def linear_setup():
    images, labels, present = scenes(64)
    model = PixelLinearModel(3, 8).eval()
    with torch.no_grad():
        logits = model(images)
        targets = logits.argmax(1)
        exact = model.contributions(images, labels, targets, P + 1)
    return model, images, labels, present, targets, logits, exact


# ---------------------------------------------------------------------------- V1

def test_completeness_error_constructed():
    c = torch.tensor([[1.0, 2.0, -0.5], [0.0, 0.0, 0.0], [3.0, -1.0, 0.0]])
    b = torch.tensor([0.5, 0.0, -1.0])
    z = torch.tensor([3.0, 0.0, 1.5])
    err = completeness_error(c, b, z)
    assert err.dtype == torch.float64
    assert err[0] == 0 and err[1] == 0  # exact, and all-zero terms (0/tiny)
    assert math.isclose(float(err[2]), 0.5 / 5.0)  # |−1+2−1.5| / (1 + 3 + 1)


def test_completeness_of_exact_decomposition(linear_setup):
    model, _images, _labels, _present, targets, logits, exact = linear_setup
    err = completeness_error(exact, model.bias[targets].detach(),
                             logits.gather(1, targets[:, None])[:, 0])
    assert err.max() < 1e-5
    with pytest.raises(ValueError, match="bias"):
        completeness_error(exact, model.bias[:2].detach(), logits[:, 0])


# ---------------------------------------------------------------------------- V2

def test_removal_effects_are_exact(linear_setup):
    model, images, labels, present, targets, _logits, exact = linear_setup
    before = images.clone()
    eff = removal_effects(model, images, labels, targets, present, BLACK, batch_size=37)
    assert torch.equal(images, before)
    assert eff.shape == present.shape
    assert torch.isnan(eff[~present]).all() and torch.isfinite(eff[present]).all()
    assert torch.allclose(eff[present], exact[present], atol=1e-5)

    prob = removal_effects(model, images, labels, targets, present, BLACK, score="probability")
    img, part = map(int, present.nonzero()[5])
    drop = torch.zeros(1, P + 1, dtype=torch.bool)
    drop[0, part] = True
    with torch.no_grad():
        p0 = torch.softmax(model(images[[img]]), 1)[0, targets[img]]
        p1 = torch.softmax(model(BLACK(images[[img]], labels[[img]], drop)), 1)[0, targets[img]]
    assert torch.isclose(prob[img, part], p0 - p1, atol=1e-6)


def test_removal_effects_batching_and_keys():
    """Chunks never exceed batch_size and every image travels with its own key."""
    images, labels, present = scenes(10)
    images = images * 0 + torch.arange(10.0).view(10, 1, 1, 1) / 10
    seen = []

    class KeyCheck:
        name = "key_check"

        def __call__(self, imgs, labs, drop, keys=None):
            seen.append(len(imgs))
            assert keys is not None and len(keys) == len(imgs)
            for im, k in zip(imgs, keys):
                assert math.isclose(float(im[0, 0, 0]), int(k) / 10, abs_tol=1e-6)
            return imgs.clone()

    score_fn = lambda x: x.mean((2, 3))  # noqa: E731
    targets = torch.zeros(10, dtype=torch.long)
    eff = removal_effects(score_fn, images, labels, targets, present, KeyCheck(),
                          keys=list(range(10)), batch_size=7)
    assert max(seen) <= 7 and sum(seen) == int(present.sum())
    assert (eff[present] == 0).all()


def test_agreement_of_exact_explainer(linear_setup):
    model, images, labels, present, targets, logits, exact = linear_setup
    eff = removal_effects(model, images, labels, targets, present, BLACK)
    res = removal_agreement(exact, eff, present, logits=logits.gather(1, targets[:, None])[:, 0],
                            bias=model.bias[targets].detach())
    df = res.per_image
    assert list(df.columns) == ["n_present", "spearman", "top_part", "norm_abs_error"]
    assert len(df) == 64 and (df.n_present >= 2).all()
    assert np.allclose(df.spearman, 1.0) and (df.top_part == 1.0).all()
    assert df.norm_abs_error.max() < 1e-4
    assert math.isclose(res.summary["spearman"], 1.0) and res.summary["top_part"] == 1.0
    assert res.summary["n_images"] == 64


def test_agreement_handcrafted():
    present = torch.tensor([[True, True, True, False], [False, True, False, False],
                            [True, True, True, True]])
    claimed = torch.tensor([[3.0, 2.0, 1.0, 9.0], [1.0, 1.0, 1.0, 1.0], [1.0, 1.0, 1.0, 1.0]])
    effects = torch.tensor([[1.0, 2.0, 3.0, math.nan], [5.0, 2.0, 0.0, 0.0],
                            [1.0, 2.0, 3.0, 4.0]])
    res = removal_agreement(claimed, effects, present, logits=torch.tensor([4.0, 3.0, 1.0]),
                            bias=torch.tensor([2.0, 1.0, 1.0]))
    df = res.per_image
    assert df.spearman[0] == -1.0 and df.top_part[0] == 0.0
    assert math.isclose(df.norm_abs_error[0], (2 + 0 + 2) / 3 / 2)
    assert math.isnan(df.spearman[1]) and math.isnan(df.top_part[1])  # one present part
    assert math.isclose(df.norm_abs_error[1], 1 / 2)
    assert math.isnan(df.spearman[2]) and math.isnan(df.norm_abs_error[2])  # constant; 0 scale
    assert res.summary["spearman"] == -1.0 and res.summary["n_images"] == 1
    no_logits = removal_agreement(claimed, effects, present)
    assert no_logits.per_image.norm_abs_error.isna().all()
    with pytest.raises(ValueError, match="present"):
        removal_agreement(claimed[:, :3], effects, present)
    with pytest.raises(ValueError, match="logits"):
        removal_agreement(claimed, effects, present, logits=torch.zeros(2))


def test_spearman_ties_average_ranks():
    assert math.isclose(spearman([1, 2, 2, 3], [1, 2, 3, 4]), 0.9486832980505138)
    assert math.isnan(spearman([1, 1, 1], [1, 2, 3]))
    assert math.isnan(spearman([1.0], [2.0]))


# ---------------------------------------------------------------------------- V3

def test_orders():
    present = torch.tensor([[True, False, True, True, False], [False, True, False, False, False]])
    c = torch.tensor([[0.5, 9.0, 2.0, 0.5, -1.0], [0.0, -3.0, 0.0, 0.0, 0.0]])
    o = claimed_order(c, present)
    assert o.tolist() == [[2, 0, 3, -1, -1], [1, -1, -1, -1, -1]]  # tie 0.5: lower index first
    r1, r2 = random_order(present, seed=1), random_order(present, seed=1)
    assert torch.equal(r1, r2)
    assert sorted(r1[0, :3].tolist()) == [0, 2, 3] and (r1[0, 3:] == ORDER_PAD).all()
    # effects carry NaN for absent parts: the oracle order ignores them
    eff = torch.where(present, c, torch.tensor(math.nan))
    assert torch.equal(claimed_order(eff, present), o)


def test_deletion_curve_analytic():
    """Class 0 against a constant class: after removing the parts in S,
    p = sigmoid(b + Σ_{p∉S} c_p) exactly; rows with fewer parts repeat their last value."""
    images, labels, present = scenes(16, seed=3)
    model = PixelLinearModel(2, 8, seed=1, zero_others=True).eval()
    targets = torch.zeros(16, dtype=torch.long)
    exact = model.contributions(images, labels, targets, P + 1).detach()
    order = claimed_order(exact, present)
    curve = deletion_curve(model, images, labels, targets, order, present, BLACK, batch_size=5)
    assert curve.shape == (16, P + 2)
    b = model.bias[0].detach()
    for i in range(16):
        n = int(present[i].sum())
        remaining = exact[i].clone()
        expect = [torch.sigmoid(b + remaining.sum())]
        for j in range(n):
            remaining[order[i, j]] = 0
            expect.append(torch.sigmoid(b + remaining.sum()))
        expect += [expect[-1]] * (P + 1 - n)
        assert torch.allclose(curve[i], torch.stack(expect), atol=1e-5)
        assert torch.isclose(curve[i, -1], torch.sigmoid(b), atol=1e-5)  # all black


def test_deletion_auc_formula_and_padding():
    curve = torch.tensor([[1.0, 0.5, 0.0, 0.0, 0.0], [1.0, 0.6, 0.2, 0.1, 0.0]])
    auc = deletion_auc(curve, torch.tensor([2, 4]))
    assert math.isclose(float(auc[0]), 0.5)  # (1 + .5 + 0 - .5 - 0) / 2
    assert math.isclose(float(auc[1]), float(np.trapezoid(curve[1].numpy(), dx=1 / 4)),
                        rel_tol=1e-6)
    # padding length does not matter
    longer = torch.cat([curve, curve[:, -1:].expand(2, 3)], 1)
    assert torch.allclose(deletion_auc(longer, torch.tensor([2, 4])), auc)
    assert math.isnan(float(deletion_auc(curve[:1], torch.tensor([0]))[0]))
    with pytest.raises(ValueError, match="n_parts"):
        deletion_auc(curve, torch.tensor([5, 1]))


def test_deletion_greedy_le_claimed_le_random():
    images, labels, present = scenes(200, seed=4)
    model = PixelLinearModel(2, 8, seed=2, zero_others=True).eval()
    targets = torch.zeros(200, dtype=torch.long)
    eff = removal_effects(model, images, labels, targets, present, BLACK)
    g = torch.Generator().manual_seed(0)
    noisy = eff.nan_to_num() + 0.5 * eff.nan_to_num().std() * torch.randn(eff.shape, generator=g)
    n = present.sum(1)
    aucs = {}
    for name, order in {"greedy": claimed_order(eff, present),
                        "claimed": claimed_order(noisy, present),
                        "random": random_order(present, seed=0)}.items():
        curve = deletion_curve(model, images, labels, targets, order, present, BLACK)
        aucs[name] = deletion_auc(curve, n)
    # additive effects + monotone score: the greedy order is pointwise optimal, so per image
    assert (aucs["greedy"] <= aucs["claimed"] + 1e-6).all()
    assert (aucs["greedy"] <= aucs["random"] + 1e-6).all()
    assert aucs["greedy"].mean() < aucs["claimed"].mean() < aucs["random"].mean() - 0.02


def test_deletion_curve_rejects_bad_order(linear_setup):
    model, images, labels, present, targets, _logits, exact = linear_setup
    order = claimed_order(exact, present)
    bad = order.clone()
    absent = (~present[0]).nonzero()
    if len(absent):
        bad[0, 0] = absent[0, 0]
    else:
        bad[0, 0] = bad[0, 1]  # duplicate
    with pytest.raises(ValueError, match="order"):
        deletion_curve(model, images, labels, targets, bad, present, BLACK)
    with pytest.raises(ValueError, match="order"):
        deletion_curve(model, images, labels, targets, order[:, :3], present, BLACK)
    with pytest.raises(ValueError, match="score"):
        deletion_curve(model, images, labels, targets, order, present, BLACK, score="prob")
    with pytest.raises(ValueError, match="targets"):
        deletion_curve(model, images, labels, targets.float(), order, present, BLACK)


# ---------------------------------------------------------------------------- V4

def test_decisive_accuracy_exact(linear_setup):
    model, images, labels, present, targets, _logits, exact = linear_setup
    eff = removal_effects(model, images, labels, targets, present, BLACK)
    top = claimed_order(eff, present)
    decisive = torch.zeros_like(present)
    idx = torch.arange(64)
    # images 0, 4, 8, ...: a present part that is not the top one is decisive
    decisive[idx, top[:, 0]] = idx % 4 != 0
    decisive[idx, top[:, 1]] = idx % 4 == 0
    correct = idx % 5 != 0
    expect = sum(1 for i in range(64) if i % 5 and i % 4) / sum(1 for i in range(64) if i % 5)
    assert decisive_part_accuracy(exact, decisive, correct, present) == expect
    assert decisive_part_accuracy(eff, decisive, correct, present) == expect
    assert math.isnan(decisive_part_accuracy(exact, decisive, torch.zeros_like(correct), present))
    with pytest.raises(ValueError, match="present"):
        decisive_part_accuracy(exact[:, :3], decisive, correct, present)
    with pytest.raises(ValueError, match="bool"):
        decisive_part_accuracy(exact, decisive.long(), correct, present)


# ---------------------------------------------------------------------- chance floor

def test_random_explainer_sits_at_chance():
    N = 1500
    images, labels, present = scenes(N, seed=7)
    model = PixelLinearModel(3, 8, seed=3).eval()
    with torch.no_grad():
        targets = model(images).argmax(1)
    eff = removal_effects(model, images, labels, targets, present, BLACK, batch_size=2048)
    explainer = RandomExplainer(seed=0)
    rnd = explainer(images, targets, present)
    assert (rnd[~present] == 0).all()
    assert torch.equal(RandomExplainer(seed=0)(images, targets, present), rnd)  # seeded
    n = present.sum(1).double()

    agree = removal_agreement(rnd, eff, present).summary
    assert abs(agree["spearman"]) < 0.05
    assert abs(agree["top_part"] - float((1 / n).mean())) < 0.03

    # one decisive part per image (a random present one): chance = E[1 / n_present]
    g = np.random.default_rng(1)
    decisive = torch.zeros_like(present)
    for i in range(N):
        decisive[i, int(g.choice(present[i].nonzero()[:, 0].numpy()))] = True
    correct = torch.ones(N, dtype=torch.bool)
    acc = decisive_part_accuracy(rnd, decisive, correct, present)
    assert abs(acc - float((1 / n).mean())) < 0.03
    # the ceiling: when the decisive part is the top effect, the effects score exactly 1
    top_effect = torch.zeros_like(present).scatter(1, claimed_order(eff, present)[:, :1], True)
    assert decisive_part_accuracy(eff, top_effect, correct, present) == 1.0

    # deletion: the random explainer's order scores like a random order
    sub = slice(0, 300)
    auc = {}
    for name, order in {"explainer": claimed_order(rnd[sub], present[sub]),
                        "random": random_order(present[sub], seed=5)}.items():
        curve = deletion_curve(model, images[sub], labels[sub], targets[sub], order,
                               present[sub], BLACK)
        auc[name] = float(deletion_auc(curve, present[sub].sum(1)).mean())
    assert abs(auc["explainer"] - auc["random"]) < 0.03


# ---------------------------------------------------------------------------- V5

def _cam_explain(labels):
    """Region contributions of the CAM: c_p = mean over pixels of CAM restricted to part p."""
    def explain(model, images, targets):
        with torch.no_grad():
            feats = model.features(images)  # (B,C,H,W)
            cam = torch.einsum("bc,bchw->bhw", model.head.weight[targets], feats)
            onehot = torch.nn.functional.one_hot(labels, P + 1).float()
            contrib = torch.einsum("bhw,bhwp->bp", cam, onehot) / cam[0].numel()
        return contrib, cam
    return explain


def test_cascading_randomisation_tiny_net():
    model = tiny_convnet(seed=123)
    images, labels, present = scenes(8, size=16, block=4, seed=9, min_parts=2)
    model.train()
    with torch.no_grad():
        model(images)  # non-trivial BatchNorm running stats
    model.eval()
    state = {k: v.clone() for k, v in model.state_dict().items()}
    targets = torch.zeros(8, dtype=torch.long)
    rng_before = torch.get_rng_state()
    names = ["head", "features.3", "features.1", "features.0"]
    df = cascading_randomisation(model, names, _cam_explain(labels), images, targets, seed=0,
                                 present=present)
    assert torch.equal(torch.get_rng_state(), rng_before)  # global RNG untouched
    assert not model.training
    for k, v in model.state_dict().items():
        assert torch.equal(v, state[k]), f"input model changed: {k}"
    assert isinstance(df, pd.DataFrame)
    assert list(df.columns) == ["step", "module", "spearman_contrib", "spearman_maps",
                                "spearman_contrib_abs", "spearman_maps_abs"]
    assert df.iloc[0].spearman_contrib_abs == pytest.approx(1.0)
    assert df.step.tolist() == [0, 1, 2, 3, 4] and df.module.tolist()[1:] == names
    assert df.iloc[0].spearman_contrib == pytest.approx(1.0)
    assert df.iloc[0].spearman_maps == pytest.approx(1.0)
    assert np.isfinite(df[["spearman_contrib", "spearman_maps"]].to_numpy()).all()
    last = df.iloc[-1]
    assert last.spearman_contrib < 0.5 and last.spearman_maps < 0.5
    again = cascading_randomisation(model, names, _cam_explain(labels), images, targets, seed=0,
                                    present=present)
    pd.testing.assert_frame_equal(df, again)
    with pytest.raises(ValueError, match="no submodule"):
        cascading_randomisation(model, ["nope"], _cam_explain(labels), images, targets)


def test_cascading_absolute_spearman_sees_a_sign_flip():
    """An explanation whose order survives re-initialisation with its sign flipped: signed
    Spearman -1, absolute +1 (the case the absolute variant exists for)."""
    model = torch.nn.Sequential(torch.nn.Linear(4, 2))
    base = torch.tensor([[3.0, -1.0, 0.5, 2.0], [1.0, 4.0, -2.0, 0.0]])
    maps = torch.tensor([[[0.1, 2.0], [-3.0, 1.0]], [[1.5, -0.5], [2.5, 0.2]]])
    calls = []

    def explain(m, images, targets):
        sign = 1.0 if not calls else -1.0  # the trained model, then every randomised one
        calls.append(sign)
        return sign * base, sign * maps

    df = cascading_randomisation(model, ["0"], explain, torch.zeros(2, 3, 2, 2),
                                 torch.zeros(2, dtype=torch.long))
    after = df.iloc[1]
    assert after.spearman_contrib == pytest.approx(-1.0)
    assert after.spearman_maps == pytest.approx(-1.0)
    assert after.spearman_contrib_abs == pytest.approx(1.0)
    assert after.spearman_maps_abs == pytest.approx(1.0)


def test_cascading_resets_batchnorm():
    model = tiny_convnet()
    with torch.no_grad():
        model.features[1].running_mean.fill_(5.0)
        model.features[1].running_var.fill_(0.01)
    seen = {}

    def explain(m, images, targets):
        seen["bn"] = (m.features[1].running_mean.clone(), m.features[1].running_var.clone())
        out = m(images)
        assert torch.isfinite(out).all()
        return out, None

    images = torch.rand(2, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    df = cascading_randomisation(model.eval(), ["features"], explain, images,
                                 torch.zeros(2, dtype=torch.long))
    assert (seen["bn"][0] == 0).all() and (seen["bn"][1] == 1).all()
    assert (model.features[1].running_mean == 5.0).all()
    assert df.spearman_maps.isna().all()


# ---------------------------------------------------------------------------- V6

def test_confusion_iou_miou():
    gt = torch.tensor([[[0, 0, 1], [1, 2, 255]]])
    pred = torch.tensor([[[0, 1, 1], [1, 2, 2]]])
    cm = confusion_matrix(pred, gt, 3)
    assert cm.tolist() == [[1, 1, 0], [0, 2, 0], [0, 0, 1]]
    iou = part_iou(cm)
    assert torch.allclose(iou, torch.tensor([0.5, 2 / 3, 1.0], dtype=torch.float64))
    assert math.isclose(mean_iou(cm), (0.5 + 2 / 3 + 1) / 3)
    # accumulable: the halves sum to the whole
    cm2 = confusion_matrix(pred[:, :1], gt[:, :1], 3) + confusion_matrix(pred[:, 1:], gt[:, 1:], 3)
    assert torch.equal(cm, cm2)
    # a class never annotated: NaN IoU if never predicted, and left out of the mean
    cm4 = confusion_matrix(pred, gt, 4)
    assert math.isnan(float(part_iou(cm4)[3])) and math.isclose(mean_iou(cm4), mean_iou(cm))
    with pytest.raises(ValueError, match="pred"):
        confusion_matrix(pred + 5, gt, 3)
    with pytest.raises(ValueError, match="shape"):
        confusion_matrix(pred[:, :1], gt, 3)


def test_pointing_game():
    labels = torch.zeros(2, 4, 4, dtype=torch.long)
    labels[0, :2, :2] = 1
    labels[0, 2:, 2:] = 2
    labels[1, :2, :2] = 1  # part 2 absent in image 1
    maps = torch.zeros(2, 2, 4, 4)
    maps[0, 0, 1, 1] = 1.0  # inside part 1: hit
    maps[0, 1, 0, 3] = 1.0  # outside part 2: miss
    maps[1, 0, 0, 0] = 1.0  # hit
    maps[1, 1, 3, 3] = 1.0  # part absent: not counted
    assert math.isclose(pointing_game(maps, labels, [1, 2]), 2 / 3)
    assert math.isnan(pointing_game(maps[:, :1], labels * 0, [1]))
    with pytest.raises(ValueError, match="one class per map channel"):
        pointing_game(maps, labels, [1])


def test_netdissect_iou_dataset_summed():
    g = torch.Generator().manual_seed(0)
    maps = torch.rand(2, 1, 4, 4, generator=g) * 0.5
    labels = torch.zeros(2, 4, 4, dtype=torch.long)
    labels[0, :2, :2] = 1
    labels[1, :2, :2] = 1
    hot0 = [(0, 0), (0, 1), (1, 0), (3, 0), (3, 1), (3, 2)]  # 3 inside, 3 outside
    hot1 = [(0, 0), (3, 3)]  # 1 inside, 1 outside
    for i, hot in ((0, hot0), (1, hot1)):
        for y, x in hot:
            maps[i, 0, y, x] = 1.0 + torch.rand(1, generator=g)
    # 8 hot values of 32: a 25% quantile puts the threshold between cold and hot
    iou = netdissect_iou(maps, labels, [1], quantile=0.25)
    assert math.isclose(float(iou[0]), 4 / (8 + 8 - 4))  # not the per-image mean 0.314
    assert math.isclose(float(netdissect_iou(maps, labels, [1], quantile=0.25, batch_size=1)[0]),
                        1 / 3)


def test_netdissect_iou_bilinear_upsampling():
    """A 2x2 map with one hot cell, upsampled to 4x4 (align_corners=False), gives rows
    (1, .75, .25, 0) x cols; the threshold is the 70th percentile of the *low-res* values
    [0,0,0,1] = 0.1, so 8 pixels pass; the concept is the top-left 2x2 block: IoU 4/8."""
    maps = torch.tensor([[[[1.0, 0.0], [0.0, 0.0]]]])
    labels = torch.zeros(1, 4, 4, dtype=torch.long)
    labels[0, :2, :2] = 3
    iou = netdissect_iou(maps, labels, torch.tensor([3]), quantile=0.3)
    assert math.isclose(float(iou[0]), 0.5)
    labels[0, 0, 0] = 255  # an ignored pixel leaves both tallies
    assert math.isclose(float(netdissect_iou(maps, labels, [3], quantile=0.3)[0]), 3 / 7)


def test_relevance_mass():
    labels = torch.tensor([[[0, 1], [2, 255]], [[0, 1], [1, 1]], [[0, 0], [0, 0]]])
    maps = torch.tensor([[[1.0, 2.0], [-5.0, 1.0]], [[0.0, 1.0], [1.0, 2.0]],
                         [[-1.0, 0.0], [0.0, 0.0]]])
    mass = relevance_mass(maps, labels, num_parts=2)
    assert mass.shape == (3, 3)
    assert torch.allclose(mass[0], torch.tensor([0.25, 0.5, 0.0], dtype=torch.float64))
    assert torch.allclose(mass[1], torch.tensor([0.0, 1.0, 0.0], dtype=torch.float64))
    assert torch.isnan(mass[2]).all()
    with pytest.raises(ValueError, match="outside"):
        relevance_mass(maps, labels, num_parts=1)


# ------------------------------------------------------------------------- properties

from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402


@settings(max_examples=40, deadline=None)
@given(values=st.lists(st.floats(0, 1), min_size=1, max_size=8), pad=st.integers(0, 4))
def test_deletion_auc_is_trapezoid_and_ignores_padding(values, pad):
    n = len(values) - 1
    curve = torch.tensor([values + [values[-1]] * pad], dtype=torch.float64)
    auc = float(deletion_auc(curve, torch.tensor([n]))[0])
    if n == 0:
        assert math.isnan(auc)
    else:
        assert math.isclose(auc, float(np.trapezoid(values, dx=1 / n)), abs_tol=1e-12)


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 2**16), n_parts=st.integers(0, 5))
def test_orders_are_permutations_of_present_parts(seed, n_parts):
    g = torch.Generator().manual_seed(seed)
    present = torch.rand(6, n_parts + 1, generator=g) < 0.6
    contrib = torch.randn(6, n_parts + 1, generator=g).round(decimals=1)  # ties happen
    for order in (claimed_order(contrib, present), random_order(present, seed)):
        for i in range(6):
            k = int(present[i].sum())
            assert sorted(order[i, :k].tolist()) == present[i].nonzero()[:, 0].tolist()
            assert (order[i, k:] == ORDER_PAD).all()
    c = claimed_order(contrib, present)
    for i in range(6):
        k = int(present[i].sum())
        vals = contrib[i, c[i, :k]]
        assert (vals[:-1] >= vals[1:]).all()


# ------------------------------------------------------------------------------ bootstrap

def test_bootstrap_interval_of_a_proportion_matches_its_binomial_width():
    from partslib.metrics.bootstrap import bootstrap_interval

    rng = np.random.default_rng(0)
    hits = (rng.random(400) < 0.3).astype(float)
    p = hits.mean()
    lo, hi = bootstrap_interval(hits, n_resamples=2000, seed=1)
    assert lo < p < hi
    # the normal approximation's 95% half-width, 1.96 sqrt(p(1-p)/n)
    half = 1.96 * np.sqrt(p * (1 - p) / len(hits))
    assert (hi - lo) == pytest.approx(2 * half, rel=0.15)
    assert bootstrap_interval(hits, n_resamples=2000, seed=1) == (lo, hi)  # seeded
    assert bootstrap_interval(hits, n_resamples=2000, seed=2) != (lo, hi)
    assert bootstrap_interval(np.full(50, 0.7)) == pytest.approx((0.7, 0.7))


def test_bootstrap_interval_ignores_nan_and_narrows_with_more_images():
    from partslib.metrics.bootstrap import bootstrap_interval

    rng = np.random.default_rng(3)
    v = rng.normal(0.5, 0.2, 100)
    with_nan = np.concatenate([v, [np.nan] * 20])
    lo, hi = bootstrap_interval(with_nan, seed=0)
    assert lo < np.nanmean(with_nan) < hi and np.isfinite([lo, hi]).all()
    lo4, hi4 = bootstrap_interval(np.tile(v, 4), seed=0)
    assert (hi4 - lo4) == pytest.approx((hi - lo) / 2, rel=0.25)  # width ~ 1/sqrt(n)
    assert all(np.isnan(bootstrap_interval([np.nan, np.nan])))
    with pytest.raises(ValueError, match="level"):
        bootstrap_interval(v, level=95)
    with pytest.raises(ValueError, match="n_resamples"):
        bootstrap_interval(v, n_resamples=0)


def test_bootstrap_intervals_per_group_are_paired():
    from partslib.metrics.bootstrap import bootstrap_intervals

    v = np.random.default_rng(5).random(60)
    df = pd.DataFrame({"method": ["a"] * 60 + ["b"] * 60, "operator": "x",
                       "score": np.concatenate([v, v + 1.0])})
    out = bootstrap_intervals(df, ["method", "operator"], ["score"]).set_index("method")
    assert list(out.columns) == ["operator", "score_lo", "score_hi"]
    # same images, same resamples: b's interval is a's shifted by exactly 1
    assert out.loc["b", "score_lo"] == pytest.approx(out.loc["a", "score_lo"] + 1.0)
    assert out.loc["b", "score_hi"] == pytest.approx(out.loc["a", "score_hi"] + 1.0)
    with pytest.raises(ValueError, match="no column"):
        bootstrap_intervals(df, ["method"], ["nope"])
