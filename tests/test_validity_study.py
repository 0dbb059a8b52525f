"""Table T2's study (partslib.studies.validity) on a hand-built model with known part effects.

The model (``toys.MeanLinearClassifier``) is linear in the image: its only stage is the image
itself (a 1×1 identity conv at stride 1), so ``logit_k = b_k + w_k · mean_u x(u)``. Blue encodes
the part label (``x[2] = label / 10``) and has weight 0, so an oracle "PDM" (``toys.OraclePDM``)
can read the parts from the image without the model seeing them. Then, for part p with pixel
set S_p (H·W pixels in all; ``toys.mean_linear_effects``):

* region rule:            ``c_p = Σ_{u∈S_p} w_k·x(u) / (H·W)``
* removal by black fill:  ``Δ_p = Σ_{u∈S_p} w_k·x(u) / (H·W)``  (the same number)
* removal by a substitute image x̃ (blur, stored "re-render"):
                          ``Δ_p = Σ_{u∈S_p} w_k·(x(u) − x̃(u)) / (H·W)``
"""

from __future__ import annotations

import math

import matplotlib

matplotlib.use("Agg")

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F

from partslib.explain import PartExplainer, explain_methods, fused_features
from partslib.explain.registry import METHODS
from partslib.metrics import (
    claimed_order,
    deletion_curve,
    random_order,
    removal_effects,
)
from partslib.removal import GaussianBlurFill, MeanFill
from partslib.studies import validity as vs
from partslib.studies.removal_cache import RemovalCache, region_gap
from partslib.studies.validity_text import (
    ablation_table,
    headline,
    metrics_dict,
    reading,
)

from toys import (
    MEAN_LINEAR_WEIGHT,
    ORACLE_LABELS,
    MeanLinearClassifier,
    OraclePDM,
    StoredRemoval,
    label_coded_images,
    mean_linear_effects,
    small_classifier,
)

L = ORACLE_LABELS  # background + 3 parts
W_FC = MEAN_LINEAR_WEIGHT  # MeanLinearClassifier's class weights


@pytest.fixture(scope="module")
def study():
    torch.manual_seed(0)
    model, pdm = MeanLinearClassifier().eval(), OraclePDM()
    x, labels, plates = label_coded_images(200)
    with torch.no_grad():
        y = model(x).argmax(1)
    # the decisive part of each image: the one with the largest true effect (black removal)
    c = mean_linear_effects(x, labels, W_FC[y])
    present = torch.stack([(labels == p).flatten(1).any(1) for p in range(L)], 1)
    decisive = F.one_hot(claimed_order(c, present)[:, 0], L).bool()
    ops = {"black": MeanFill((0.0, 0.0, 0.0)), "blur": GaussianBlurFill(11, 5.0),
           "stored": StoredRemoval(plates)}
    methods = [m for m in METHODS if m not in vs.NEEDS_IBD and m not in vs.NEEDS_HEAD]
    t2, ex = vs.run_validity(model, pdm, x, labels, y, decisive=decisive, operators=ops,
                             keys=list(plates), n_eval=150, n_deletion=60, methods=methods,
                             sanity_methods=["pdm-region-soft", "gradcam-mass"], n_sanity=16,
                             seed=3)
    return dict(model=model, pdm=pdm, x=x, labels=labels, y=y, plates=plates, ops=ops,
                decisive=decisive, t2=t2.set_index(["method", "operator"]), ex=ex,
                methods=methods)


def test_region_contributions_are_the_analytic_ones(study):
    ex = study["ex"]
    i = ex.indices
    expected = mean_linear_effects(study["x"][i], study["labels"][i], W_FC[ex.targets])
    for m in ("pdm-region-soft", "pdm-region-hard"):
        torch.testing.assert_close(ex.claims[m].contributions, expected, atol=1e-6, rtol=1e-5)


