"""The FunnyBirds study over the registry: re-render predict, ground-truth and PDM parts, the
distractor split, and an explanation that is the measured single-removal effects (SD = 1)."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from partslib.data.synthparts import SynthParts, SynthPartsConfig
from partslib.explain.core import FixedMapsSegmenter
from partslib.metrics.funnybirds import PartImportance, single_removals
from partslib.metrics.funnybirds_protocol import funnybirds_checks, funnybirds_setup
from partslib.studies import funnybirds as fb
from tests.toys import random_ibd, small_classifier, small_pdm

N = 6


@pytest.fixture(scope="module")
def split() -> SynthParts:
    return SynthParts(SynthPartsConfig.funnybirds(), seed=1, n=N, progress=False)


@pytest.fixture(scope="module")
def models(split):
    clf = small_classifier(num_classes=split.cfg.num_classes, seed=0)
    pdm = small_pdm(clf, split.cfg.num_parts + 1, seed=0)
    return clf, pdm


def test_fixed_maps_segmenter_returns_the_masks(split):
    images, masks, _ = split.tensors()
    seg = FixedMapsSegmenter(masks, split.cfg.num_parts + 1)
    probs = seg(None, {}, images).softmax(1)  # type: ignore[arg-type]
    assert torch.equal(probs, F.one_hot(masks, 6).permute(0, 3, 1, 2).float())
    with pytest.raises(ValueError, match="one batch"):
        seg(None, {}, images[:2])  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="labels in 0..5"):
        FixedMapsSegmenter(masks + 6, 6)


def test_distractor_split_gives_each_distractor_its_region(split):
    data = fb.funnybirds_data(split, N)
    assert bool(data.distractor_present.any())
    seg = fb.DistractorSplitSegmenter(FixedMapsSegmenter(data.masks, 6), data.objects,
                                      data.num_distractors)
    labels = seg(None, {}, data.images).softmax(1).argmax(1)  # type: ignore[arg-type]
    want = data.masks.clone()
    on = data.objects > 0
    want[on] = 5 + data.objects[on]  # label P + 1 + d for distractor d (objects = d + 1)
    assert torch.equal(labels, want)
    # a visible distractor lies on the background of the ground-truth map
    assert bool((data.masks[on] == 0).all())


def test_rerender_predict_keeps_the_intact_image(split, models):
    clf, _ = models
    data = fb.funnybirds_data(split, N)
    predict = fb.ReRenderPredict(data, clf)
    pos = torch.arange(N)
    none_p = torch.zeros(N, 6, dtype=torch.bool)
    none_d = torch.zeros(N, data.num_distractors, dtype=torch.bool)
    with torch.no_grad():
        want = clf(data.images).double()
    assert torch.allclose(predict(pos, none_p, none_d), want, atol=1e-6)
    drop = none_p.clone()
    drop[:, 2] = True
    a = predict(pos, drop, none_d)
    calls = predict.calls
    assert torch.equal(predict(pos, drop, none_d), a) and predict.calls == calls  # cached
    assert not torch.allclose(a, want)


def test_study_runs_for_two_methods_and_both_part_sources(split, models):
    clf, pdm = models
    ibd = random_ibd(clf, 6)
    study = fb.run_funnybirds(split, clf, pdm, ibd, methods=["pdm-region-soft", "ibd"],
                              n_images=N)
    assert len(study.wide) == 4
    assert set(zip(study.wide.method, study.wide.parts)) == {
        (m, s) for m in ("pdm-region-soft", "ibd") for s in ("gt", "pdm")}
    assert set(study.table.check) == set(fb.CHECKS)
    for col in ("PC", "DC", "D", "threshold"):
        assert study.wide[col].between(0, 1).all(), col
    # CSDC (and so Com) is NaN only when no image is classified correctly (untrained model)
    assert (study.wide.Com.isna() == study.wide.CSDC.isna()).all()
    assert (study.wide.CSDC.isna() == (study.wide.n_csdc == 0)).all()
    assert (study.wide.n == N).all()
    # the basis rule reads no map: GT and own parts give the same numbers
    ibd_rows = study.wide[study.wide.method == "ibd"].set_index("parts")
    assert ibd_rows.loc["gt", "SD"] == pytest.approx(ibd_rows.loc["pdm", "SD"], nan_ok=True)
    metrics = fb.metrics_dict(study.wide)
    assert "funnybirds/pdm-region-soft/gt/Com" in metrics
    assert len(metrics) == 4 * len(fb.CHECKS)


def test_region_rule_gt_and_pdm_importances_differ_and_are_complete(split, models):
    clf, pdm = models
    data = fb.funnybirds_data(split, N)
    pos, tgt = torch.arange(N), data.labels
    gt = fb.importance_fn("pdm-region-soft", "gt", data, clf, fb.PDMSegmenter(pdm))(pos, tgt)
    own = fb.importance_fn("pdm-region-soft", "pdm", data, clf, fb.PDMSegmenter(pdm))(pos, tgt)
    assert gt.distractors is not None and gt.distractors.shape == (N, data.num_distractors)
    # absent distractor slots get nothing
    assert bool((gt.distractors[~data.distractor_present] == 0).all())
    # completeness: parts (background with its distractors) + bias = logit, for both sources
    with torch.no_grad():
        logits = clf(data.images).double()
    bias = clf.fc.bias.detach().double()[tgt]
    score = logits[pos, tgt]
    assert torch.allclose(gt.parts.sum(1) + bias, score, atol=1e-4)
    assert torch.allclose(own.parts.sum(1) + bias, score, atol=1e-4)
    assert not torch.allclose(gt.parts, own.parts)


def test_measured_single_removals_as_explanation_score_sd_one(split, models):
    clf, _ = models
    data = fb.funnybirds_data(split, N)
    predict = fb.ReRenderPredict(data, clf)
    P = data.num_parts

    def importance(positions: torch.Tensor, targets: torch.Tensor) -> PartImportance:
        rem = single_removals(predict, positions, targets, P, data.distractor_present[positions])
        return PartImportance(rem.score[:, None] - rem.parts,
                              (rem.score[:, None] - rem.distractors).nan_to_num(0.0))

    setup = funnybirds_setup(predict, torch.arange(N), data.labels, data.class_table, P,
                             data.distractor_present)
    scores = funnybirds_checks(setup, predict, importance).scores()
    assert scores["n_sd"] > 0
    assert scores["SD"] == pytest.approx(1.0)
    assert scores["SD_bg"] == pytest.approx(1.0)
    assert 0.0 <= scores["D"] <= 1.0 and not math.isnan(scores["PC"])


def test_bad_arguments_are_named(split, models):
    clf, pdm = models
    with pytest.raises(ValueError, match="n_images"):
        fb.funnybirds_data(split, N + 1)
    data = fb.funnybirds_data(split, 2)
    with pytest.raises(ValueError, match="source"):
        fb.importance_fn("pdm-region-soft", "truth", data, clf, fb.PDMSegmenter(pdm))
    with pytest.raises(ValueError, match="sources"):
        fb.run_funnybirds(split, clf, pdm, methods=["random"], n_images=2, sources=["x"])
