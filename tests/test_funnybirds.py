"""The FunnyBirds checks on an additive model whose every answer is known.

``PartSum``: each image shows its class's variant on each of P parts and some background
objects ("distractors"); the logit of class k is ``Σ_p a_p [part p present and its variant is
class k's] + Σ_d v[k,d] [object d present]``. Removing part p lowers the own-class logit by
exactly ``a_p``, so the exact explainer (importance of p for class k = its term) is correct by
construction.
"""

from __future__ import annotations

import itertools
import math

import matplotlib
import pytest
import torch

from partslib.metrics.funnybirds import (
    THRESHOLDS,
    PartImportance,
    background_independence,
    class_distance,
    important_parts,
    minimal_sufficient_part_sets,
    precomputed_importance,
    predict_unique,
    single_removals,
)
from partslib.metrics.funnybirds_protocol import (
    choose_threshold,
    funnybirds_checks,
    funnybirds_setup,
    table_by_part_ids,
    target_sensitivity_classes,
)

matplotlib.use("Agg")

P = 5
WEIGHTS = torch.tensor([0.0, 1.0, 2.0, 3.0, 4.0, 5.0], dtype=torch.float64)  # a_p, col 0 = bg


def random_table(num_classes: int, variants: int = 3, seed: int = 0) -> list[dict[int, int]]:
    g = torch.Generator().manual_seed(seed)
    combos = list(itertools.product(range(variants), repeat=P))
    pick = torch.randperm(len(combos), generator=g)[:num_classes].tolist()
    return [{p + 1: combos[i][p] for p in range(P)} for i in pick]


class PartSum:
    """The additive model and its exact explanation."""

    def __init__(self, table: list[dict[int, int]], labels: torch.Tensor, present: torch.Tensor,
                 distractor_weights: torch.Tensor | None = None) -> None:
        self.labels, self.present = labels, present  # present: [N,D] bool
        K, D = len(table), present.shape[1]
        var = torch.tensor([[row[p] for p in range(1, P + 1)] for row in table])  # [K,P]
        # match[n,k,p]: image n's part p has class k's variant
        self.match = (var[labels][:, None, :] == var[None, :, :]).double()
        self.v = torch.zeros(K, D, dtype=torch.float64) if distractor_weights is None \
            else distractor_weights
        self.calls = 0

    def terms(self, idx: torch.Tensor, drop_parts: torch.Tensor, drop_distractors: torch.Tensor
              ) -> tuple[torch.Tensor, torch.Tensor]:
        keep_p = (~drop_parts[:, 1:]).double()[:, None, :]  # [M,1,P]
        part = self.match[idx] * WEIGHTS[1:] * keep_p  # [M,K,P]
        keep_d = (self.present[idx] & ~drop_distractors).double()[:, None, :]
        return part, self.v[None] * keep_d  # [M,K,D]

    def predict(self, idx, drop_parts, drop_distractors):
        self.calls += idx.shape[0]
        part, dis = self.terms(idx, drop_parts, drop_distractors)
        return part.sum(2) + dis.sum(2)

    def exact(self, idx: torch.Tensor, targets: torch.Tensor) -> PartImportance:
        M, D = idx.shape[0], self.present.shape[1]
        part, dis = self.terms(idx, torch.zeros(M, P + 1, dtype=torch.bool),
                               torch.zeros(M, D, dtype=torch.bool))
        i = torch.arange(M)
        d = dis[i, targets]
        parts = torch.cat([d.sum(1, keepdim=True), part[i, targets]], 1)  # bg holds the objects
        return PartImportance(parts, d)


def make(num_images: int = 120, num_classes: int = 30, distractor_weights=None, seed: int = 0,
         batch_size: int = 64):
    table = random_table(num_classes, seed=seed)
    g = torch.Generator().manual_seed(seed + 1)
    # class 0 is left out: with every part removed all logits tie and argmax says class 0
    labels = torch.randint(1, num_classes, (num_images,), generator=g)
    present = torch.rand(num_images, 3, generator=g) < 0.6
    present[:, 0] = True
    model = PartSum(table, labels, present, distractor_weights)
    idx = torch.arange(num_images)
    setup = funnybirds_setup(model.predict, idx, labels, table, P, present,
                             batch_size=batch_size)
    return table, model, setup