def test_measured_effects_are_the_analytic_ones(study):
    ex = study["ex"]
    x, labels = study["x"][ex.indices], study["labels"][ex.indices]
    w = W_FC[ex.targets]
    pr = ex.present
    black = mean_linear_effects(x, labels, w)
    blur = mean_linear_effects(x, labels, w, GaussianBlurFill(11, 5.0).blur(x))
    plates = torch.stack([study["plates"][1000 + int(i)] for i in ex.indices])
    stored = mean_linear_effects(x, labels, w, plates)
    for op, expected in (("black", black), ("blur", blur), ("stored", stored)):
        got = ex.effects[op]
        assert torch.isnan(got[~pr]).all()
        torch.testing.assert_close(got[pr], expected[pr], atol=1e-5, rtol=1e-4)


def test_valid_explanations_score_perfectly(study):
    t2 = study["t2"]
    # region rule = black-fill removal, exactly (linear model): perfect V2, greedy V3
    for m in ("pdm-region-soft", "pdm-region-hard", "pdm-region-soft-contrastive"):
        r = t2.loc[(m, "black")]
        assert r.spearman == pytest.approx(1.0) and r.top_part == 1.0
        assert r.norm_abs_error < 1e-5
        assert r.completeness_error_max < 1e-5
    r = t2.loc[("pdm-region-soft", "black")]
    assert r.auc_claimed == pytest.approx(r.auc_greedy)
    assert r.auc_claimed < r.auc_random
    # occlusion by blur on exact part masks = measured blur effect on the same masks
    for m in ("pdm-occlusion", "pdm-occlusion-contrastive"):
        r = t2.loc[(m, "blur")]
        assert r.spearman == pytest.approx(1.0) and r.norm_abs_error < 1e-5
    # V4: the decisive part is the top black-removal effect, so the region rule and the
    # effects' ceiling both score 1
    assert t2.loc[("pdm-region-soft", "black")].decisive == 1.0
    assert t2.loc[("pdm-region-soft", "black")].decisive_ceiling == 1.0
    assert t2.loc[("pdm-region-soft", "stored")].decisive_ceiling < 1.0  # another counterfactual


def test_t2_has_bootstrap_intervals_around_its_scores(study):
    t2, ex = study["t2"], study["ex"]
    for c in vs.INTERVAL_COLUMNS:
        lo, hi, v = t2[f"{c}_lo"], t2[f"{c}_hi"], t2[c]
        ok = v.notna()
        assert (lo[ok] <= v[ok] + 1e-12).all() and (v[ok] <= hi[ok] + 1e-12).all()
    # a perfect score has no spread; the stored counterfactual's ceiling (< 1) has some
    r = t2.loc[("pdm-region-soft", "black")]
    assert r.decisive_lo == r.decisive_hi == 1.0
    r = t2.loc[("pdm-region-soft", "stored")]
    assert r.decisive_ceiling_lo < r.decisive_ceiling <= r.decisive_ceiling_hi
    # the per-image V4 hits give back the table's decisive-part accuracy
    pi = ex.per_image.groupby(["method", "operator"])[["decisive", "decisive_ceiling"]].mean()
    for col in ("decisive", "decisive_ceiling"):
        np.testing.assert_allclose(pi[col].loc[t2.index], t2[col], atol=1e-12)