# ----------------------------------------------------------------------------- class table

def test_minimal_sufficient_sets_hand_built():
    table = [{"a": 0, "b": 0}, {"a": 0, "b": 1}, {"a": 1, "b": 1}]
    assert minimal_sufficient_part_sets(table) == [
        [frozenset({"b"})], [frozenset({"a", "b"})], [frozenset({"a"})]]
    # every pair singles class 0 out, no single part does: three sets of two
    table = [{1: 0, 2: 0, 3: 0}, {1: 0, 2: 1, 3: 1}, {1: 1, 2: 0, 3: 1}, {1: 1, 2: 1, 3: 0}]
    assert sorted(map(sorted, minimal_sufficient_part_sets(table)[0])) == [[1, 2], [1, 3], [2, 3]]


def _brute_force(table, k):
    """All subsets of class k's attributes, sufficient ones, then those with no sufficient
    strict subset (FunnyBirds' definition, written out)."""
    own = sorted(table[k].items())
    subsets = [frozenset(s) for n in range(1, len(own) + 1) for s in itertools.combinations(own, n)]
    others = [set(r.items()) for j, r in enumerate(table) if j != k]
    suff = [s for s in subsets if not any(s <= o for o in others)]
    return {frozenset(p for p, _ in s) for s in suff if not any(t < s for t in suff)}


def test_minimal_sufficient_sets_match_the_definition():
    table = random_table(30, seed=3)
    got = minimal_sufficient_part_sets(table)
    sizes = set()
    for k in range(len(table)):
        assert set(got[k]) == _brute_force(table, k)
        sizes |= {len(s) for s in got[k]}
    assert len(sizes) > 1  # classes share parts: the sets differ in size


def test_minimal_sufficient_sets_reject_one_class():
    with pytest.raises(ValueError, match="at least 2 classes"):
        minimal_sufficient_part_sets([{1: 0}])


def test_target_sensitivity_classes_hand_built():
    target = {1: 0, 2: 0, 3: 0, 4: 0, 5: 0}
    near_a = {1: 0, 2: 0, 3: 1, 4: 1, 5: 1}  # shares parts 1, 2
    near_b = {1: 0, 2: 1, 3: 1, 4: 1, 5: 0}  # shares 1, 5: overlaps near_a
    near_c = {1: 1, 2: 1, 3: 1, 4: 0, 5: 0}  # shares 4, 5: disjoint from near_a
    far = {1: 1, 2: 1, 3: 1, 4: 1, 5: 1}
    table = [target, near_a, near_b, far, near_c]
    assert class_distance(target, near_a) == 3 and class_distance(target, far) == 5
    assert target_sensitivity_classes(table, 0) == (1, 4)
    assert target_sensitivity_classes([target, near_a, near_b, far], 0) is None


def test_table_by_part_ids():
    names = ["background", "head", "wing"]
    assert table_by_part_ids([{"head": 1, "wing": 0}], names) == [{1: 1, 2: 0}]
    with pytest.raises(ValueError, match="tail"):
        table_by_part_ids([{"tail": 1}], names)


# ----------------------------------------------------------------------------- thresholds

def test_important_parts_follow_the_signed_total():
    imp = PartImportance(torch.tensor([[1.0, 2.0, 3.0, 4.0]]))  # total 10
    parts, dis = important_parts(imp, torch.tensor([0.01, 0.25, 0.35, 0.5]))
    assert dis is None
    assert parts[0].tolist() == [[False, True, True, True], [False, False, True, True],
                                 [False, False, False, True], [False, False, False, False]]
    assert THRESHOLDS.shape == (80,) and math.isclose(float(THRESHOLDS[0]), 0.01)


def test_predict_unique_runs_each_row_once():
    _, model, _ = make(num_images=8)
    idx = torch.tensor([0, 0, 1, 0])
    drop = torch.tensor([[False] * 6, [False] * 6, [False] * 6, [False, True] + [False] * 4])
    dd = torch.zeros(4, 3, dtype=torch.bool)
    model.calls = 0
    out = predict_unique(model.predict, idx, drop, dd, batch_size=2)
    assert model.calls == 3
    torch.testing.assert_close(out, model.predict(idx, drop, dd))


def test_setup_rejects_bad_input():
    table, model, _ = make(num_images=4)
    idx = torch.arange(4)
    with pytest.raises(ValueError, match="part ids 1..5"):
        funnybirds_setup(model.predict, idx, model.labels[:4], [{"beak": 0}] * 30, P,
                         model.present[:4])
    with pytest.raises(ValueError, match="distractor_present"):
        funnybirds_setup(model.predict, idx, model.labels[:4], table, P, model.present[:3])


# ----------------------------------------------------------------------------- the checks

def test_exact_explainer_scores_one():
    _, model, setup = make()
    res = funnybirds_checks(setup, model.predict, model.exact)
    s = res.scores()
    assert s["accuracy"] == 1.0 and s["BI"] == 1.0
    assert s["SD"] == 1.0 and s["SD_bg"] == 1.0  # background: no effect, no importance (ties)
    assert res.best == 0 and s["threshold"] == pytest.approx(0.01)
    for key in ("CSDC", "PC", "DC", "D", "Com", "TS"):
        assert s[key] == pytest.approx(1.0), key
    assert s["n_ts"] > 0
    # above 5 / 15 no part passes: nothing kept, nothing deleted
    assert res.pc[-1] == 0.0 and res.dc[-1] == 0.0 and res.csdc[-1] == 0.0
    assert list(res.curves().columns) == ["threshold", "CSDC", "PC", "DC", "D", "objective"]


def test_batch_size_changes_nothing():
    g = torch.Generator().manual_seed(5)
    noise = torch.randn(40, 30, P + 1, generator=g, dtype=torch.float64)
    imp = precomputed_importance(noise, torch.randn(40, 30, 3, generator=g, dtype=torch.float64))
    scores = []
    for bs in (7, 64):
        _, model, setup = make(num_images=40, batch_size=bs)
        scores.append(funnybirds_checks(setup, model.predict, imp).scores())
    assert scores[0] == scores[1]


def test_random_explainer_sd_near_half():
    _, model, setup = make(num_images=400)
    g = torch.Generator().manual_seed(7)
    noise = torch.rand(400, 30, P + 1, generator=g, dtype=torch.float64)
    res = funnybirds_checks(setup, model.predict,
                            precomputed_importance(noise, torch.zeros(400, 30, 3)))
    assert abs(res.sd - 0.5) < 0.05
    assert abs(res.ts - 0.5) < 0.1


def test_distractor_explainer_fails_csdc_and_d():
    _, model, setup = make()
    M = setup.image_indices.shape[0]

    def on_distractor(idx, targets):
        parts = torch.zeros(M, P + 1, dtype=torch.float64)
        parts[:, 0] = 1.0
        dis = torch.zeros(M, 3, dtype=torch.float64)
        dis[:, 0] = 1.0  # object 0: every image has it, the model ignores it
        return PartImportance(parts[: idx.shape[0]], dis[: idx.shape[0]])

    res = funnybirds_checks(setup, model.predict, on_distractor)
    assert (res.csdc == 0).all()
    # each image's irrelevant things are its background objects; object 0 is marked important
    n_objects = setup.distractor_present.sum(1).double()
    expected = 1 - (1 / n_objects).mean()
    assert float(res.d[0]) == pytest.approx(float(expected))
    assert res.scores()["D"] < 0.5


def test_background_independence():
    K = 30
    weights = torch.zeros(K, 3, dtype=torch.float64)
    weights[:, 1] = 4.0  # object 1 adds 4 to every logit (≥ 5% of 15 + 4)
    setup = make(distractor_weights=weights)[2]
    present = setup.distractor_present
    expected = 1 - int(present[:, 1].sum()) / int(present.sum())
    assert expected < 1.0
    assert background_independence(setup.removals) == pytest.approx(expected)
    assert make()[2].background_independence == 1.0