def test_contrastive_claims_are_scored_on_the_margin(study):
    ex = study["ex"]
    cl = ex.claims["pdm-region-soft-contrastive"]
    i = ex.indices
    j = cl.contrast
    assert j is not None and bool((j != ex.targets).all())
    expected = mean_linear_effects(study["x"][i], study["labels"][i], W_FC[ex.targets] - W_FC[j])
    pr = ex.present
    torch.testing.assert_close(cl.contributions, expected, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(ex.margin_effects[("black", "pdm-region-soft-contrastive")][pr],
                               expected[pr], atol=1e-5, rtol=1e-4)


def test_random_explainer_sits_at_chance(study):
    t2 = study["t2"]
    for op in ("black", "blur", "stored"):
        r = t2.loc[("random", op)]
        # mean of 150 per-image Spearmans over <= 4 parts: its sd across seeds is ~0.07
        assert abs(r.spearman) < 0.25
        assert abs(r.decisive - r.decisive_chance) < 0.1
        assert r.auc_claimed == pytest.approx(r.auc_random, abs=0.05)
        assert math.isnan(r.norm_abs_error)  # no logit units
    # chance: a uniformly random present part is decisive with probability 1/n_present
    ex = study["ex"]
    expected = float((1.0 / ex.present.sum(1).double()).mean())
    assert t2.loc[("random", "black")].decisive_chance == pytest.approx(expected)


def test_rows_record_operator_score_seed_and_n(study):
    t2 = study["t2"].reset_index()
    assert len(t2) == len(study["methods"]) * 3
    assert set(t2.seed) == {3} and set(t2.n_images) == {150} and set(t2.n_images_v3) == {60}
    assert set(t2[t2.method.str.endswith("contrastive")].score_v2) == {"margin"}
    assert set(t2[~t2.method.str.endswith("contrastive")].score_v2) == {"logit"}
    assert set(t2.score_v3) == {"probability"}
    metrics = metrics_dict(study["t2"].reset_index(), study["ex"].sanity)
    assert "pdm-region-soft/black/spearman" in metrics
    assert "pdm-occlusion/blur/decisive" in metrics
    assert "gradcam-mass/sanity/fc/spearman_maps" in metrics
    assert "pdm-region-soft/sanity/fc/spearman_contrib_abs" in metrics
    assert "pdm-region-soft/black/decisive_lo" in metrics
    assert all(v is None or math.isfinite(v) for v in metrics.values())


def test_sanity_check_cascade(study):
    s = study["ex"].sanity
    assert list(s[s.method == "pdm-region-soft"].module) == ["(trained)", "fc", "s1"]
    assert (s[s.step == 0].spearman_contrib == 1.0).all()
    assert (s[s.step == 0].spearman_maps == 1.0).all()
    # re-initialising the head changes the region contributions
    after = s[(s.method == "pdm-region-soft") & (s.step == 1)].spearman_contrib.iloc[0]
    assert after < 0.9


def test_deterministic_under_a_seed(study):
    kwargs = dict(decisive=study["decisive"], operators=study["ops"],
                  keys=list(study["plates"]), n_eval=40, n_deletion=20,
                  methods=["pdm-region-soft", "random"], sanity_methods=[])
    args = (study["model"], study["pdm"], study["x"], study["labels"], study["y"])
    a, _ = vs.run_validity(*args, seed=5, **kwargs)
    b, _ = vs.run_validity(*args, seed=5, **kwargs)
    pd.testing.assert_frame_equal(a, b)
    c, _ = vs.run_validity(*args, seed=6, **kwargs)
    assert not np.allclose(a[a.method == "random"].spearman, c[c.method == "random"].spearman)


def test_removal_cache_reproduces_the_reference_metrics():
    model = small_classifier(3, widths=(8, 8, 8), size=16, seed=1)
    x, labels, _ = label_coded_images(12, seed=2)
    t = torch.arange(12) % 3
    pr = torch.stack([(labels == p).flatten(1).any(1) for p in range(L)], 1)
    op = GaussianBlurFill(11, 5.0)
    cache = RemovalCache(model, x, labels, op, batch_size=5)
    ref = removal_effects(model, x, labels, t, pr, op)
    torch.testing.assert_close(cache.effects(t, pr), ref, atol=1e-5, rtol=1e-4, equal_nan=True)
    order = random_order(pr, seed=0)
    ref_curve = deletion_curve(model, x, labels, t, order, pr, op)
    torch.testing.assert_close(cache.deletion_curve(t, order, pr), ref_curve, atol=1e-5,
                               rtol=1e-4)
    n = cache.n_removals
    cache.deletion_curve(t, order, pr)  # everything is cached now
    assert cache.n_removals == n
    # the fused scorer gives the same logits up to float rounding
    fast = RemovalCache(model, x, labels, op, features=fused_features(model))
    torch.testing.assert_close(fast.effects(t, pr), ref, atol=1e-4, rtol=1e-3, equal_nan=True)


def test_registry_methods_match_the_part_explainer():
    model, pdm = MeanLinearClassifier().eval(), OraclePDM()
    x, _, _ = label_coded_images(6, seed=4)
    k = torch.tensor([0, 1, 0, 1, 0, 1])
    ex = explain_methods(model, x, ["pdm-region-soft", "pdm-occlusion",
                                    "pdm-occlusion-contrastive"], pdm=pdm, target=k)
    pe = PartExplainer(model, pdm)
    torch.testing.assert_close(ex["pdm-region-soft"].contributions,
                               pe(x, target=k).contributions)
    torch.testing.assert_close(ex["pdm-occlusion"].contributions,
                               pe(x, target=k, mode="occlusion").contributions)
    torch.testing.assert_close(ex["pdm-occlusion-contrastive"].contributions,
                               pe(x, target=k, mode="occlusion", contrastive=True).contributions)
    assert ex["pdm-occlusion-contrastive"].mode == "pdm-occlusion-contrastive"
    assert ex["pdm-occlusion-contrastive"].units == "margin"


@pytest.mark.parametrize("unannotated", [False, True])
def test_region_gap_splits_the_effect_exactly(unannotated):
    model = small_classifier(3, widths=(8, 8, 8), size=16, seed=1)
    x, labels, _ = label_coded_images(8, seed=5)
    if unannotated:  # 255 = no part: never removed, pooled apart
        labels[:, :3, :5] = 255
    t = torch.arange(8) % 3
    pr = torch.stack([(labels == p).flatten(1).any(1) for p in range(L)], 1)
    cache = RemovalCache(model, x, labels, MeanFill(), pool_labels=labels, num_labels=L)
    gap = region_gap(cache, model.fc.weight.detach()[t], pr)
    effects = cache.effects(t, pr)
    rows, parts = torch.tensor(gap.row.to_numpy()), torch.tensor(gap.part.to_numpy())
    np.testing.assert_allclose(gap.effect, effects[rows, parts].double(), atol=1e-5)
    np.testing.assert_allclose(gap.claim, gap.effect + gap.remaining - gap.context, atol=1e-5)
    # the claim is the region rule on the pooling labels
    from partslib.explain import region_contributions

    with torch.no_grad():
        A = model.features(x)[model.final_stage]
        onehot = F.one_hot(labels.where(labels != 255, L), L + 1)[..., :L]
        onehot = onehot.permute(0, 3, 1, 2).float()
        c, _ = region_contributions(A, model.fc.weight[t], onehot)
    np.testing.assert_allclose(gap.claim, c[rows, parts].double(), atol=1e-5)


def test_bad_inputs_are_named():
    model, pdm = MeanLinearClassifier().eval(), OraclePDM()
    x, labels, _ = label_coded_images(4)
    with pytest.raises(ValueError, match="unknown method 'pdm-region'"):
        vs.run_validity(model, pdm, x, labels, torch.zeros(4, dtype=torch.long),
                        decisive=torch.zeros(4, L, dtype=torch.bool), operators={},
                        methods=["pdm-region"])
    with pytest.raises(ValueError, match="rerender operator needs"):
        vs.default_operators(None, names=["rerender"])
    x, labels, _ = label_coded_images(4)
    with pytest.raises(ValueError, match="decisive"):
        vs.run_validity(model, pdm, x, labels, torch.zeros(4, dtype=torch.long),
                        decisive=torch.zeros(3, L, dtype=torch.bool), operators={})


def test_ibd_rows_and_the_2x2():
    from partslib.baselines import fit_ibd

    model, pdm = MeanLinearClassifier().eval(), OraclePDM()
    x, labels, _ = label_coded_images(60, seed=6)
    ibd = fit_ibd(model, x, labels, L, n_components=3, epochs=3)
    with torch.no_grad():
        y = model(x).argmax(1)
    pr = torch.stack([(labels == p).flatten(1).any(1) for p in range(L)], 1)
    t2, ex = vs.run_validity(model, pdm, x, labels, y, decisive=pr,
                             operators={"black": MeanFill((0.0, 0.0, 0.0))}, ibd=ibd, n_eval=40,
                             methods=[*vs.NEEDS_IBD, "pdm-region-soft"], sanity_methods=["ibd"],
                             n_sanity=8)
    # the basis rule reads no map: (PDM, basis) and (linear, basis) are the same numbers
    torch.testing.assert_close(ex.claims["pdm-basis"].contributions,
                               ex.claims["ibd"].contributions, rtol=0, atol=0)
    assert not torch.equal(ex.claims["pdm-basis"].maps, ex.claims["ibd"].maps)
    rows = t2.set_index("method")
    assert rows.loc["ibd-linear-region", "completeness_error_max"] < 1e-5
    ab = ablation_table(t2, "black")
    assert ab.loc["pdm", "basis"] == ab.loc["linear", "basis"]
    assert ab.loc["pdm", "region"] == pytest.approx(1.0)  # exact masks, linear model
    assert list(ex.sanity.module) == ["(trained)", "fc", "s1"]
    assert "2×2 ablation" not in reading(t2)  # no rerender operator here


def test_no_correct_image_gives_an_empty_table():
    model, pdm = MeanLinearClassifier().eval(), OraclePDM()
    x, labels, _ = label_coded_images(6)
    with torch.no_grad():
        wrong = 1 - model(x).argmax(1)
    with pytest.warns(RuntimeWarning, match="none of the 6 images"):
        t2, ex = vs.run_validity(model, pdm, x, labels, wrong,
                                 decisive=torch.zeros(6, L, dtype=torch.bool),
                                 operators={"black": MeanFill((0.0, 0.0, 0.0))},
                                 methods=["pdm-region-soft", "random"])
    assert len(t2) == 2 and (t2.n_images == 0).all() and t2.spearman.isna().all()
    assert len(ex.sanity) == 0


def test_headline_best_pdm_mode_leaves_out_the_basis_rule():
    """pdm-basis reads no PDM map (its numbers are IBD's): it never counts as the best PDM mode."""
    rows = [("pdm-region-soft", 0.5, 0.3), ("pdm-occlusion", 0.9, 0.6), ("pdm-basis", 0.95, 0.2),
            ("ibd", 0.95, 0.2), ("random", 0.5, 0.0)]
    t2 = pd.DataFrame([{"method": m, "operator": "blur", "decisive": d, "spearman": s,
                        "decisive_ceiling": 0.8} for m, d, s in rows])
    out = headline(t2, reference="blur")
    assert out["best_pdm_mode"] == "pdm-occlusion" and out["best_pdm_decisive"] == 0.9
    assert out["pdm_region_spearman"] == 0.3 and out["ibd_spearman"] == 0.2
    assert out["best_pdm_operator"] == "blur" and out["best_pdm_ceiling"] == 0.8
    assert out["default_decisive"] == 0.5 and out["default_ceiling"] == 0.8


def test_headline_compares_each_decisive_number_with_its_own_operator():
    """Occlusion's claim is a blur removal: its ceiling is blur's, the default rule's the
    reference operator's, never one for the other."""
    rows = [(m, op, d, c) for op, c in (("rerender", 0.95), ("blur", 0.997))
            for m, d in (("pdm-region-soft", 0.27), ("pdm-occlusion", 0.987))]
    t2 = pd.DataFrame([{"method": m, "operator": op, "decisive": d, "spearman": 0.5,
                        "decisive_ceiling": c} for m, op, d, c in rows])
    out = headline(t2)
    assert (out["default_decisive"], out["default_operator"], out["default_ceiling"]) == \
        (0.27, "rerender", 0.95)
    assert (out["best_pdm_mode"], out["best_pdm_operator"], out["best_pdm_ceiling"]) == \
        ("pdm-occlusion", "blur", 0.997)
    assert "decisive_ceiling" not in out