def test_target_sensitivity_needs_the_target():
    _, model, setup = make()

    def label_only(idx, targets):  # ignores the class it is asked about
        return model.exact(idx, model.labels[idx])

    res = funnybirds_checks(setup, model.predict, label_only)
    assert res.ts == 0.0 and res.sd == 1.0


def test_choose_threshold_first_maximum():
    one = torch.ones(3, dtype=torch.float64)
    d = torch.tensor([0.5, 1.0, 1.0], dtype=torch.float64)
    assert choose_threshold(one, one, one, d) == 1


def test_missing_distractor_importance_is_an_error():
    _, model, setup = make(num_images=10)

    def no_objects(idx, targets):
        return PartImportance(model.exact(idx, targets).parts)

    with pytest.raises(ValueError, match="distractor importances"):
        funnybirds_checks(setup, model.predict, no_objects)


def test_single_removals_mark_absent_objects():
    _, model, setup = make(num_images=10)
    r = single_removals(model.predict, setup.image_indices, setup.labels, P,
                        setup.distractor_present)
    assert (r.distractors.isnan() == ~setup.distractor_present).all()
    torch.testing.assert_close(r.score[:, None] - r.parts[:, 1:],
                               WEIGHTS[1:].expand(10, P))


# ----------------------------------------------------------------------------- figures

def test_spider_and_curves_plot():
    import matplotlib.pyplot as plt

    from partslib.studies.funnybirds_plots import (
        SPIDER_CHECKS,
        plot_spider,
        plot_threshold_curves,
    )

    _, model, setup = make(num_images=20)
    res = funnybirds_checks(setup, model.predict, model.exact)
    scores = {"exact": res.scores(), "partial": {"accuracy": 1.0, "BI": 0.5, "Com": 0.2}}
    fig = plot_spider(scores, title="FunnyBirds")
    legend = fig.axes[0].get_legend()
    assert legend is not None
    labels = [t.get_text() for t in legend.get_texts()]
    assert labels == ["exact", "partial (no Cor, Con)"]
    plt.close(fig)
    plt.close(plot_spider({"exact": res.scores()}, axes=SPIDER_CHECKS))
    fig = plot_threshold_curves({"exact": res})
    assert len(fig.axes) == 1
    plt.close(fig)
    with pytest.raises(ValueError, match="at least 3 axes"):
        plot_spider(scores, axes=("Com", "Cor"))


def test_table_without_target_sensitivity_pairs():
    """Signature-style rows (one or two fixed parts per class): no pair at distance 3, so TS
    is NaN and every image is counted as having none; the other checks still run."""
    table = [{1: "a"}, {2: "a"}, {3: "b"}, {1: "b", 4: "c"}]
    labels = torch.tensor([0, 1, 2, 3])
    present = torch.zeros(4, 0, dtype=torch.bool)

    def predict(idx, drop_parts, drop_distractors):
        keep = (~drop_parts).double()
        logits = torch.zeros(idx.shape[0], 4, dtype=torch.float64)
        for k, row in enumerate(table):
            own = labels[idx] == k
            logits[:, k] = own.double() * sum(keep[:, p] for p in row)
        return logits

    def exact(idx, targets):
        parts = torch.zeros(idx.shape[0], P + 1, dtype=torch.float64)
        for m, (i, k) in enumerate(zip(idx.tolist(), targets.tolist(), strict=True)):
            if labels[i] == k:
                parts[m, list(table[k])] = 1.0
        return PartImportance(parts, torch.zeros(idx.shape[0], 0, dtype=torch.float64))

    setup = funnybirds_setup(predict, torch.arange(4), labels, table, P, present)
    res = funnybirds_checks(setup, predict, exact)
    assert math.isnan(res.ts) and res.counts["ts_no_pair"] == 4
    assert float(res.csdc[0]) == 1.0 and float(res.pc[0]) == 1.0
